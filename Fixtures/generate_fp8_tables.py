#!/usr/bin/env python3
"""FP8 reference tables from torch (cross-checked against ml_dtypes), for dsconvert's codec tests.

Run by hand with the versions in requirements.txt:  python3 Fixtures/generate_fp8_tables.py

Writes Fixtures/fp8-tables/:
  bf16_to_e4m3fn.u8, bf16_to_e5m2.u8     torch cast of every bf16 bit pattern 0..65535 (via fp32)
  f32_samples.f32                         262,144 fp32 values (little-endian): random bit patterns, every
                                          FP8 rounding tie +-1 ulp, and values around the format limits
  f32_to_e4m3fn.u8, f32_to_e5m2.u8        torch cast of each sample
  e4m3fn_to_f32.f32, e5m2_to_f32.f32      decode of all 256 codes
torch's casts do not saturate: E4M3FN values in (448, 480) round to 448 but 480 and beyond (and
infinities) become NaN; E5M2 overflows to inf. dsconvert's codec saturates to the largest finite
value; its tests expect this table wherever torch's result is finite (and NaN for NaN).
"""
import os

import ml_dtypes
import numpy as np
import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fp8-tables")
FORMATS = {"e4m3fn": (torch.float8_e4m3fn, ml_dtypes.float8_e4m3fn), "e5m2": (torch.float8_e5m2, ml_dtypes.float8_e5m2)}


def cast(values_f32, name):
    t = torch.from_numpy(values_f32).to(FORMATS[name][0]).view(torch.uint8).numpy()
    m = values_f32.astype(FORMATS[name][1]).view(np.uint8)
    # The libraries differ past the largest finite value: torch rounds E4M3FN (448, 480) to 448, ml_dtypes to NaN.
    finite = np.isfinite(values_f32) & (np.abs(values_f32) <= float(ml_dtypes.finfo(FORMATS[name][1]).max))
    assert (t[finite] == m[finite]).all(), f"torch and ml_dtypes disagree on {name}"
    return t


def samples():
    rng = np.random.default_rng(8)
    parts = [rng.integers(0, 2**32, 131072, dtype=np.uint64).astype(np.uint32).view(np.float32)]
    for name in FORMATS:
        codes = np.arange(256, dtype=np.uint8)
        values = codes.view(FORMATS[name][1]).astype(np.float32)
        values = np.sort(values[np.isfinite(values)])
        mids = ((values[:-1].astype(np.float64) + values[1:]) / 2).astype(np.float32)
        for v in (values, mids):
            parts += [v, np.nextafter(v, np.float32(np.inf)), np.nextafter(v, np.float32(-np.inf))]
    edges = np.array([448, 464, 479.9, 480, 500, 57344, 61439, 61440, 65536, 1e30, np.inf, -np.inf, np.nan, 0.0, -0.0,
                      2**-6, 2**-9, 2**-10, 2**-14, 2**-16, 2**-17, 1e-40], dtype=np.float32)
    parts += [edges, -edges]
    # Values of the form x / (amax / 448) as block quantization produces them.
    x = rng.standard_normal(65536).astype(np.float32)
    parts.append(x / (np.abs(x).max() / np.float32(448)))
    data = np.concatenate(parts).astype(np.float32)
    fill = rng.standard_normal(262144 - len(data)).astype(np.float32) * np.float32(300)
    return np.concatenate([data, fill])[:262144]


def main():
    os.makedirs(OUT, exist_ok=True)
    bf16 = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float().numpy()
    s = samples()
    s.tofile(os.path.join(OUT, "f32_samples.f32"))
    for name, (tdt, _) in FORMATS.items():
        cast(bf16, name).tofile(os.path.join(OUT, f"bf16_to_{name}.u8"))
        cast(s, name).tofile(os.path.join(OUT, f"f32_to_{name}.u8"))
        torch.arange(256, dtype=torch.uint8).view(tdt).float().numpy().tofile(os.path.join(OUT, f"{name}_to_f32.f32"))
    print("wrote", OUT)


if __name__ == "__main__":
    main()
