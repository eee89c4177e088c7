#!/usr/bin/env bash
# MovieLens-100k, leave-last-out per user: evaluate each spec given (default: every
# bench/specs/ml100k_*.json) with recall/ndcg/mrr/hitrate@10 beside a popularity baseline, and
# record peak RSS. Usage: bench/ml100k.sh [EPOCHS] [SPEC...]
# Needs GNU time (/usr/bin/time); bench/get-ml100k.sh fetches the data (never commit it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
epochs=${1:-10}; shift || true
specs=("$@"); [ ${#specs[@]} -gt 0 ] || specs=(bench/specs/ml100k_*.json)
data=$(bash "$here/get-ml100k.sh" "${RECBLOCKS_DATA:-$HOME/.cache/recblocks-data}")
cargo build --release -p recblocks >&2
out=bench/out; mkdir -p "$out"
for spec in "${specs[@]}"; do
  name=$(basename "$spec" .json)
  /usr/bin/time -v target/release/recblocks evaluate "$spec" --data "$data" --epochs "$epochs" \
    --baseline popular --metrics recall,ndcg,mrr,hitrate --quiet \
    > "$out/${name}_${epochs}.txt" 2> "$out/${name}_${epochs}.time"
  echo "== $name, $epochs epochs"
  cat "$out/${name}_${epochs}.txt"
  grep -E "Maximum resident" "$out/${name}_${epochs}.time"
done
