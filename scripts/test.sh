#!/usr/bin/env bash
# The test command: installs what is missing, runs the Swift suite (release build: the numeric tests
# are 10-50x slower in debug), then the cross-checks against the official safetensors reader,
# jsonschema and transformers.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
flags=(-c release -Xswiftc -enable-testing)
swift build "${flags[@]}" --build-tests
swift test "${flags[@]}" --skip-build
python3 Tests/crosscheck/crosscheck.py --bin .build/release/dsconvert
