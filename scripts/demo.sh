#!/usr/bin/env bash
# The main job on the bundled fixture: convert the trained checkpoint, then describe the result.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --build
swift build -c release --product dsconvert >/dev/null
bin=.build/release/dsconvert
out=$(mktemp -d)/trained-resharded
$bin inspect Fixtures/trained
$bin reshard --input Fixtures/trained --output "$out" --max-shard-size 500KB
$bin inspect "$out"
