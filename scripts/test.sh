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
# A short fuzz run of the header, index and config parsers over the committed corpus (the long run is by hand).
FUZZ_DIR=.build/fuzz-ci scripts/fuzz.sh "${FUZZ_SECONDS:-45}" > .build/fuzz-ci.log 2>&1 || true
grep -E "^(Done|stat::number_of_executed_units|==[0-9]+==ERROR|SUMMARY)" .build/fuzz-ci.log || true
if ! grep -q "^stat::number_of_executed_units" .build/fuzz-ci.log; then
  tail -20 .build/fuzz-ci.log >&2; echo "the fuzz run did not run (see .build/fuzz-ci.log)" >&2; exit 1
fi
if ls .build/fuzz-ci/crash-* .build/fuzz-ci/leak-* .build/fuzz-ci/timeout-* .build/fuzz-ci/oom-* >/dev/null 2>&1; then
  echo "fuzzing found a failing input in .build/fuzz-ci" >&2; exit 1
fi
# The kernels' A/B script still builds and runs (a tiny product; its figures are for by-hand runs). It
# compares with a git revision, so it needs a checkout.
if git rev-parse --verify -q HEAD >/dev/null 2>&1; then
  scripts/stored-product-ab.sh --shape 64x300 --rows-of-x 21 --runs 1 | tail -1
fi
# The AVX-512 attention tile, emulated in plain C, against the other levels bit for bit (where the CPU has
# AVX-512 the Swift suite above runs the real one).
emulation=$(scripts/attention-avx512-emulation.sh) || { printf '%s\n' "$emulation"; exit 1; }
tail -1 <<<"$emulation"
# llama.cpp for the GGUF cross-check: built once from the pinned llama-cpp-python source, cached outside the checkout.
llama_cpp=$(scripts/llama-cpp.sh)
python3 Tests/crosscheck/crosscheck.py --bin .build/release/dsconvert --llama-cpp "$llama_cpp"
