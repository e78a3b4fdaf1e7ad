#!/usr/bin/env bash
# Builds the libFuzzer target over the header, index, config and tokens parsers (and the sizes,
# accounting and token checks computed from their numbers) and fuzzes it.
#   scripts/fuzz.sh SECONDS [extra libFuzzer flags]
# New inputs that reach new coverage are added to Tests/Fuzz/corpus (commit the ones worth keeping);
# a crash leaves crash-* in .build/fuzz and exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}; shift || true
out=${FUZZ_DIR:-.build/fuzz}
mkdir -p "$out/work"
root=$(pwd)
# The C kernels Numerics imports: ASan objects of every source and a module map for swiftc over the
# umbrella header SwiftPM uses (SwiftPM makes its own map), so a new kernel needs no change here.
mkdir -p "$out/CKernels"
printf 'module CKernels {\n  header "%s/Sources/CKernels/include/CKernels.h"\n  export *\n}\n' "$root" > "$out/CKernels/module.modulemap"
kernels=()
for source in Sources/CKernels/*.c; do
  clang -O2 -g -fsanitize=address -I Sources/CKernels/include -c "$source" -o "$out/$(basename "$source" .c).o"
  kernels+=("$out/$(basename "$source" .c).o")
done
# The same for the SIGBUS guard SafeTensors' mapped files register with.
mkdir -p "$out/CMappingGuard"
printf 'module CMappingGuard {\n  header "%s/Sources/CMappingGuard/include/mapping_guard.h"\n  export *\n}\n' "$root" > "$out/CMappingGuard/module.modulemap"
clang -O2 -g -fsanitize=address -I Sources/CMappingGuard/include -c Sources/CMappingGuard/mapping_guard.c -o "$out/mapping_guard.o"
# ReferenceModel (the token loader and checks) imports OpenBLAS: its headers and library from pkg-config.
blas_include=$(pkg-config --variable=includedir openblas); blas_lib=$(pkg-config --variable=libdir openblas)
flags=(-sanitize=fuzzer,address -parse-as-library -O -g -I "$out" -I "$out/CKernels" -I "$out/CMappingGuard" -I Sources/COpenSSL -I Sources/CSystemCalls
       -I Sources/COpenBLAS -Xcc -I"$blas_include")
for module in Numerics SafeTensors DeepSeekModel ReferenceModel GGUF; do
  swiftc "${flags[@]}" -wmo -module-name "$module" -emit-module -emit-module-path "$out/$module.swiftmodule" \
    -c Sources/$module/*.swift -o "$out/$module.o" 2>&1 | grep -v "warning: Cannot export" || true
done
swiftc "${flags[@]}" Tests/Fuzz/FuzzParsers.swift "$out"/Numerics.o "$out"/SafeTensors.o "$out"/DeepSeekModel.o "$out"/ReferenceModel.o "$out"/GGUF.o \
  "${kernels[@]}" "$out"/mapping_guard.o -L"$blas_lib" -lopenblas -lcrypto -o "$out/dsconvert-fuzz" 2>&1 | grep -v "warning: Cannot export" || true
cd "$out"
./dsconvert-fuzz -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -max_len=65536 -print_final_stats=1 \
  -artifact_prefix=./ "$@" work "$root/Tests/Fuzz/corpus"
