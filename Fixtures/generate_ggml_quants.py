#!/usr/bin/env python3
"""llama.cpp block-quantization goldens, from ggml's own reference quantizers, for dsconvert's tests.

Run by hand. ggml comes from the llama-cpp-python package's source (pinned below), built for the
x86-64 baseline (GGML_NATIVE=OFF: no FMA, so the C reference rounds every operation, as dsconvert does):

    pip download --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36 -d /tmp/llama
    tar xzf /tmp/llama/llama_cpp_python-0.3.36.tar.gz -C /tmp/llama
    cmake -S /tmp/llama/llama_cpp_python-0.3.36/vendor/llama.cpp -B /tmp/llama/build -DGGML_NATIVE=OFF \
          -DBUILD_SHARED_LIBS=ON -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release
    cmake --build /tmp/llama/build --target ggml-base -j2
    python3 Fixtures/generate_ggml_quants.py /tmp/llama/build/bin/libggml-base.so

Writes Fixtures/ggml-quants/:
  input.f32             the rows, little-endian f32: 20 cases x 2048 values (normal, Student-t, all
                        positive, all negative at four scales; a lone spike; a constant; zeros; every
                        7th value zero; bf16-exact values)
  {q8_0,q5_0,q4_K,q6_K}.bin   quantize_row_<type>_ref of each case, concatenated
"""
import ctypes
import os
import sys

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ggml-quants")
TYPES = {"q8_0": (32, 34), "q5_0": (32, 22), "q4_K": (256, 144), "q6_K": (256, 210)}
N = 2048


def cases():
    rng = np.random.default_rng(0)
    out = []
    for scale in (1e-6, 0.02, 1.0, 300.0):
        out.append(rng.standard_normal(N) * scale)
        out.append(rng.standard_t(3, N) * scale)
        out.append(rng.random(N) * scale)
        out.append(-rng.random(N) * scale)
    spike = np.zeros(N)
    spike[300] = 1.0
    out.append(spike)
    out.append(np.full(N, 0.37))
    out.append(np.zeros(N))
    holes = rng.standard_normal(N)
    holes[::7] = 0
    out.append(holes)
    assert len(out) == 20
    rows = np.stack(out).astype(np.float32)
    rows[-1] = (rows[-1].view(np.uint32) & 0xFFFF0000).view(np.float32)  # bf16-exact values
    return rows


def main():
    ggml = ctypes.CDLL(sys.argv[1])
    rows = cases()
    os.makedirs(OUT, exist_ok=True)
    rows.tofile(os.path.join(OUT, "input.f32"))
    for name, (block, size) in TYPES.items():
        blobs = []
        for row in rows:
            row = np.ascontiguousarray(row)
            out = (ctypes.c_uint8 * (N // block * size))()
            getattr(ggml, f"quantize_row_{name}_ref")(row.ctypes.data_as(ctypes.c_void_p), out, ctypes.c_int64(N))
            blobs.append(bytes(out))
        with open(os.path.join(OUT, f"{name}.bin"), "wb") as f:
            f.write(b"".join(blobs))
        print(name, len(blobs), "rows")


if __name__ == "__main__":
    main()
