#!/usr/bin/env bash
# The main job on the bundled trained fixture: convert it, then validate the output against the
# original with the reference forward pass and print the drift table.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --build
swift build -c release --product dsconvert >/dev/null
swift build -c release --product dsconvert-validate >/dev/null
swift build -c release --product dsconvert-absorb >/dev/null
swift build -c release --product dsconvert-quantize >/dev/null
swift build -c release --product dsconvert-shard >/dev/null
bin=.build/release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
$bin/dsconvert inspect Fixtures/trained
echo
# The main path: absorb (split form, bf16), FP8 weights with 128x128 block scales and the calibrated
# 6-bit KV cache (mla-kv6c) in one pass, 8-device expert placement. validate runs the declared cache.
$bin/dsconvert-absorb --input Fixtures/trained --output "$work/absorbed" --mode split
echo
$bin/dsconvert-quantize --fp8 --kv6 --calibration Fixtures/trained/calibration.json --input "$work/absorbed" --output "$work/absorbed-fp8"
echo
$bin/dsconvert inspect "$work/absorbed-fp8"
echo
$bin/dsconvert-shard --devices 8 --input "$work/absorbed-fp8" --output "$work/absorbed-fp8-ep8"
echo
$bin/dsconvert-validate --reference Fixtures/trained --candidate "$work/absorbed-fp8-ep8"
echo
# The same path on a DeepSeek-V3-shaped checkpoint published as V3 is (FP8 blocks, noaux_tc routing
# with its selection bias, an MTP layer): one pass of convert, then validate against the FP8 original.
$bin/dsconvert inspect Fixtures/v3-fp8
echo
$bin/dsconvert convert --absorb --fp8 --devices 8 --input Fixtures/v3-fp8 --output "$work/v3-ep8"
echo
$bin/dsconvert-validate --reference Fixtures/v3-fp8 --candidate "$work/v3-ep8" --min-top1 none --max-kl-mean none --max-kl-max none --max-ppl-ratio none --min-routing none
