#!/usr/bin/env bash
# Builds llama.cpp (llama-quantize, llama-gguf-split and the libraries llama-cpp-python's bindings load) from the pinned
# llama-cpp-python source package, once, into a cache outside the checkout; prints the cache directory.
# Built for the x86-64 baseline (GGML_NATIVE=OFF): no FMA contraction, so ggml's reference quantizers
# round every operation, as dsconvert's do. Used by the GGUF cross-check in `make test`.
set -euo pipefail
version=0.3.36
sha256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
targets="llama-quantize llama-gguf-split"
cache="${DSCONVERT_CACHE:-$HOME/.cache/dsconvert}/llama-cpp-python-$version"
if [ -f "$cache/.built" ] && [ "$(cat "$cache/.built")" = "$targets" ]; then echo "$cache"; exit 0; fi
# Built before with fewer targets: build the missing ones into the same tree.
if [ -f "$cache/.built" ] && [ -d "$cache/build" ]; then
  if cmake --build "$cache/build" --target $targets -j "$(nproc)" >> "$cache/build.log" 2>&1; then
    echo "$targets" > "$cache/.built"
    echo "$cache"
    exit 0
  fi
fi
mkdir -p "$cache"
python3 - <<'PY' >/dev/null 2>&1 || python3 -m pip install -q --disable-pip-version-check cmake==3.31.6 diskcache==5.6.3 >&2
import importlib.metadata as m, sys
sys.exit(m.version("cmake") != "3.31.6" or m.version("diskcache") != "5.6.3")
PY
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "llama-cpp: downloading llama-cpp-python $version (source) and building llama.cpp into $cache (once, a few minutes)" >&2
python3 -m pip download -q --disable-pip-version-check --no-deps --no-binary llama-cpp-python "llama-cpp-python==$version" -d "$tmp" >&2
echo "$sha256  $tmp/llama_cpp_python-$version.tar.gz" | sha256sum -c --quiet - >&2
rm -rf "$cache/src" "$cache/build"
mkdir -p "$cache/src"
tar xzf "$tmp/llama_cpp_python-$version.tar.gz" -C "$cache/src" --strip-components=1
if ! { cmake -S "$cache/src/vendor/llama.cpp" -B "$cache/build" -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=ON -DLLAMA_CURL=OFF \
         -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DCMAKE_BUILD_TYPE=Release &&
       cmake --build "$cache/build" --target $targets -j "$(nproc)"; } > "$cache/build.log" 2>&1; then
  tail -20 "$cache/build.log" >&2
  echo "llama-cpp: build failed (log: $cache/build.log)" >&2
  exit 1
fi
echo "$targets" > "$cache/.built"
echo "$cache"
