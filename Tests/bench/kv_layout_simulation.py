#!/usr/bin/env python3
"""Torch simulation of MLA KV-cache layouts: the figures of the README's "6-bit KV cache" section.

Runs transformers' DeepseekV2ForCausalLM (fp32 compute on the fixture's bf16 weights) over the trained
fixture's held-out text (16 x 256 tokens) once as the reference and once per cache layout, with every
token's cache entry -- the latent after kv_a_layernorm and the rotated k_pe, what the forward pass
hands to `expand_kv` -- encoded and decoded as the layout stores it. Prints, per layout, the bytes per
token per layer it would take for DeepSeek-V2 (L = 512, R = 64), KL(reference || candidate) mean and
max in nats, the ratio of the KL mean to fp8_ds_mla's, and top-1 agreement.

The bf16, fp8_ds_mla and mla-kv6 rows implement Sources/Numerics/KVCacheCodec.swift's codecs (the
equalized row KVEqualization's rule on Fixtures/trained/calibration.json), so they reproduce what
`dsconvert validate --kv-cache` and KV6StageTests measure; the other rows are layouts dsconvert does
not implement (Hadamard rotation, smaller groups, clipped scales, 5-bit minifloats, int6).

    python3 Tests/bench/kv_layout_simulation.py [--fixture Fixtures/trained]

Needs the packages pinned in Fixtures/requirements.txt; about a minute on two CPU cores.
"""
import argparse
import json
import math
import os

import torch
from transformers import DeepseekV2ForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
V2_LATENT, V2_ROPE = 512, 64


# --- scales -------------------------------------------------------------------------------------

def fp16_scale_at_least(x):
    """The fp16 value nearest x, moved up one step when it fell below x (KVCacheCodec.fp16Scale)."""
    h = x.clamp(max=65504).to(torch.float16)
    up = (h.view(torch.int16) + 1).view(torch.float16)
    return torch.where((h.float() < x) & (h < 65504), up, h).float()


def power_of_two_at_least(x):
    """2^ceil(log2 x) for positive x (FlashMLA's fp8 tile scale)."""
    mantissa, exponent = torch.frexp(x)
    return torch.ldexp(torch.ones_like(x), torch.where(mantissa == 0.5, exponent - 1, exponent))


def grouped(x, group):
    """x [..., n] as [..., ceil(n/group), group], zero-padded (zeros change no absmax)."""
    n = x.shape[-1]
    pad = -n % group
    return torch.nn.functional.pad(x, (0, pad)).reshape(*x.shape[:-1], (n + pad) // group, group), n


def ungrouped(g, n):
    return g.reshape(*g.shape[:-2], -1)[..., :n]


# --- element codecs (encode then decode, as a kernel reading the cache sees the values) -----------

def bf16(x):
    return x.to(torch.bfloat16).float()


def int_symmetric(x, group, qmax, clips=(1.0,)):
    """Codes round-half-even(x / s) clamped to +-qmax, one fp16 scale per group: s = absmax * clip / qmax
    rounded up. With several clips, each group keeps the one of least squared error (MSE clipping)."""
    g, n = grouped(x, group)
    amax = g.abs().amax(dim=-1, keepdim=True)
    best, best_err = None, None
    for clip in clips:
        s = fp16_scale_at_least(amax * clip / qmax)
        q = torch.where(s == 0, torch.zeros_like(g), torch.round(g / torch.where(s == 0, torch.ones_like(s), s)).clamp(-qmax, qmax) * s)
        err = (q - g).pow(2).sum(dim=-1, keepdim=True)
        if best is None:
            best, best_err = q, err
        else:
            better = err < best_err
            best, best_err = torch.where(better, q, best), torch.where(better, err, best_err)
    return ungrouped(best, n)


def minifloat_levels(exponent_bits, mantissa_bits):
    """Non-negative values of a sign + exponent + mantissa 5-bit format (bias 1, subnormals, no inf/NaN)."""
    levels = set()
    for e in range(2 ** exponent_bits):
        for m in range(2 ** mantissa_bits):
            frac = m / 2 ** mantissa_bits
            levels.add(frac if e == 0 else 2.0 ** (e - 1) * (1 + frac))
    return torch.tensor(sorted(levels))


def minifloat(x, levels, group=32):
    """Nearest level of |x| / s, s = absmax / max level (fp16, rounded up) per group."""
    g, n = grouped(x, group)
    s = fp16_scale_at_least(g.abs().amax(dim=-1, keepdim=True) / levels[-1])
    y = g.abs() / torch.where(s == 0, torch.ones_like(s), s)
    nearest = levels[(y.unsqueeze(-1) - levels).abs().argmin(dim=-1)]
    return ungrouped(torch.sign(g) * nearest * s, n)


def fp8_ds_mla_latent(x):
    """E4M3 codes with one power-of-two scale 2^ceil(log2(amax/448)) per 128 channels."""
    g, n = grouped(x, 128)
    amax = g.abs().amax(dim=-1, keepdim=True)
    s = torch.where(amax == 0, torch.ones_like(amax), power_of_two_at_least(amax / 448))
    return ungrouped((g / s).to(torch.float8_e4m3fn).float() * s, n)


def int5(x):
    return int_symmetric(x, 32, 15)


def int8_one_scale(x):
    return int_symmetric(x, x.shape[-1], 127)


def hadamard_rotation(width, seed=0):
    """A randomized Hadamard rotation R = H diag(signs) / sqrt(width) (orthogonal; width a power of 2)."""
    assert width & (width - 1) == 0, "Hadamard needs a power-of-two latent width"
    h = torch.ones(1, 1)
    while h.shape[0] < width:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    signs = torch.randint(0, 2, (width,), generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return h * signs / math.sqrt(width)


# --- equalization (KVEqualization's rule, with its exponent alpha = 0.5 as a parameter) -----------

def equalization_scales(absmax, alpha):
    """s_c = 2^round(alpha * log2(a_c / geomean a)) over the positive channels, rounded half away from zero."""
    values = [float(a) for a in absmax]
    positive = [a for a in values if a > 0]
    log_mean = sum(math.log2(a) for a in positive) / len(positive)
    def exponent(a):
        e = alpha * (math.log2(a) - log_mean)
        return max(-20, min(20, math.copysign(math.floor(abs(e) + 0.5), e)))
    return torch.tensor([2.0 ** exponent(a) if a > 0 else 1.0 for a in values])


# --- the model with a cache codec -----------------------------------------------------------------

def install(model, codec):
    """Routes every layer's cache entry (latent, rotated k_pe) through codec(layer, latent, rope)."""
    for index, layer in enumerate(model.model.layers):
        attention = layer.self_attn
        expand = type(attention).expand_kv
        def patched(latent, rope, attention=attention, index=index, expand=expand):
            if codec is not None:
                latent, rope = codec(index, latent, rope)
            return expand(attention, latent, rope)
        attention.expand_kv = patched


def logits(model, tokens, codec):
    install(model, codec)
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.double()


def calibrate(model, tokens):
    """Per layer, each latent channel's absmax over the calibration tokens (no cache codec)."""
    absmax = {}
    def record(index, latent, rope):
        a = latent.abs().amax(dim=(0, 1, 2))
        absmax[index] = torch.maximum(absmax[index], a) if index in absmax else a
        return latent, rope
    for start in range(0, len(tokens), 8):
        logits(model, tokens[start:start + 8], record)
    return absmax


def drift(reference, candidate):
    lp, lq = torch.log_softmax(reference, -1), torch.log_softmax(candidate, -1)
    kl = (lp.exp() * (lp - lq)).sum(-1).clamp(min=0).flatten()
    top1 = (reference.argmax(-1) == candidate.argmax(-1)).double().mean().item()
    return kl.mean().item(), kl.max().item(), top1


def v2_bytes(latent_code_bits, latent_group, rope_bytes, pad=16):
    """Bytes per token per layer for V2 of an integer/minifloat latent with fp16 group scales, k_pe int8 + fp16 scale."""
    raw = math.ceil(latent_code_bits * V2_LATENT / 8) + 2 * math.ceil(V2_LATENT / latent_group) + rope_bytes
    return raw, -(-raw // pad) * pad


def layouts(absmax):
    """(name, V2 bytes per token per layer or None, codec) for every simulated layout."""
    def per_layer(latent_codec, rope_codec):
        return lambda i, latent, rope: (latent_codec(i, latent), rope_codec(rope))
    keep = lambda x: x
    plain = lambda codec: (lambda i, x: codec(x))
    def equalized(alpha):
        scales = {i: equalization_scales(a, alpha) for i, a in absmax.items()}
        return lambda i, x: int5(x / scales[i]) * scales[i]
    rotation = hadamard_rotation(next(iter(absmax.values())).numel())
    kv6 = v2_bytes(5, 32, V2_ROPE + 2)[1]
    return [
        ("bf16", 1152, per_layer(plain(bf16), bf16)),
        ("fp8_ds_mla", 656, per_layer(plain(fp8_ds_mla_latent), bf16)),
        ("mla-kv6 (int5/32 latent + int8 k_pe)", kv6, per_layer(plain(int5), int8_one_scale)),
        ("mla-kv6, equalization alpha 0.5 (calibrated)", kv6, per_layer(equalized(0.5), int8_one_scale)),
        ("int5/32 latent alone (fp32 k_pe)", None, per_layer(plain(int5), keep)),
        ("int8 k_pe alone (fp32 latent)", None, per_layer(plain(keep), int8_one_scale)),
        ("mla-kv6, equalization alpha 1", kv6, per_layer(equalized(1.0), int8_one_scale)),
        ("mla-kv6, randomized Hadamard latent", kv6,
         per_layer(plain(lambda x: int5(x @ rotation.T) @ rotation), int8_one_scale)),
        ("int5/16 latent + int8 k_pe", v2_bytes(5, 16, V2_ROPE + 2)[1], per_layer(plain(lambda x: int_symmetric(x, 16, 15)), int8_one_scale)),
        ("mla-kv6, MSE-clipped scales", kv6,
         per_layer(plain(lambda x: int_symmetric(x, 32, 15, clips=[1 - k / 20 for k in range(11)])), int8_one_scale)),
        ("E2M2 5-bit latent /32 + int8 k_pe", kv6, per_layer(plain(lambda x: minifloat(x, minifloat_levels(2, 2))), int8_one_scale)),
        ("E3M1 5-bit latent /32 + int8 k_pe", kv6, per_layer(plain(lambda x: minifloat(x, minifloat_levels(3, 1))), int8_one_scale)),
        ("int6/32 latent + int8 k_pe (mla-kv6.7)", v2_bytes(6, 32, V2_ROPE + 2)[0],
         per_layer(plain(lambda x: int_symmetric(x, 32, 31)), int8_one_scale)),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixture", default=os.path.join(ROOT, "Fixtures", "trained"))
    args = parser.parse_args()
    model = DeepseekV2ForCausalLM.from_pretrained(args.fixture, dtype=torch.float32).eval()
    heldout = json.load(open(os.path.join(args.fixture, "heldout.json")))["tokens"]
    calibration = json.load(open(os.path.join(args.fixture, "calibration.json")))["tokens"]
    absmax = calibrate(model, calibration)
    reference = logits(model, heldout, None)
    print(f"fixture {os.path.relpath(args.fixture)}: held-out {len(heldout)} x {len(heldout[0])} tokens; "
          f"latent {model.config.kv_lora_rank}, rope {model.config.qk_rope_head_dim}; torch {torch.__version__}")
    print(f"{'layout':48} {'V2 bytes':>8} {'KL mean':>9} {'x fp8':>6} {'KL max':>7} {'top-1':>7}")
    fp8 = None
    for name, size, codec in layouts(absmax):
        mean, worst, top1 = drift(reference, logits(model, heldout, codec))
        fp8 = mean if name == "fp8_ds_mla" else fp8
        ratio = f"{mean / fp8:6.2f}" if fp8 else f"{'':6}"
        print(f"{name:48} {size if size else '-':>8} {mean:9.2e} {ratio} {worst:7.3f} {top1:7.4f}", flush=True)


if __name__ == "__main__":
    main()
