#!/usr/bin/env bash
# Checks the AVX-512 attention tile on any x86-64 host: builds Sources/CKernels/attention.c with the
# tile's intrinsics as plain C (scripts/attention_avx512_emulation.h; the level's exp and softmax from
# AVX2, the same bits) under AddressSanitizer and UndefinedBehaviorSanitizer, and runs
# scripts/attention_avx512_emulation.c, which compares it bit for bit with the baseline and AVX2 levels.
# A host with AVX-512 runs the real tile in the Swift suite (AttentionKernelTests); this is for the others.
#
#   scripts/attention-avx512-emulation.sh
#
# Exit 0 when every case gives the same bits and every 512-bit load was aligned, 1 when not, 2 when the
# build fails.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; "") ;; *) echo "attention-avx512-emulation: no options but --help" >&2; exit 64 ;; esac
[ "$(uname -m)" = x86_64 ] || { echo "attention-avx512-emulation: x86-64 only"; exit 0; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
clang -O2 -g -fsanitize=address,undefined -fno-sanitize-recover=all -Wno-unused-function -Wno-pass-failed \
  -DDSCONVERT_EMULATE_AVX512 -include scripts/attention_avx512_emulation.h \
  -I Sources/CKernels/include -I Sources/CKernels Sources/CKernels/attention.c scripts/attention_avx512_emulation.c \
  -o "$work/emulation" -lm || { echo "attention-avx512-emulation: the build failed" >&2; exit 2; }
"$work/emulation"
