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
bin=.build/release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
$bin/dsconvert inspect Fixtures/trained
echo
# The main path: absorb (split form, bf16), then FP8 weights with 128x128 block scales. shard joins as it lands.
$bin/dsconvert-absorb --input Fixtures/trained --output "$work/trained-absorbed" --mode split
echo
$bin/dsconvert-quantize --fp8 --input "$work/trained-absorbed" --output "$work/trained-absorbed-fp8"
echo
$bin/dsconvert inspect "$work/trained-absorbed-fp8"
echo
$bin/dsconvert-validate --reference Fixtures/trained --candidate "$work/trained-absorbed-fp8"
