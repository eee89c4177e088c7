#!/usr/bin/env bash
# MovieLens-100k as an interaction log recblocks and RecTools read:
#   user_id,item_id,weight,datetime      (weight 1; datetime in unix seconds)
#
# The data is taken from the RecBole 1.2.1 wheel on PyPI, which ships the dataset as
# recbole/dataset_example/ml-100k/ml-100k.inter (tab-separated: user, item, rating, timestamp).
# MovieLens is licensed by GroupLens for research use: never commit the data to a repository.
#
# Usage: bench/get-ml100k.sh [OUT_DIR]
#   OUT_DIR   where to write ml-100k.csv (default: $RECBLOCKS_DATA, else
#             $HOME/.cache/recblocks-data). An existing non-empty file is kept.
# Prints the CSV's path on stdout; progress and errors go to stderr.
# Needs python3 with pip, and access to PyPI the first time.
set -euo pipefail

dir=${1:-${RECBLOCKS_DATA:-$HOME/.cache/recblocks-data}}
csv=$dir/ml-100k.csv
if [ -s "$csv" ]; then
  echo "$csv"
  exit 0
fi
mkdir -p "$dir"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "downloading the recbole 1.2.1 wheel (it carries MovieLens-100k)" >&2
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$work" recbole==1.2.1 >&2
wheel=$(ls "$work"/recbole-1.2.1-*.whl)

# Convert into a temporary file beside the target, then rename: a failed run leaves no partial CSV.
python3 - "$wheel" "$csv.partial" <<'PY'
import csv
import sys
import zipfile

wheel, out = sys.argv[1], sys.argv[2]
member = "recbole/dataset_example/ml-100k/ml-100k.inter"
with zipfile.ZipFile(wheel) as z:
    rows = z.read(member).decode("utf-8").splitlines()
n = 0
with open(out, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["user_id", "item_id", "weight", "datetime"])
    for line in rows[1:]:  # the first line names the columns
        if not line.strip():
            continue
        user, item, _rating, timestamp = line.split("\t")
        w.writerow([user, item, 1, int(float(timestamp))])
        n += 1
print(f"wrote {n} interactions to {out}", file=sys.stderr)
PY
mv "$csv.partial" "$csv"
echo "$csv"
