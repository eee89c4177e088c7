#!/usr/bin/env bash
# One benchmark session on a GPU machine that has python3 + torch but no internet and no Rust,
# from the bundle bench/gpu/pack.sh made (gpu-pack/). Run from a copy of the repository:
#
#   bash bench/gpu/run.sh
#
# Stages (each under `timeout` within one overall deadline; a failed stage is logged and the next
# one still runs; a system whose check fails is left out of the comparisons):
#   0 machine  nvidia-smi, driver, CPU, glibc, python packages        -> $OUT/machine.txt
#   1 python   install the RecTools wheels into $SITE (put first on PYTHONPATH), import RecTools'
#              SASRec/BERT4Rec, check torch.cuda and run a matmul on the GPU
#   2 binary   unpack recblocks-bin.tar.xz into $RB, sha256sum -c, find the CUDA libraries
#              (torch's nvidia/cu13/lib, /usr/local/cuda/lib64, the loader's defaults: the first
#              where `LD_BIND_NOW=1 recblocks --version` works), write $RB/recblocks-wrap, which
#              sets LD_LIBRARY_PATH for recblocks only; ldd output -> machine.txt
#   3 tests    the shipped CUDA test executables (`--test-threads 1 cuda`,
#              RECBLOCKS_CUDA_TESTS=1), each in its package's directory -> $OUT/tests.log; if
#              a lookup kernel's test fails, later stages run with RECBLOCKS_CUDA_LOOKUPS=candle
#   4 smoke    `recblocks fit` of ml100k_sasrec.json on the built-in dataset, 1 epoch, on the GPU
#              (also warms the driver's JIT cache for candle's kernels); if it fails, again with
#              the fallbacks in SMOKE_FALLBACKS, one set after another: the first set that passes
#              is kept for the later stages ($state/fallback.env) and named in the summary
#   5 compare  bench/compare.sh on ML-100k, SASRec + BERT4Rec, EPOCHS epochs, seed 42, in one
#              invocation: recblocks, recblocks with `--cuda-graph` (on a GPU: the step captured
#              once and replayed; system recblocks-graph) and RecTools, with `nvidia-smi dmon`
#              sampling -> $OUT/dmon.txt; the summary's step table (bench/gpu/step_times.py)
#              sets the two recblocks runs' ms/step against the PyTorch CUDA-graph step of stage 6
#   5 synth    the same on synth20k SASRec, --quick, if time is left
#   5 seeds    recblocks alone on ML-100k SASRec, seeds SEEDS [1,2,3,4,5], EPOCHS epochs, on the GPU
#              and on the CPU at once (the CPU's seeds side by side, THREADS cores each); the
#              summary sets the metrics side by side with their seed spread
#              (bench/gpu/seed_spread.py); skipped if short of time. It runs before the A/B
#              stages below: the issue asks for its figures, theirs only explain a time
#   5 alloc    recblocks alone on ML-100k SASRec + BERT4Rec with RECBLOCKS_CUDA_ALLOC=driver
#              (cudarc's two events per buffer, a pool that returns its memory at every
#              synchronisation), set against stage compare's runs (bench/gpu/ab_table.py);
#              skipped if short of time
#   5 lookups  recblocks alone on ML-100k SASRec + BERT4Rec with RECBLOCKS_CUDA_LOOKUPS=candle
#              (candle's index_select/index_add), set against stage compare's runs
#              (bench/gpu/ab_table.py); skipped if short of time
#   5 nodes    recblocks alone on ML-100k SASRec + BERT4Rec with RECBLOCKS_PARAM_GRADS=graph (no
#              block nodes; every parameter gradient routed through candle's graph), set against
#              stage compare's runs (bench/gpu/ab_table.py); skipped if short of time
#   6 pytorch  bench/pytorch_step.py: a plain PyTorch SASRec step, eager / compile / CUDA graph
#              -> $OUT/pytorch_step.json
#   7 big      a large-catalog run, only when BIG_CATALOG_SPEC is set
#   8 profile  ncu's per-kernel summary of a stretch of ML-100k SASRec training (kernel launches
#              and device time by kernel name), if ncu is there and time is left -> $OUT/ncu.txt;
#              PROFILE_ARGS adds arguments to that fit (e.g. --cuda-graph)
#   then       $OUT/summary.md (every table, printed last on stdout), $OUT/run.log (timestamped),
#              $OUT/compare-raw.tar.gz (raw JSON and /usr/bin/time output of every run)
#
# Environment (defaults in brackets):
#   OUT [bench/out/gpu-run]  where results go (at most 8 files)
#   DEADLINE [470]  seconds for the whole script;  STAGES [0,1,2,3,4,5,6,7,8]  the stages to run
#   EPOCHS [10]  compare epochs;  THREADS [2]  CPU threads of both systems;  DEVICE [cuda]
#   PY [python3]  the python with torch;  WHEELS [gpu-pack/whl, else .whl; `skip` = install none]
#   PACK [gpu-pack];  SITE [/tmp/site];  RB [/tmp/rb];  WORK [/tmp/rb-work] (state, data, raw)
#   RB_LIBS  use this LD_LIBRARY_PATH for recblocks instead of searching (a dry run elsewhere)
#   BUDGET_<stage>  a stage's time cap in seconds (e.g. BUDGET_tests=120; stage names above,
#              plus `synth` for the synth20k part of stage 5)
#   TEST_ARGS ["--test-threads 1 cuda"]  libtest arguments of stage 3
#   PT_SHAPES ["1683:64:50:128;10001:64:50:128"], PT_MODES [eager,compile,graph], PT_STEPS,
#              PT_REPEATS  for bench/pytorch_step.py
#   BIG_CATALOG_SPEC  a spec for stage 7; BIG_CATALOG_DATA  its CSV, else generated with
#              `recblocks generate --users BIG_USERS [100000] --items BIG_ITEMS [100000]
#              --len BIG_LEN [50] --follow BIG_FOLLOW [0.8]`;
#              BIG_EPOCHS [1]; BIG_RECTOOLS=1 runs RecTools on it too, for BIG_RT_STEPS batches an
#              epoch when set (its peak memory comes in the first few); the summary adds each
#              run's peak device memory (bench/gpu/device_memory.py)
# A state folder ($WORK/state) keeps what each stage established, so a second call on a machine
# that is still warm can run only some stages (say STAGES=5).
# Dry run on a CPU machine: DEVICE=cpu EPOCHS=1 PY=<python with torch, lightning, rectools>
#   WHEELS=skip RB_LIBS=<any dirs> PT_MODES=eager bash bench/gpu/run.sh
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root" || exit 1

DEADLINE=${DEADLINE:-470}
STAGES=${STAGES:-0,1,2,3,4,5,6,7,8}
EPOCHS=${EPOCHS:-10}
DEVICE=${DEVICE:-cuda}
THREADS=${THREADS:-2}
PY=${PY:-python3}
PACK=${PACK:-$root/gpu-pack}
SITE=${SITE:-/tmp/site}
RB=${RB:-/tmp/rb}
WORK=${WORK:-/tmp/rb-work}
RB_LIBS=${RB_LIBS:-}
TEST_ARGS=${TEST_ARGS:---test-threads 1 cuda}
SEEDS=${SEEDS:-1,2,3,4,5}
PT_SHAPES=${PT_SHAPES:-1683:64:50:128;10001:64:50:128}
PT_MODES=${PT_MODES:-eager,compile,graph}
BIG_CATALOG_SPEC=${BIG_CATALOG_SPEC:-}
OUT=${OUT:-$root/bench/out/gpu-run}
mkdir -p "$OUT" "$WORK/state" && OUT=$(cd "$OUT" && pwd) || exit 1
state=$WORK/state
# Where the lookup kernels failed their tests (stage 3), the later stages train with candle's ops
# for lookups instead, so that their timings still come back.
if [ -e "$state/lookups.candle" ]; then export RECBLOCKS_CUDA_LOOKUPS=candle; fi
# Where the smoke run (stage 4) failed with the default set-up and passed with fallbacks, the
# later stages train with those fallbacks too (VAR=value lines).
if [ -s "$state/fallback.env" ]; then set -a; . "$state/fallback.env"; set +a; fi
data=${RECBLOCKS_DATA:-$WORK/data}
wrap=$RB/recblocks-wrap
# Stage 1's wheels come first on the path; base_py runs the python as it was (torch only).
export RB_BASE_PYTHONPATH=${RB_BASE_PYTHONPATH-${PYTHONPATH:-}}
export PYTHONPATH="$SITE${RB_BASE_PYTHONPATH:+:$RB_BASE_PYTHONPATH}"
base_py() { PYTHONPATH=$RB_BASE_PYTHONPATH "$PY" "$@"; }

note() { echo "[$(date -u +%T)] $*"; }

# Library folders of the python's CUDA wheels (torch cu13: nvidia/cu13/lib), one per line; older
# layouts (nvidia/<lib>/lib) come as one `:`-joined line.
torch_lib_dirs() {
  base_py - <<'PY' 2>/dev/null
import os, site
roots = []
try:
    import nvidia
    roots += list(nvidia.__path__)
except Exception:
    pass
for p in site.getsitepackages() + [site.getusersitepackages()]:
    roots.append(os.path.join(p, "nvidia"))
found = []
for r in roots:
    d = os.path.join(r, "cu13", "lib")
    if os.path.isdir(d) and d not in found:
        found.append(d)
for r in roots:
    if os.path.isdir(r):
        per = ":".join(sorted(os.path.join(r, x, "lib") for x in os.listdir(r)
                              if x != "cu13" and os.path.isdir(os.path.join(r, x, "lib"))))
        if per and per not in found:
            found.append(per)
print("\n".join(found))
PY
}

# A system is compared when its checks passed: RecTools after stage 1, recblocks after stage 2
# unless the smoke run (stage 4) failed; on a GPU recblocks runs twice, the second time with
# `--cuda-graph` (bench/compare.sh's system recblocks-graph).
rectools_ok() { [ -e "$state/rectools.ok" ]; }
recblocks_ok() { [ -e "$state/binary.ok" ] && [ -x "$wrap" ] && [ ! -e "$state/smoke.failed" ]; }
systems() {
  local s=()
  recblocks_ok && s+=(recblocks)
  recblocks_ok && [ "$DEVICE" != cpu ] && s+=(recblocks-graph)
  rectools_ok && s+=(rectools)
  local IFS=,
  echo "${s[*]}"
}

# GNU time where installed, else the repository's stand-in (same "Maximum resident set size" line).
timer() { if [ -x /usr/bin/time ]; then /usr/bin/time -v "$@"; else python3 bench/timev.py "$@"; fi; }

dmon_start() { # label: samples GPU utilisation into $OUT/dmon.txt until dmon_stop
  dmon_pid=""
  if [ "$DEVICE" = cpu ] || ! command -v nvidia-smi >/dev/null; then return 0; fi
  echo "# $1 ($(date -u +%T))" >> "$OUT/dmon.txt"
  nvidia-smi dmon -s um -o T -d 1 >> "$OUT/dmon.txt" 2>&1 &
  dmon_pid=$!
}
dmon_stop() { if [ -n "${dmon_pid:-}" ]; then kill "$dmon_pid" 2>/dev/null; wait "$dmon_pid" 2>/dev/null; fi; return 0; }

stage_machine() {
  {
    echo "# machine, $(date -u +%FT%TZ)"
    uname -a
    echo "$(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
    free -g | head -2
    grep -m1 '^PRETTY_NAME=' /etc/os-release
    ldd --version 2>&1 | head -1
    if command -v nvidia-smi >/dev/null; then
      nvidia-smi
      nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap,clocks.max.sm,power.limit --format=csv
    else
      echo "no nvidia-smi"
    fi
    echo "ncu: $(command -v ncu || echo none); nsys: $(command -v nsys || echo none)"
    echo "/usr/local/cuda/lib64: $(find /usr/local/cuda/lib64/ -maxdepth 1 -regextype egrep -regex '.*/lib(cublas|cublasLt|cudart|nvrtc|curand)\.so\.[0-9.]+' -printf '%f ' 2>/dev/null)"
    echo "## python (without the wheels of stage 1)"
    base_py - <<'PY'
import importlib.metadata as md, re, sys
print(sys.executable, sys.version.split()[0])
want = re.compile(r"^(torch|triton|lightning|pytorch-lightning|numpy|pandas|scipy|attrs|pydantic|rectools|implicit|nvidia-.*)$", re.I)
for name, ver in sorted({(d.metadata["Name"], d.version) for d in md.distributions() if d.metadata["Name"] and want.match(d.metadata["Name"])}):
    print(f"  {name} {ver}")
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
except Exception as e:
    print("torch: import failed:", e)
PY
    echo "torch's CUDA library folders:"
    torch_lib_dirs | sed 's/^/  /'
  } > "$OUT/machine.txt" 2>&1
  grep -E '^(NVIDIA|[A-Za-z ]+H[0-9]{3}|name,)|Driver Version|torch ' "$OUT/machine.txt" | head -8
}

stage_python() {
  rm -f "$state/rectools.ok"
  local w=${WHEELS:-}
  if [ -z "$w" ]; then
    if compgen -G "$PACK/whl/*.whl" >/dev/null; then w=$PACK/whl; else w=$root/.whl; fi
  fi
  if [ "$w" = skip ]; then
    note "WHEELS=skip: using $PY as it is"
  else
    compgen -G "$w/*.whl" >/dev/null || { note "no wheels in $w (run bench/gpu/pack.sh)"; return 1; }
    rm -rf "$SITE" && mkdir -p "$SITE"
    note "installing $(find "$w" -name '*.whl' | wc -l) wheels from $w into $SITE"
    if "$PY" -m pip --version >/dev/null 2>&1; then
      "$PY" -m pip install --quiet --no-index --no-deps --disable-pip-version-check --target "$SITE" "$w"/*.whl || return 1
    else
      note "no pip: unzipping the wheels"
      "$PY" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' "$SITE" "$w"/*.whl || return 1
    fi
  fi
  DEVICE=$DEVICE "$PY" - <<'PY' || return 1
import os, time
t = time.time()
import rectools, pandas, torch
from rectools.models import SASRecModel, BERT4RecModel  # noqa: F401
try:
    import pytorch_lightning as pl
except ImportError:
    import lightning as pl
print(f"rectools {rectools.__version__} ({os.path.dirname(rectools.__file__)}), pandas {pandas.__version__}, "
      f"torch {torch.__version__}, lightning {pl.__version__}; imports {time.time() - t:.1f}s")
if os.environ["DEVICE"] != "cpu":
    assert torch.cuda.is_available(), "torch.cuda.is_available() is False"
    x = torch.randn(2048, 2048, device="cuda")
    s = (x @ x).sum().item()
    torch.cuda.synchronize()
    print(f"matmul on {torch.cuda.get_device_name(0)}: ok (sum {s:.3g})")
PY
  touch "$state/rectools.ok"
}

stage_binary() {
  rm -f "$state/binary.ok" "$state/libpath"
  local tarball=$PACK/recblocks-bin.tar.xz
  [ -f "$tarball" ] || { note "$tarball is missing (run bench/gpu/pack.sh)"; return 1; }
  rm -rf "$RB" && mkdir -p "$RB"
  if command -v xz >/dev/null; then
    xz -dc "$tarball" | tar -xf - -C "$RB" || return 1
  else
    base_py -c 'import sys, tarfile; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' "$tarball" "$RB" || return 1
  fi
  (cd "$RB" && sha256sum -c --quiet SHA256SUMS) || { note "checksums differ"; return 1; }
  note "unpacked into $RB: $(find "$RB" -mindepth 1 -maxdepth 1 -printf '%f ')"
  sed 's/^/  /' "$RB/MANIFEST"
  local cands=() c chosen="" nv=/usr/local/nvidia/lib64
  if [ -n "$RB_LIBS" ]; then
    cands=("$RB_LIBS")
  else
    while IFS= read -r c; do [ -n "$c" ] && cands+=("$c:$nv"); done < <(torch_lib_dirs)
    [ -d /usr/local/cuda/lib64 ] && cands+=("/usr/local/cuda/lib64:$nv")
    cands+=("$nv")
  fi
  for c in "${cands[@]}"; do
    if out=$(LD_BIND_NOW=1 LD_LIBRARY_PATH=$c "$RB/recblocks" --version 2>&1); then
      note "LD_LIBRARY_PATH=$c: $out"
      chosen=$c
      break
    fi
    note "LD_LIBRARY_PATH=$c fails: $(echo "$out" | head -3)"
  done
  {
    echo "## ldd $RB/recblocks (LD_LIBRARY_PATH=${chosen:-${cands[0]}})"
    LD_LIBRARY_PATH=${chosen:-${cands[0]}} ldd "$RB/recblocks"
    local t
    while IFS=$'\t' read -r t _; do
      echo "## ldd $t: $(LD_LIBRARY_PATH=${chosen:-${cands[0]}} ldd "$RB/$t" | grep -c 'not found') not found"
    done < "$RB/tests.list"
  } >> "$OUT/machine.txt" 2>&1
  [ -n "$chosen" ] || { note "no folder has the CUDA libraries recblocks needs (ldd in machine.txt)"; return 1; }
  printf '#!/bin/sh\n# recblocks with the CUDA libraries bench/gpu/run.sh found, for this process only.\nLD_LIBRARY_PATH=%s\nexport LD_LIBRARY_PATH\nexec %s "$@"\n' \
    "'$chosen'" "'$RB/recblocks'" > "$wrap"
  chmod +x "$wrap"
  echo "$chosen" > "$state/libpath"
  touch "$state/binary.ok"
}

stage_tests() {
  rm -f "$state/tests.counts"
  [ -s "$state/libpath" ] || { note "no binary (stage 2)"; return 1; }
  [ -s "$RB/tests.list" ] || { note "no test executables in the pack"; return 0; }
  local libpath build_root name pkg rc fails=0 end=$((SECONDS + ${RB_STAGE_BUDGET:-90} - 3))
  libpath=$(cat "$state/libpath")
  # Tests name fixtures by the build's absolute paths (env!("CARGO_MANIFEST_DIR")): where that
  # path is free here, point it at this checkout.
  build_root=$(sed -n 's/^build_root //p' "$RB/MANIFEST")
  if [ -n "$build_root" ] && [ ! -e "$build_root" ] && [ "$build_root" != "$root" ]; then
    mkdir -p "$(dirname "$build_root")" 2>/dev/null && ln -s "$root" "$build_root" 2>/dev/null &&
      note "linked $build_root -> $root (the build's paths)"
  fi
  read -r -a targs <<< "$TEST_ARGS"
  : > "$OUT/tests.log"
  while IFS=$'\t' read -r name pkg; do
    [ $((end - SECONDS)) -gt 5 ] || { echo "=== $name: no time left" >> "$OUT/tests.log"; fails=$((fails + 1)); continue; }
    echo "=== $name (in $pkg), $(date -u +%T)" >> "$OUT/tests.log"
    (cd "$root/$pkg" && RECBLOCKS_CUDA_TESTS=1 RECBLOCKS_BIN="$RB/recblocks" LD_LIBRARY_PATH=$libpath \
      timeout -k 5 $((end - SECONDS)) "$RB/$name" "${targs[@]}") >> "$OUT/tests.log" 2>&1
    rc=$?
    echo "=== $name: exit $rc" >> "$OUT/tests.log"
    note "$name: exit $rc"
    [ "$rc" = 0 ] || fails=$((fails + 1))
  done < "$RB/tests.list"
  awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
       /^=== .*: exit/ { n++; if ($NF != 0) bad++ }
       END { printf "%d passed, %d failed (%d executables, %d exited non-zero)\n", p, f, n, bad }' \
    "$OUT/tests.log" | tee "$state/tests.counts"
  if grep -qE '^test .*(gather|lookups).* \.\.\. FAILED' "$OUT/tests.log"; then
    touch "$state/lookups.candle"
    note "the lookup kernels failed their tests: later stages run with RECBLOCKS_CUDA_LOOKUPS=candle"
  else
    rm -f "$state/lookups.candle"
  fi
  grep -qE '^test result: .* [1-9][0-9]* passed' "$OUT/tests.log" || { note "no test ran (TEST_ARGS: $TEST_ARGS)"; return 1; }
  [ "$fails" = 0 ]
}

# Fallback sets for a failed smoke run, `;`-separated, each of space-separated VAR=value: this
# session's device set-up and loss reads, then also candle's gradient routing and lookups.
SMOKE_FALLBACKS=${SMOKE_FALLBACKS:-RECBLOCKS_CUDA_ALLOC=driver RECBLOCKS_LOSS_READS=plain;RECBLOCKS_CUDA_ALLOC=driver RECBLOCKS_LOSS_READS=plain RECBLOCKS_PARAM_GRADS=graph RECBLOCKS_CUDA_LOOKUPS=candle}

smoke_fit() { # [VAR=value ...]: one smoke fit with those variables set
  env "$@" "$wrap" fit bench/specs/ml100k_sasrec.json --device "$DEVICE" --epochs 1 --seed 42 \
    --threads "$THREADS" --out "$WORK/smoke-model" --force 2>&1 | tee -a "$state/smoke.txt"
  return "${PIPESTATUS[0]}"
}

stage_smoke() {
  rm -f "$state/smoke.ok" "$state/smoke.failed" "$state/fallback.env" "$state/smoke.txt"
  recblocks_ok || { note "no binary (stage 2)"; return 1; }
  local t=$SECONDS set vars
  if smoke_fit; then
    echo "smoke: ok in $((SECONDS - t)) s" | tee -a "$state/smoke.txt"
    touch "$state/smoke.ok"
    return 0
  fi
  echo "smoke: FAILED after $((SECONDS - t)) s" | tee -a "$state/smoke.txt"
  if [ "$DEVICE" != cpu ]; then
    IFS=';' read -r -a sets <<< "$SMOKE_FALLBACKS"
    for set in "${sets[@]}"; do
      read -r -a vars <<< "$set"
      echo "smoke: again with $set" | tee -a "$state/smoke.txt"
      t=$SECONDS
      if smoke_fit "${vars[@]}"; then
        echo "smoke: ok with $set in $((SECONDS - t)) s; later stages use it" | tee -a "$state/smoke.txt"
        printf '%s\n' "${vars[@]}" > "$state/fallback.env"
        touch "$state/smoke.ok"
        return 1
      fi
      echo "smoke: FAILED with $set" | tee -a "$state/smoke.txt"
    done
  fi
  touch "$state/smoke.failed"
  return 1
}

compare() { # dataset models out-name [extra compare.sh args]
  local ds=$1 models=$2 name=$3 sys rc
  shift 3
  sys=$(systems)
  [ -n "$sys" ] || { note "neither system passed its checks"; return 1; }
  mkdir -p "$data"
  [ -s "$data/ml-100k.csv" ] || [ ! -s "$PACK/ml-100k.csv" ] || cp "$PACK/ml-100k.csv" "$data/"
  rm -rf "$WORK/compare/$name"
  note "compare $ds $models: $sys"
  dmon_start "compare $ds $models"
  # RECBLOCKS_BIN must name a program even when recblocks is left out (else compare.sh builds).
  RECBLOCKS_DATA=$data RECBLOCKS_BIN=$( recblocks_ok && echo "$wrap" || echo true ) RECTOOLS_PYTHON=$PY \
    bash bench/compare.sh --device "$DEVICE" --datasets "$ds" --models "$models" --seeds 42 \
    --threads "$THREADS" --systems "$sys" --out "$WORK/compare/$name" "$@"
  rc=$?
  dmon_stop
  return $rc
}

stage_compare() { compare ml100k sasrec,bert4rec ml100k --epochs "$EPOCHS"; }

stage_synth() {
  recblocks_ok || { note "synth20k needs recblocks to generate its data"; return 1; }
  compare synth20k sasrec synth20k --quick
}

stage_alloc() {
  [ "$DEVICE" != cpu ] || { note "alloc compares two GPU set-ups: skipped"; return 0; }
  recblocks_ok || { note "no binary (stage 2)"; return 1; }
  (export RECBLOCKS_CUDA_ALLOC=driver
   compare ml100k sasrec,bert4rec ml100k-driver-alloc --epochs "$EPOCHS" --systems recblocks)
}

stage_lookups() {
  [ "$DEVICE" != cpu ] || { note "lookups compares two GPU paths: skipped"; return 0; }
  recblocks_ok || { note "no binary (stage 2)"; return 1; }
  [ ! -e "$state/lookups.candle" ] || { note "the lookup kernels are off (stage 3): nothing to compare"; return 0; }
  (export RECBLOCKS_CUDA_LOOKUPS=candle
   compare ml100k sasrec,bert4rec ml100k-candle-lookups --epochs "$EPOCHS" --systems recblocks)
}

stage_nodes() {
  [ "$DEVICE" != cpu ] || { note "nodes compares two GPU paths: skipped"; return 0; }
  recblocks_ok || { note "no binary (stage 2)"; return 1; }
  (export RECBLOCKS_PARAM_GRADS=graph
   compare ml100k sasrec,bert4rec ml100k-graph-routing --epochs "$EPOCHS" --systems recblocks)
}

stage_seeds() {
  [ "$DEVICE" != cpu ] || { note "seeds compares the GPU with the CPU: skipped"; return 0; }
  recblocks_ok || { note "no binary (stage 2)"; return 1; }
  mkdir -p "$data"
  [ -s "$data/ml-100k.csv" ] || [ ! -s "$PACK/ml-100k.csv" ] || cp "$PACK/ml-100k.csv" "$data/"
  local pids=() rc=0 p seed seeds slots
  seeds_run() { # device seeds out-folder log
    RECBLOCKS_DATA=$data RECBLOCKS_BIN=$wrap bash bench/compare.sh --device "$1" --datasets ml100k \
      --models sasrec --seeds "$2" --epochs "$EPOCHS" --threads "$THREADS" --systems recblocks \
      --out "$3" > "$4" 2>&1
  }
  rm -rf "$WORK/compare/seeds-cuda" "$WORK/compare/seeds-cpu"
  # Both devices at once: the GPU's seeds one after another; the CPU's side by side, THREADS
  # cores each, as many at a time as the cores allow beside the GPU's run (a CPU seed takes
  # several times a GPU seed's time).
  seeds_run cuda "$SEEDS" "$WORK/compare/seeds-cuda" "$state/seeds-cuda.txt" &
  pids+=($!)
  slots=$(( $(nproc) / THREADS - 1 ))
  [ "$slots" -ge 1 ] || slots=1
  IFS=, read -r -a seeds <<< "$SEEDS"
  for seed in "${seeds[@]}"; do
    while [ "$(jobs -rp | wc -l)" -gt "$slots" ]; do wait -n; done
    seeds_run cpu "$seed" "$WORK/compare/seeds-cpu/s$seed" "$state/seeds-cpu-s$seed.txt" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  # One folder of the CPU's runs, as seed_spread.py reads them.
  cp "$WORK"/compare/seeds-cpu/s*/*.json "$WORK/compare/seeds-cpu/" 2>/dev/null
  return $rc
}

stage_pytorch() {
  [ -f bench/pytorch_step.py ] || { note "bench/pytorch_step.py is missing"; return 1; }
  local args=(--json "$OUT/pytorch_step.json" --shapes "$PT_SHAPES" --modes "$PT_MODES" --device "$DEVICE")
  [ -z "${PT_STEPS:-}" ] || args+=(--steps "$PT_STEPS")
  [ -z "${PT_REPEATS:-}" ] || args+=(--repeats "$PT_REPEATS")
  rm -f "$state/pytorch.txt"
  # torch only: without the wheels of stage 1 on the path.
  base_py bench/pytorch_step.py "${args[@]}" 2>&1 | tee "$state/pytorch.txt"
  return "${PIPESTATUS[0]}"
}

stage_big() {
  [ -n "$BIG_CATALOG_SPEC" ] || { note "BIG_CATALOG_SPEC unset: skipped"; return 0; }
  recblocks_ok || { note "no binary (stage 2)"; return 1; }
  local users=${BIG_USERS:-100000} items=${BIG_ITEMS:-100000} epochs=${BIG_EPOCHS:-1} ds model out rc=0
  local len=${BIG_LEN:-50} follow=${BIG_FOLLOW:-0.8}
  model=$(basename "$BIG_CATALOG_SPEC" .json)
  ds=big${users}x${items}x${len}
  mkdir -p "$data"
  if [ -n "${BIG_CATALOG_DATA:-}" ]; then
    ds=big_$(basename "$BIG_CATALOG_DATA" .csv | tr -c 'A-Za-z0-9\n' _)
    ln -sf "$(realpath "$BIG_CATALOG_DATA")" "$data/$ds.csv"
  elif [ ! -s "$data/$ds.csv" ]; then
    note "generating $users users x $items items x $len (follow $follow)"
    "$wrap" generate --users "$users" --items "$items" --len "$len" --follow "$follow" --seed 42 \
      --out "$data/$ds.csv" || return 1
  fi
  out=$WORK/compare/big && rm -rf "$out" && mkdir -p "$out"
  dmon_start "big $ds $model"
  note "recblocks evaluate $BIG_CATALOG_SPEC on $ds, $epochs epochs"
  timer "$wrap" evaluate "$BIG_CATALOG_SPEC" --data "$data/$ds.csv" --epochs "$epochs" --seed 42 \
    --json --quiet --baseline popular --metrics recall,ndcg --device "$DEVICE" --threads "$THREADS" \
    > "$out/${ds}_${model}_recblocks_s42.json" 2> "$out/${ds}_${model}_recblocks_s42.time" || rc=1
  if [ "${BIG_RECTOOLS:-0}" = 1 ] && rectools_ok; then
    note "RecTools on $ds"
    timer "$PY" bench/rectools/run_rectools.py "$BIG_CATALOG_SPEC" --data "$data/$ds.csv" --epochs "$epochs" \
      --seed 42 --threads "$THREADS" --device "$DEVICE" --baseline-popular --max-steps "${BIG_RT_STEPS:-0}" \
      > "$out/${ds}_${model}_rectools_s42.json" 2> "$out/${ds}_${model}_rectools_s42.time" || rc=1
  fi
  dmon_stop
  python3 bench/compare_table.py --out "$out" --datasets "$ds" --models "$model" --seeds 42 \
    --data-dir "$data" --header "large catalog, $epochs epochs, device $DEVICE" > "$out/summary.md"
  { echo; echo "peak device memory (high-water marks; RecTools trains ${BIG_RT_STEPS:-all} batches an epoch):"; echo
    python3 bench/gpu/device_memory.py "$out"; } >> "$out/summary.md" 2>&1
  return $rc
}

# Kernel launches and their device time over a stretch of ML-100k SASRec training, per kernel
# name (ncu's per-kernel summary; skipped where ncu is missing).
stage_profile() {
  command -v ncu >/dev/null || { note "no ncu: skipped"; return 0; }
  recblocks_ok || { note "no binary (stage 2)"; return 1; }
  [ -s "$data/ml-100k.csv" ] || cp "$PACK/ml-100k.csv" "$data/" || return 1
  note "ncu: ${PROFILE_LAUNCHES:-1500} launches after the first ${PROFILE_SKIP:-4000}"
  ncu --clock-control none --target-processes all --launch-skip "${PROFILE_SKIP:-4000}" \
    --launch-count "${PROFILE_LAUNCHES:-1500}" --metrics gpu__time_duration.sum \
    --print-summary per-kernel "$wrap" fit bench/specs/ml100k_sasrec.json --data "$data/ml-100k.csv" \
    --device "$DEVICE" --epochs 3 --seed 42 --threads "$THREADS" --out "$WORK/profile-model" --force \
    ${PROFILE_ARGS:-} > "$OUT/ncu.txt" 2>&1
}

# A stage runs in a child process (`bash run.sh --stage NAME`) so that `timeout` can end it and
# everything it started.
if [ "${1:-}" = --stage ]; then
  "stage_$2"
  exit $?
fi

# id name cap min optional: cap = most seconds; a stage starts only with at least min seconds;
# the min of each later, non-optional stage is kept back for it.
plan=(
  "0 machine 20 5 0"
  "1 python 60 15 0"
  "2 binary 30 5 0"
  "3 tests 120 15 0"
  "4 smoke 60 20 0"
  "5 compare 220 80 0"
  "5 synth 110 50 1"
  "5 seeds 60 40 1"
  "5 alloc 50 30 1"
  "5 lookups 50 30 1"
  "5 nodes 50 30 1"
  "6 pytorch 90 30 0"
  "7 big 150 60 0"
  "8 profile 60 30 1"
)
if [ -z "$BIG_CATALOG_SPEC" ]; then
  kept=()
  for p in "${plan[@]}"; do [[ "$p" == *" big "* ]] || kept+=("$p"); done
  plan=("${kept[@]}")
fi
final_reserve=15
selected() { [[ ",$STAGES," == *",$1,"* ]]; }
t0=$SECONDS
: > "$OUT/run.log"
log() { echo "[$(date -u +%T) +$((SECONDS - t0))s] $*" | tee -a "$OUT/run.log"; }
log "bench/gpu/run.sh: device $DEVICE, stages $STAGES, deadline ${DEADLINE}s, epochs $EPOCHS, threads $THREADS, out $OUT"
statuses=() ran=()
ran() { [[ " ${ran[*]} " == *" $1 "* ]]; }
for i in "${!plan[@]}"; do
  read -r id name cap min _ <<< "${plan[$i]}"
  selected "$id" || continue
  var=BUDGET_$name
  cap=${!var:-$cap}
  reserve=0
  for later in "${plan[@]:$((i + 1))}"; do
    read -r lid _ _ lmin lopt <<< "$later"
    if selected "$lid" && [ "$lopt" = 0 ]; then reserve=$((reserve + lmin)); fi
  done
  left=$((DEADLINE - (SECONDS - t0) - final_reserve))
  budget=$((left - reserve < cap ? left - reserve : cap))
  if [ "$budget" -lt "$min" ]; then
    log "stage $id $name: skipped (${budget}s left for it, needs ${min}s)"
    statuses+=("| $id $name | skipped: no time | 0 | $budget |")
    continue
  fi
  log "stage $id $name: start (budget ${budget}s)"
  ran+=("$name")
  start=$SECONDS
  RB_STAGE_BUDGET=$budget timeout -k 10 "$budget" bash "$here/run.sh" --stage "$name" >> "$OUT/run.log" 2>&1
  rc=$?
  case $rc in
    0) st=ok ;;
    124|137) st="TIMED OUT" ;;
    *) st="FAILED (exit $rc)" ;;
  esac
  log "stage $id $name: $st in $((SECONDS - start))s"
  statuses+=("| $id $name | $st | $((SECONDS - start)) | $budget |")
done

# Summary: every table in $OUT/summary.md, printed last (only the end of stdout may be kept).
# Only the stages of this call are reported (the state folder may hold an earlier call's results).
# A comparison cut short by its timeout still gets a table of the runs that finished.
for f in ml100k:compare synth20k:synth; do
  stage=${f#*:} f=${f%:*} d=$WORK/compare/${f%:*}
  if ran "$stage" && [ -d "$d" ] && [ ! -s "$d/summary.md" ] && compgen -G "$d/*.json" >/dev/null; then
    models=$(find "$d" -name "${f}_*_s42.json" -printf '%f\n' | sed "s/^${f}_//; s/_\(recblocks\|recblocks-graph\|rectools\)_s42.json$//" | sort -u | paste -sd,)
    python3 bench/compare_table.py --out "$d" --datasets "$f" --models "$models" --seeds 42 \
      --data-dir "$data" --header "(cut short: the runs that finished)" > "$d/summary.md" 2>/dev/null
  fi
done
gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)
{
  echo "# recblocks GPU run, $(date -u +%FT%TZ)"
  echo
  echo "${gpu:-no GPU}; device $DEVICE; recblocks $(sed -n 's/^commit //p' "$RB/MANIFEST" 2>/dev/null);" \
    "epochs $EPOCHS, threads $THREADS; systems that passed their checks: $(systems)"
  echo
  echo "| stage | status | s | budget s |"
  echo "|---|---|---|---|"
  printf '%s\n' "${statuses[@]}"
  echo
  for f in ml100k:compare synth20k:synth big:big; do
    if ran "${f#*:}" && [ -s "$WORK/compare/${f%:*}/summary.md" ]; then
      sed '1{/^# /d}' "$WORK/compare/${f%:*}/summary.md"
      echo
      if [ "$DEVICE" != cpu ] && [ "${f%:*}" != big ]; then
        echo "peak device memory (high-water marks, bench/gpu/device_memory.py):"
        echo
        python3 bench/gpu/device_memory.py "$WORK/compare/${f%:*}" 2>&1
        echo
      fi
    fi
  done
  if [ "$DEVICE" != cpu ]; then
    for g in ml100k:sasrec,bert4rec:compare synth20k:sasrec:synth; do
      IFS=: read -r ds models stage <<< "$g"
      if ran "$stage" && compgen -G "$WORK/compare/$ds/${ds}_*_recblocks-graph_s42.json" >/dev/null; then
        echo "## step time, $ds (bench/gpu/step_times.py)"
        echo
        python3 bench/gpu/step_times.py --dataset "$ds" --models "$models" \
          --runs "$WORK/compare/$ds" --data-dir "$data" --pytorch "$OUT/pytorch_step.json" 2>&1
        echo
      fi
    done
  fi
  # An A/B stage's table: stage, its runs' folder, heading, baseline label, variant label (the
  # variant is stage compare's ML-100k runs).
  ab_section() {
    if ran "$1" && [ -d "$WORK/compare/$2" ]; then
      echo "## $3 (bench/gpu/ab_table.py)"
      echo
      python3 bench/gpu/ab_table.py --dataset ml100k --models sasrec,bert4rec \
        --a "$4=$WORK/compare/$2" --b "$5 (stage compare)=$WORK/compare/ml100k" 2>&1
      echo
    fi
  }
  ab_section alloc ml100k-driver-alloc \
    "allocations: cudarc's per-buffer events and the driver's pool release against nn::cuda::allocator" \
    "driver defaults (RECBLOCKS_CUDA_ALLOC=driver)" "nn::cuda::allocator"
  ab_section lookups ml100k-candle-lookups \
    "lookups: candle's index_select/index_add against nn::gather_rows" \
    "candle (RECBLOCKS_CUDA_LOOKUPS=candle)" "nn::gather_rows"
  ab_section nodes ml100k-graph-routing \
    "block nodes: candle's routing of every gradient against block nodes and parameter gradients written to the step's scope" \
    "candle's routing (RECBLOCKS_PARAM_GRADS=graph)" "block nodes"
  if ran seeds && [ -d "$WORK/compare/seeds-cuda" ]; then
    echo "## ML-100k SASRec metrics, GPU against CPU, seeds $SEEDS (bench/gpu/seed_spread.py)"
    echo
    python3 bench/gpu/seed_spread.py --dataset ml100k --model sasrec \
      --run "cuda=$WORK/compare/seeds-cuda" --run "cpu=$WORK/compare/seeds-cpu" 2>&1
    echo
  fi
  if ran pytorch && [ -s "$state/pytorch.txt" ]; then
    echo "## PyTorch SASRec step (bench/pytorch_step.py)"
    echo
    grep -E '^torch ' "$state/pytorch.txt" | head -1
    echo
    grep '^|' "$state/pytorch.txt" || grep -E '^\[.*\] ' "$state/pytorch.txt"
    echo
  fi
  if ran tests && [ -e "$OUT/tests.log" ]; then
    echo "## CUDA tests: $(cat "$state/tests.counts" 2>/dev/null || echo 'no counts')"
    echo
    if [ -e "$state/lookups.candle" ]; then
      echo "**The lookup kernels failed their tests; the later stages ran with RECBLOCKS_CUDA_LOOKUPS=candle.**"
      echo
    fi

    grep -E '^test .* \.\.\. ' "$OUT/tests.log" | head -40 | sed 's/^/    /'
    awk '/ panicked at / { getline m; print "    " substr($0, 1, 160) " " substr(m, 1, 200) }' \
      "$OUT/tests.log" | head -10
    echo
  fi
  if ran smoke && [ -s "$state/smoke.txt" ]; then
    echo "## smoke (1 epoch, built-in dataset)"
    echo
    if [ -s "$state/fallback.env" ]; then
      echo "**The smoke run failed with the default set-up; the later stages ran with: $(paste -sd' ' "$state/fallback.env").**"
      echo
      grep -E '^(smoke:|Error|error)' "$state/smoke.txt" | head -8
    fi
    tail -4 "$state/smoke.txt"
  fi
} > "$OUT/summary.md"
if ran compare || ran synth || ran big; then
  tar -czf "$OUT/compare-raw.tar.gz" -C "$WORK" compare state 2>/dev/null
fi
log "done in $((SECONDS - t0))s; $OUT: $(find "$OUT" -mindepth 1 -maxdepth 2 -type f -printf '%P %kK, ')"
echo
cat "$OUT/summary.md"
