#!/usr/bin/env bash
# Side-by-side benchmark: recblocks vs RecTools 0.19 on identical data, split and settings, on this
# machine, with the same thread count; prints one table per dataset + model (s/epoch, sequences/s,
# peak RSS, recommend seconds for all test users, Recall@10, NDCG@10, recblocks/RecTools ratios).
#
# Usage: bench/compare.sh [--datasets ml100k,synth20k,synth100k] [--models sasrec,bert4rec]
#            [--epochs N] [--seeds 42,1,2] [--threads T] [--systems recblocks,rectools]
#            [--quick] [--device cpu|cuda] [--out DIR]
#   --datasets  ml100k (MovieLens-100k via bench/get-ml100k.sh), synth20k (20k users x 10k items
#               x 50 interactions), synth100k (100k x 100k x 50; sampled_softmax specs). Default: ml100k.
#   --models    spec names: bench/specs/<dataset>_<model>.json. Default: sasrec,bert4rec.
#   --epochs    default 10 (1 with --quick). s/epoch is the median of the epochs after the first.
#   --seeds     comma-separated; several seeds: the table shows the median and every seed.
#               Default 42 (--quick: the first seed only).
#   --threads   RecTools: torch.set_num_threads; recblocks: `--threads` when the binary has it,
#               else RAYON_NUM_THREADS (candle's CPU thread count). Default: nproc.
#   --systems   which systems to run: recblocks, recblocks-graph (recblocks with `--cuda-graph`: its
#               step captured once as a CUDA graph and replayed; needs --device cuda), rectools.
#               Default recblocks,rectools (rectools only when an interpreter is there). Every
#               recblocks row gets its ratio against the RecTools run of the same invocation.
#   --quick     1 epoch, first seed only (a smoke run).
#   --device    cpu (default) or cuda: recblocks `--device cuda` (a binary built with
#               `--features cuda`), RecTools' Lightning accelerator and recommend device.
#   --out       raw results (default bench/out/compare): <dataset>_<model>_<system>_s<seed>.json
#               (the system's JSON line), .time (/usr/bin/time -v), summary.md (the tables).
# Environment: RECTOOLS_PYTHON = a Python with bench/rectools/requirements.txt installed; if unset,
#   bench/.venv is created from that file (large download: torch) and used.
#   RECBLOCKS_DATA = where datasets are cached (default $HOME/.cache/recblocks-data).
#   RECBLOCKS_BIN = a prebuilt recblocks binary (default: cargo build --release, then target/release).
#   RECBLOCKS_ARGS = more arguments for every `recblocks evaluate` run, split on spaces.
# Needs python3; peak RSS comes from GNU time (/usr/bin/time), or bench/timev.py where it is
# missing. Every run also scores the popularity baseline on its split; the summary checks that
# both systems saw the same split (train/test counts and identical baseline metrics, which depend
# on every train and test row).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."

datasets=ml100k models=sasrec,bert4rec epochs="" seeds=42 threads=$(nproc) systems=recblocks,rectools
quick=0 out=bench/out/compare device=cpu
while [ $# -gt 0 ]; do
  case $1 in
    --datasets) datasets=$2; shift 2 ;;
    --models) models=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --seeds) seeds=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --systems) systems=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --device) device=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,34p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$quick" = 1 ]; then epochs=${epochs:-1}; seeds=${seeds%%,*}; fi
IFS=, read -r -a system_list <<< "$systems"
for s in "${system_list[@]}"; do
  case $s in
    recblocks|rectools) ;;
    recblocks-graph)
      [ "$device" = cuda ] || { echo "--systems recblocks-graph records CUDA graphs: it needs --device cuda" >&2; exit 2; } ;;
    *) echo "unknown system $s (recblocks, recblocks-graph, rectools)" >&2; exit 2 ;;
  esac
done
epochs=${epochs:-10}
IFS=, read -r -a dataset_list <<< "$datasets"
IFS=, read -r -a model_list <<< "$models"
IFS=, read -r -a seed_list <<< "$seeds"
want() { [[ ",$systems," == *",$1,"* ]]; }
# Peak RSS: GNU time where it is installed, else a Python stand-in printing the same line.
if [ -x /usr/bin/time ]; then timer=(/usr/bin/time -v); else timer=(python3 bench/timev.py); fi
mkdir -p "$out"
data_dir=${RECBLOCKS_DATA:-$HOME/.cache/recblocks-data}
mkdir -p "$data_dir"

# recblocks binary, and whether it has --threads.
bin=${RECBLOCKS_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release -p recblocks >&2
  bin=target/release/recblocks
fi
rb_threads=(); rb_env=()
read -r -a rb_extra <<< "${RECBLOCKS_ARGS:-}"
if "$bin" evaluate --help | grep -q -- '--threads'; then
  rb_threads=(--threads "$threads")
else
  rb_env=(RAYON_NUM_THREADS="$threads")
fi

# RecTools interpreter.
py=""
if want rectools; then
  if [ -n "${RECTOOLS_PYTHON:-}" ]; then
    py=$RECTOOLS_PYTHON
  else
    if [ ! -x bench/.venv/bin/python ]; then
      echo "creating bench/.venv from bench/rectools/requirements.txt" >&2
      python3 -m venv bench/.venv
      bench/.venv/bin/pip install -q -r bench/rectools/requirements.txt >&2
    fi
    py=bench/.venv/bin/python
  fi
fi

dataset_csv() {
  case $1 in
    ml100k) if [ -s "$data_dir/ml-100k.csv" ]; then echo "$data_dir/ml-100k.csv"
            else bash "$here/get-ml100k.sh" "$data_dir"; fi ;;
    synth20k) synth "$1" 20000 10000 50 ;;
    synth100k) synth "$1" 100000 100000 50 ;;
    *) echo "unknown dataset $1 (ml100k, synth20k, synth100k)" >&2; return 1 ;;
  esac
}
synth() { # name users items len
  local f=$data_dir/$1.csv
  [ -s "$f" ] || "$bin" generate --users "$2" --items "$3" --len "$4" --seed 42 --out "$f" >&2
  echo "$f"
}

machine="$(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load before: $(cut -d' ' -f1-3 /proc/loadavg)"
[ "$device" = cpu ] || machine="$machine, device $device ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1))"
[ -z "${RECBLOCKS_ARGS:-}" ] || machine="$machine, recblocks $RECBLOCKS_ARGS"
echo "# compare: $(date -u +%FT%TZ), $machine, threads $threads, epochs $epochs, seeds $seeds" >&2
for ds in "${dataset_list[@]}"; do
  csv=$(dataset_csv "$ds")
  for model in "${model_list[@]}"; do
    spec=bench/specs/${ds}_${model}.json
    [ -f "$spec" ] || { echo "no spec $spec" >&2; exit 1; }
    for seed in "${seed_list[@]}"; do
      base=$out/${ds}_${model}
      for rb in recblocks recblocks-graph; do
        want "$rb" || continue
        graph=(); [ "$rb" = recblocks ] || graph=(--cuda-graph)
        echo "== $ds $model $rb seed $seed ($(date -u +%T), load $(cut -d' ' -f1 /proc/loadavg))" >&2
        env "${rb_env[@]}" "${timer[@]}" "$bin" evaluate "$spec" --data "$csv" --epochs "$epochs" \
          --seed "$seed" --json --quiet --baseline popular --metrics recall,ndcg,mrr,hitrate \
          --device "$device" "${rb_threads[@]}" "${graph[@]}" "${rb_extra[@]}" \
          > "${base}_${rb}_s$seed.json" 2> "${base}_${rb}_s$seed.time"
      done
      if [ -n "$py" ]; then
        echo "== $ds $model rectools seed $seed ($(date -u +%T), load $(cut -d' ' -f1 /proc/loadavg))" >&2
        "${timer[@]}" "$py" bench/rectools/run_rectools.py "$spec" --data "$csv" --epochs "$epochs" \
          --seed "$seed" --threads "$threads" --device "$device" --baseline-popular \
          > "${base}_rectools_s$seed.json" 2> "${base}_rectools_s$seed.time"
      fi
    done
  done
done
python3 bench/compare_table.py --out "$out" --datasets "$datasets" --models "$models" \
  --seeds "$seeds" --data-dir "$data_dir" --header "$machine, threads $threads, epochs $epochs" \
  | tee "$out/summary.md"
