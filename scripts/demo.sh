#!/usr/bin/env bash
# The main job on the bundled trained fixture: convert it, then validate the output against the
# original with the reference forward pass and print the drift table.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --build
swift build -c release --product dsconvert >/dev/null
swift build -c release --product dsconvert-validate >/dev/null
bin=.build/release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
$bin/dsconvert inspect Fixtures/trained
echo
# reshard is the conversion available today; absorb / quantize / shard slot in here as they land.
$bin/dsconvert reshard --input Fixtures/trained --output "$work/trained-converted" --max-shard-size 500KB
echo
$bin/dsconvert-validate --reference Fixtures/trained --candidate "$work/trained-converted" --max-logit-delta 0
