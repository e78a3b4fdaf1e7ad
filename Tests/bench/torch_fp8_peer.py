#!/usr/bin/env python3
"""The torch peer of `dsconvert quantize --fp8`, timed by `dsconvert-bench convert`.

The logic of DeepSeek's own FP8 cast, on the CPU, one shard at a time: load a shard, for every
2-D weight outside the keep-list compute 128x128 block scales amax/448 and q = (w / s) in
float8_e4m3fn, save the shard with `<name>_scale_inv`, then the index. No GPU, no Triton.

    python3 Tests/bench/torch_fp8_peer.py INPUT_DIR OUTPUT_DIR
"""
import json
import os
import shutil
import sys

import torch
from safetensors.torch import load_file, save_file

BLOCK = 128


def keep(name, t):
    return t.dim() != 2 or name in ("model.embed_tokens.weight", "lm_head.weight") or name.endswith("norm.weight") \
        or name.endswith(".mlp.gate.weight")


def quantize(w):
    rows, cols = w.shape
    pr, pc = -rows % BLOCK, -cols % BLOCK
    x = torch.nn.functional.pad(w.float(), (0, pc, 0, pr))
    blocks = x.view(x.shape[0] // BLOCK, BLOCK, x.shape[1] // BLOCK, BLOCK).permute(0, 2, 1, 3)
    amax = blocks.abs().amax(dim=(-1, -2), keepdim=True)
    s = torch.where(amax > 0, amax / 448.0, torch.ones_like(amax))
    q = (blocks / s).to(torch.float8_e4m3fn).permute(0, 2, 1, 3).reshape(x.shape)[:rows, :cols].contiguous()
    return q, s.reshape(s.shape[0], s.shape[1]).contiguous()


def main(src, dst):
    os.makedirs(dst, exist_ok=True)
    index = json.load(open(os.path.join(src, "model.safetensors.index.json")))
    weight_map = {}
    for shard in sorted(set(index["weight_map"].values())):
        tensors = load_file(os.path.join(src, shard))
        out = {}
        for name, t in tensors.items():
            if keep(name, t):
                out[name] = t
            else:
                out[name], out[name + "_scale_inv"] = quantize(t)
        save_file(out, os.path.join(dst, shard), metadata={"format": "pt"})
        weight_map.update({n: shard for n in out})
        del tensors, out
    json.dump({"metadata": {}, "weight_map": weight_map}, open(os.path.join(dst, "model.safetensors.index.json"), "w"), indent=2)
    shutil.copy(os.path.join(src, "config.json"), os.path.join(dst, "config.json"))


if __name__ == "__main__":
    torch.set_num_threads(os.cpu_count() or 1)
    main(sys.argv[1], sys.argv[2])
