#!/usr/bin/env python3
"""FP8 block-quantized goldens for every fixture, computed by torch (run by hand; pinned versions).

    python3 Fixtures/generate_fp8_goldens.py

For each fixture writes <fixture>/fp8-golden.safetensors holding, for every tensor dsconvert's
default keep-list quantizes, `<name>` F8_E4M3 and `<name>_scale_inv` F32 [ceil(r/128), ceil(c/128)],
computed as DeepSeek-V3's weight_quant kernel does: per 128x128 block (partial at the edges),
s = amax / 448 in fp32, q = (x / s).to(torch.float8_e4m3fn) with x the bf16 weight in fp32.
An all-zero block gets s = 1 (DeepSeek's kernel would divide 0 by 0).
"""
import json
import os

import torch
from safetensors import safe_open
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
BLOCK = 128


def keep(name, shape):
    if name in ("model.embed_tokens.weight", "lm_head.weight") or len(shape) != 2:
        return True
    return name.endswith("norm.weight") or name.endswith(".mlp.gate.weight") or "e_score_correction_bias" in name


def quantize(x):
    rows, cols = x.shape
    nr, nc = -(-rows // BLOCK), -(-cols // BLOCK)
    q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    s = torch.empty(nr, nc, dtype=torch.float32)
    for i in range(nr):
        for j in range(nc):
            block = x[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK]
            amax = block.abs().max()
            scale = amax / 448.0 if amax > 0 else torch.tensor(1.0)
            s[i, j] = scale
            q[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK] = (block / scale).to(torch.float8_e4m3fn)
    return q, s


def main():
    for fixture in ("lite", "v2", "fp8", "trained"):
        directory = os.path.join(HERE, fixture)
        index = json.load(open(os.path.join(directory, "model.safetensors.index.json")))
        golden = {}
        for shard in sorted(set(index["weight_map"].values())):
            with safe_open(os.path.join(directory, shard), "pt") as f:
                for name in f.keys():
                    t = f.get_tensor(name)
                    if keep(name, list(t.shape)):
                        continue
                    q, s = quantize(t.float())
                    golden[name] = q
                    golden[name + "_scale_inv"] = s
        save_file(golden, os.path.join(directory, "fp8-golden.safetensors"), metadata={"format": "pt", "torch": torch.__version__})
        print(fixture, len(golden) // 2, "tensors")


if __name__ == "__main__":
    main()
