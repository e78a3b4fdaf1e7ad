#!/usr/bin/env bash
# Compares the stored product (Sources/CKernels) of a git revision with the work tree's, in one process
# (scripts/stored_product_ab.c says why): both built as the package builds its C (clang -O2, PIC),
# each into a shared library of its own; prints GFLOP/s a core for each, their ratio, and whether the
# bits agree.
#
#   scripts/stored-product-ab.sh [--rev REV] [--kind e4m3|e5m2|bf16|f16|f32] [--shape ROWSxCOLS]
#                                [--rows-of-x M] [--level best|baseline|avx2|avx512] [--runs N]
#                                [--threads T]
#
# Defaults: HEAD, e4m3, 2048x7168 (a V3 routed expert's gate), 16 rows (V3 at 512 tokens), the best
# level the CPU has (avx2 asks for the AVX2 kernels, which run only where the CPU also has FMA), 40
# runs each, every core up to 8. Exit 0 when the bits agree, 1 when they do not, 2 when a build or a
# product fails, 64 for usage.
set -euo pipefail
script=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$(dirname "$script")/.."

help() { sed -n '2,14p' "$script" | sed 's/^# \{0,1\}//'; }
usage() { help >&2; exit 64; }
fail() { echo "stored-product-ab: $*" >&2; exit 2; }
cores=$(nproc)
rev=HEAD kind=e4m3 shape=2048x7168 m=16 level=best runs=40 threads=$((cores < 8 ? cores : 8))
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) help; exit 0 ;;
    --rev|--kind|--shape|--rows-of-x|--level|--runs|--threads)
      [ $# -ge 2 ] || { echo "stored-product-ab: $1 needs a value" >&2; usage; }
      case "$1" in
        --rev) rev=$2 ;; --kind) kind=$2 ;; --shape) shape=$2 ;; --rows-of-x) m=$2 ;;
        --level) level=$2 ;; --runs) runs=$2 ;; --threads) threads=$2 ;;
      esac
      shift 2 ;;
    *) echo "stored-product-ab: unknown option $1" >&2; usage ;;
  esac
done
case "$kind" in f32) k=0 ;; bf16) k=1 ;; f16) k=2 ;; e4m3) k=3 ;; e5m2) k=4 ;; *) echo "stored-product-ab: --kind $kind: one of e4m3 e5m2 bf16 f16 f32" >&2; exit 64 ;; esac
[[ "$shape" =~ ^([0-9]+)x([0-9]+)$ ]] || { echo "stored-product-ab: --shape $shape: ROWSxCOLS" >&2; exit 64; }
rows=${BASH_REMATCH[1]} cols=${BASH_REMATCH[2]}
[[ "$m" =~ ^[0-9]+$ && "$runs" =~ ^[0-9]+$ && "$threads" =~ ^[0-9]+$ ]] || { echo "stored-product-ab: --rows-of-x, --runs and --threads take numbers" >&2; exit 64; }
case "$level" in best) isa=-1 ;; baseline) isa=0 ;; avx2) isa=1 ;; avx512) isa=2 ;;
  *) echo "stored-product-ab: --level $level: one of best baseline avx2 avx512" >&2; exit 64 ;; esac
git rev-parse --verify -q "$rev^{commit}" >/dev/null || { echo "stored-product-ab: --rev $rev: not a commit of this checkout" >&2; exit 64; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/before"
git archive "$rev" Sources/CKernels | tar -x -C "$work/before" || fail "$rev has no Sources/CKernels"
# clang, as SwiftPM builds the package's C (gcc -O2 gave a third of the speed on a Zen 3 host).
build() {  # $1: a tree holding Sources/CKernels, $2: the library to write
  clang -O2 -fPIC -fno-omit-frame-pointer -shared -Wl,-Bsymbolic -I "$1/Sources/CKernels/include" -I "$1/Sources/CKernels" \
    "$1"/Sources/CKernels/*.c -o "$2" -lm || fail "building $2 failed"
}
build "$work/before" "$work/before.so"
build . "$work/after.so"
clang -O2 -I Sources/CKernels/include scripts/stored_product_ab.c -o "$work/ab" -ldl -lpthread || fail "building the driver failed"
echo "before: $(git rev-parse --short "$rev"); after: the work tree"
"$work/ab" "$work/before.so" "$work/after.so" "$k" "$rows" "$cols" "$m" "$isa" "$runs" "$threads"
