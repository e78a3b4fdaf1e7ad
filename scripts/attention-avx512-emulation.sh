#!/usr/bin/env bash
# Checks the AVX-512 attention tile on any x86-64 host: builds Sources/CKernels/attention.c with the
# tile's intrinsics as plain C (scripts/attention_avx512_emulation.h; the level's exp, softmax and key
# pack from AVX2, or plain C without it: the same bits) under AddressSanitizer and
# UndefinedBehaviorSanitizer, and runs scripts/attention_avx512_emulation.c, which compares it bit for
# bit with the baseline and (where the CPU has it) AVX2 levels. A host with AVX-512 runs the real tile
# in the Swift suite (AttentionKernelTests); this is for the others.
#
#   scripts/attention-avx512-emulation.sh
#
# Exit 0 when every case gives the same bits and every 512-bit load was aligned (or, skipped, on a CPU
# that is not x86-64), 1 when not (or when no 512-bit load ran), 2 when the build fails, 64 for usage.
set -euo pipefail
script=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
help() { sed -n '2,12p' "$script" | sed 's/^# \{0,1\}//'; }
case "${1:-}" in
  -h|--help) help; exit 0 ;;
  "") ;;
  *) echo "attention-avx512-emulation: unknown option $1" >&2; help >&2; exit 64 ;;
esac
cd "$(dirname "$script")/.."
[ "$(uname -m)" = x86_64 ] || { echo "attention-avx512-emulation: skipped (x86-64 only)"; exit 0; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# (The build's output is shown only when it fails: the Swift toolchain's gold linker warns about every
# sanitizer symbol it cannot export.)
clang -O2 -g -fsanitize=address,undefined -fno-sanitize-recover=all -Wno-unused-function -Wno-pass-failed \
  -DDSCONVERT_EMULATE_AVX512 -include scripts/attention_avx512_emulation.h \
  -I Sources/CKernels/include -I Sources/CKernels Sources/CKernels/attention.c scripts/attention_avx512_emulation.c \
  -o "$work/emulation" -lm 2>"$work/build.log" || { cat "$work/build.log" >&2; echo "attention-avx512-emulation: the build failed" >&2; exit 2; }
"$work/emulation"
