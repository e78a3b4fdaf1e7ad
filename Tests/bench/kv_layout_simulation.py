#!/usr/bin/env python3
"""Torch simulation of MLA KV-cache layouts: the figures of the README's "6-bit KV cache" section.

Runs transformers' DeepseekV2ForCausalLM (fp32 compute on the fixture's bf16 weights) over a trained
fixture's held-out text (16 x 256 tokens) once as the reference and once per cache layout, with every
token's cache entry encoded and decoded as the layout stores it: the latent after kv_a_layernorm and the
rotated k_pe (what the forward pass hands to `expand_kv`), or for the pre-RoPE layouts k_pe before the
rotation (kv_a_proj_with_mqa's last channels). Prints, per layout, the bytes per token per layer it
would take for DeepSeek-V2 (L = 512, R = 64), KL(reference || candidate) mean and max in nats, the
ratio of the KL mean to fp8_ds_mla's, and top-1 agreement.

The bf16, fp8_ds_mla, mla-kv6 and mla-kv6c rows implement Sources/Numerics/KVCacheCodec.swift's and
KVChannelCodec.swift's codecs (mla-kv6c with KVChannelCalibration's rule on the fixture's
calibration.json), so they reproduce what `dsconvert validate --kv-cache` and KV6StageTests measure;
the other rows are the techniques tried on the way (issue: KVQuant's pre-RoPE keys, non-uniform
codebooks and dense-and-sparse outliers, Atom's mixed precision by channel, cheaper scales).

    python3 Tests/bench/kv_layout_simulation.py [--fixture Fixtures/trained] [--fixture Fixtures/trained-wide]

Needs the packages pinned in Fixtures/requirements.txt; a few minutes on two CPU cores.
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


class PreRoPE:
    """A layout applied where the values are made: latent(i, x) on kv_a_layernorm's output and rope(i, x)
    on k_pe before the rotation (kv_a_proj_with_mqa's last R channels). Either may be None (kept fp32)."""
    def __init__(self, latent=None, rope=None):
        self.latent, self.rope = latent, rope

    def hooks(self, model):
        handles = []
        for i, layer in enumerate(model.model.layers):
            attention = layer.self_attn
            width = attention.kv_lora_rank
            if self.latent is not None:
                handles.append(attention.kv_a_layernorm.register_forward_hook(lambda _m, _x, y, i=i: self.latent(i, y)))
            if self.rope is not None:
                handles.append(attention.kv_a_proj_with_mqa.register_forward_hook(
                    lambda _m, _x, y, i=i, w=width: torch.cat([y[..., :w], self.rope(i, y[..., w:])], dim=-1)))
        return handles


def logits(model, tokens, codec, grad=False):
    """Logits with `codec` on the cache: None, a PreRoPE, or codec(layer, latent, rotated rope) on expand_kv."""
    handles = codec.hooks(model) if isinstance(codec, PreRoPE) else []
    install(model, None if isinstance(codec, PreRoPE) else codec)
    try:
        if grad:
            return model(torch.tensor(tokens)).logits
        with torch.no_grad():
            return model(torch.tensor(tokens)).logits.double()
    finally:
        for h in handles:
            h.remove()


def calibrate(model, tokens):
    """Per layer, the calibration values as cached: latent [N, L] and k_pe before the rotation [N, R]."""
    seen = {}
    def keep(kind):
        def record(i, x):
            seen.setdefault(i, ([], []))[kind].append(x.detach().reshape(-1, x.shape[-1]))
            return x
        return record
    for start in range(0, len(tokens), 8):
        logits(model, tokens[start:start + 8], PreRoPE(keep(0), keep(1)))
    return {i: (torch.cat(a), torch.cat(b)) for i, (a, b) in seen.items()}


def drift(reference, candidate):
    lp, lq = torch.log_softmax(reference, -1), torch.log_softmax(candidate, -1)
    kl = (lp.exp() * (lp - lq)).sum(-1).clamp(min=0).flatten()
    top1 = (reference.argmax(-1) == candidate.argmax(-1)).double().mean().item()
    return kl.mean().item(), kl.max().item(), top1


def v2_bytes(latent_code_bits, latent_group, rope_bytes, pad=16):
    """Bytes per token per layer for V2 of an integer/minifloat latent with fp16 group scales, k_pe int8 + fp16 scale."""
    raw = math.ceil(latent_code_bits * V2_LATENT / 8) + 2 * math.ceil(V2_LATENT / latent_group) + rope_bytes
    return raw, -(-raw // pad) * pad


# --- static per-channel codecs (mla-kv6c and the techniques tried on the way) ---------------------

STATIC_BYTES = 6 * (V2_LATENT + V2_ROPE) // 8  # 432: 6.000 bits per element, no scales


def code(x, step, bits):
    """KVChannelCodec.code: round-half-even(x / step) clamped to +-(2^(bits-1) - 1); 0 for a zero step."""
    limit = (2.0 ** (bits.double() - 1) - 1).clamp(min=0).float()
    safe = torch.where(step > 0, step, torch.ones_like(step))
    q = torch.where(step > 0, torch.round(x / safe), torch.zeros_like(x))
    return torch.where(bits > 0, torch.maximum(torch.minimum(q, limit), -limit), torch.zeros_like(q))


def best_steps(x, bits):
    """KVChannelCalibration.step per channel: least squared error on x [N, C] among f * absmax / limit,
    f = 1, 0.975, ..., 0.275 (the first on ties)."""
    amax = x.abs().amax(0)
    limit = (2.0 ** (bits.double() - 1) - 1).clamp(min=1).float()
    best, best_err = torch.zeros_like(amax), torch.full_like(amax, float("inf"), dtype=torch.float64)
    for k in range(30):
        s = amax * (1 - k / 40) / limit
        err = ((code(x, s, bits) * s - x).double() ** 2).sum(0)
        better = err < best_err
        best, best_err = torch.where(better, s, best), torch.where(better, err, best_err)
    return torch.where(amax > 0, best, torch.zeros_like(best))


def allocate(sensitivity, energy, total, lo=2, hi=12):
    """KVChannelCalibration.allocate: b = total/C + 1/2 log2(w e) - mean, rounded, clamped, then moved one bit at
    a time (from the channel most above its ideal, to the one most below) until the sum is `total`."""
    logs = 0.5 * torch.log2((sensitivity.double() * energy.double()).clamp(min=1e-30))
    ideal = total / len(logs) + logs - logs.mean()
    bits = torch.round(ideal).clamp(lo, hi)
    while bits.sum() != total:
        down = bits.sum() > total
        room = bits > lo if down else bits < hi
        surplus = torch.where(room, ideal - bits, torch.full_like(ideal, float("inf") if down else float("-inf")))
        j = int(surplus.argmin() if down else surplus.argmax())
        bits[j] += -1 if down else 1
    return bits.long()


def static_layout(samples, bits_of):
    """A PreRoPE layout: per channel static steps for widths bits_of(layer) [L + R] (latent, then k_pe)."""
    params = {}
    def get(i):
        if i not in params:
            lat, pre = samples[i]
            bits = bits_of(i)
            L = lat.shape[1]
            params[i] = ((bits[:L], best_steps(lat, bits[:L])), (bits[L:], best_steps(pre, bits[L:])))
        return params[i]
    def apply(part):
        return lambda i, x: code(x, get(i)[part][1], get(i)[part][0]) * get(i)[part][1]
    return PreRoPE(apply(0), apply(1)), get


def uniform_bits(latent_bits, rope_bits, samples):
    return lambda i: torch.tensor([latent_bits] * samples[i][0].shape[1] + [rope_bits] * samples[i][1].shape[1])


def nuq_levels(x, k, iters=25):
    """Per-channel 1-D Lloyd-Max levels [C, k] on x [N, C] (KVQuant's non-uniform codebook, unweighted)."""
    levels = torch.quantile(x, torch.linspace(0, 1, k + 2)[1:-1], dim=0).T.contiguous()
    for _ in range(iters):
        idx = (x.T.unsqueeze(-1) - levels.unsqueeze(1)).abs().argmin(-1)
        sums = torch.zeros_like(levels).scatter_add_(1, idx, x.T)
        count = torch.zeros_like(levels).scatter_add_(1, idx, torch.ones_like(x.T))
        levels = torch.where(count > 0, sums / count.clamp(min=1), levels).sort(1).values
    return levels


def nuq(levels):
    def apply(x):
        flat = x.reshape(-1, x.shape[-1])
        idx = (flat.unsqueeze(-1) - levels.unsqueeze(0)).abs().argmin(-1)
        return levels.gather(1, idx.T).T.reshape(x.shape)
    return apply


# --- per-channel sensitivities ---------------------------------------------------------------------

def output_sensitivity(model, tokens, metric="output"):
    """KVChannelCalibration's w_c per layer (latent [L], k_pe [R]): the expected squared change of the attention
    block's output per unit squared error in one cached token's channel c, through the scores
    (scale^2 q_c^2 sum_t p_t^2 |M(c_t - c_bar)|^2) and, for the latent, the values (|M[:, c]|^2 sum_t p_t^2),
    M = W_O W_UV. metric "context" measures at the attention context (M = W_UV), "latent" in the latent (M = I)."""
    cfg = model.config
    H, dn, dv, L, R = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank, cfg.qk_rope_head_dim
    out, queries, handles = {}, {}, []
    for i, layer in enumerate(model.model.layers):
        proj = layer.self_attn.q_proj if layer.self_attn.q_lora_rank is None else layer.self_attn.q_b_proj
        handles.append(proj.register_forward_hook(lambda _m, _x, q, i=i: queries.__setitem__(i, q.detach())))
    def observe(i, latent, rope):
        attention = model.model.layers[i].self_attn
        b, _, s, _ = latent.shape
        q = queries[i].view(b, s, H, dn + R).transpose(1, 2)
        q_rot = rotate(model, q[..., dn:].reshape(b * H, 1, s, R)).reshape(b, H, s, R)
        w = attention.kv_b_proj.weight.detach().view(H, dn + dv, L)
        w_uk, w_uv = w[:, :dn], w[:, dn:]
        q_lat = torch.einsum("bhsd,hdl->bhsl", q[..., :dn], w_uk)
        c, k = latent[:, 0], rope[:, 0]
        scores = attention.scaling * (torch.einsum("bhsl,btl->bhst", q_lat, c) + torch.einsum("bhsr,btr->bhst", q_rot, k))
        p = scores.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        w_o = attention.o_proj.weight.detach().view(-1, H, dv).permute(1, 0, 2)
        v = torch.einsum("hvl,btl->bhtv", w_uv, c)
        z = {"output": lambda: torch.einsum("hov,bhtv->bhto", w_o, v), "context": lambda: v,
             "latent": lambda: c[:, None].expand(b, H, s, L)}[metric]()
        value_map = {"output": lambda: torch.einsum("hov,hvl->hol", w_o, w_uv).pow(2).sum(1),
                     "context": lambda: w_uv.pow(2).sum(1), "latent": lambda: torch.ones(H, L)}[metric]()
        zo, p2 = p @ z, p * p
        spread = (p2 @ z.pow(2).sum(-1, keepdim=True) - 2 * ((p2 @ z) * zo).sum(-1, keepdim=True)
                  + p2.sum(-1, keepdim=True) * zo.pow(2).sum(-1, keepdim=True)).clamp(min=0)
        lat = (attention.scaling ** 2 * q_lat.pow(2) * spread).sum((0, 1, 2)) + (value_map * p2.sum(-1).sum((0, 2))[:, None]).sum(0)
        kpe = (attention.scaling ** 2 * q[..., dn:].pow(2) * spread).sum((0, 1, 2))
        kpe = kpe.view(R // 2, 2).mean(-1, keepdim=True).expand(R // 2, 2).reshape(R)  # a rotated pair shares it
        previous = out.get(i)
        out[i] = (lat, kpe) if previous is None else (previous[0] + lat, previous[1] + kpe)
        return latent, rope
    for start in range(0, len(tokens), 8):
        logits(model, tokens[start:start + 8], observe)
    for h in handles:
        h.remove()
    return out


def fisher_sensitivity(model, tokens):
    """E[g_c^2] of the LM loss's gradient with respect to each cached channel (KVQuant's Fisher weighting)."""
    leaves, out = {}, {}
    def leaf(kind):
        def make(i, x):
            x = x.detach().requires_grad_()
            leaves.setdefault(i, [None, None])[kind] = x
            return x
        return make
    for start in range(0, len(tokens), 4):
        leaves.clear()
        batch = torch.tensor(tokens[start:start + 4])
        model.zero_grad()
        handles = PreRoPE(leaf(0), leaf(1)).hooks(model)
        install(model, None)
        loss = model(batch, labels=batch).loss * batch.numel()
        loss.backward()
        for h in handles:
            h.remove()
        for i, (lat, pre) in leaves.items():
            g = (lat.grad.reshape(-1, lat.shape[-1]).pow(2).sum(0), pre.grad.reshape(-1, pre.shape[-1]).pow(2).sum(0))
            out[i] = g if i not in out else (out[i][0] + g[0], out[i][1] + g[1])
    model.zero_grad()
    return out


def rotate(model, pre):
    """Applies the rotary embedding to [b, 1, s, R] (positions 0..s-1), as apply_rotary_emb does."""
    b, one, s, r = pre.shape
    freqs = model.model.rotary_emb(pre, torch.arange(s)[None])
    c = torch.view_as_complex(pre.float().reshape(b, one, s, r // 2, 2).contiguous())
    return torch.view_as_real(c * freqs[:, None]).reshape(b, one, s, r)


def allocated(samples, sensitivity, total_of=lambda L, R: 6 * (L + R)):
    """Widths by reverse water-filling on sensitivity x energy, 6 bits per element on average."""
    def bits(i):
        lat, pre = samples[i]
        w = torch.cat(sensitivity[i]) if sensitivity is not None else torch.ones(lat.shape[1] + pre.shape[1])
        e = torch.cat([lat.pow(2).mean(0), pre.pow(2).mean(0)])
        return allocate(w, e, total_of(lat.shape[1], pre.shape[1]))
    return bits


def unrotate(model, rope):
    """Undoes the rotary embedding of [b, 1, s, R] (positions 0..s-1): k_pe before the rotation, to f32 rounding."""
    b, one, s, r = rope.shape
    freqs = model.model.rotary_emb(rope, torch.arange(s)[None])
    c = torch.view_as_complex(rope.float().reshape(b, one, s, r // 2, 2).contiguous())
    return torch.view_as_real(c / freqs[:, None]).reshape(b, one, s, r)


def outlier_layout(model, samples, sensitivity, k):
    """Dense-and-sparse (KVQuant): static codes on a budget reduced by k x (channel index + fp16 value), then each
    token's k channels of largest sensitivity-weighted error stored exactly. Both parts are needed together, so it
    runs on expand_kv's inputs with k_pe un-rotated and rotated back."""
    cost = lambda l, r: 6 * (l + r) - k * (math.ceil(math.log2(l + r)) + 16)
    _, params = static_layout(samples, allocated(samples, sensitivity, cost))
    def codec(i, latent, rope):
        (lb, ls), (rb, rs) = params(i)
        L = latent.shape[-1]
        pre = unrotate(model, rope)
        x = torch.cat([latent, pre], -1)
        q = torch.cat([code(latent, ls, lb) * ls, code(pre, rs, rb) * rs], -1)
        idx = ((q - x).pow(2) * torch.cat(sensitivity[i])).topk(k, dim=-1).indices
        q = q.scatter(-1, idx, x.gather(-1, idx).half().float())
        return q[..., :L], rotate(model, q[..., L:])
    return codec


def layouts(model, samples, calibration):
    """(name, V2 bytes per token per layer or None, codec) for every simulated layout."""
    def per_layer(latent_codec, rope_codec):
        return lambda i, latent, rope: (latent_codec(i, latent), rope_codec(rope))
    keep = lambda x: x
    plain = lambda codec: (lambda i, x: codec(x))
    absmax = {i: lat.abs().amax(0) for i, (lat, _) in samples.items()}
    def equalized(alpha):
        scales = {i: equalization_scales(a, alpha) for i, a in absmax.items()}
        return lambda i, x: int5(x / scales[i]) * scales[i]
    rotation = hadamard_rotation(next(iter(absmax.values())).numel())
    kv6 = v2_bytes(5, 32, V2_ROPE + 2)[1]
    output = output_sensitivity(model, calibration)
    mla_kv6c = static_layout(samples, allocated(samples, output))[0]
    rows = [
        ("bf16", 1152, per_layer(plain(bf16), bf16)),
        ("fp8_ds_mla", 656, per_layer(plain(fp8_ds_mla_latent), bf16)),
        ("mla-kv6 (int5/32 latent + int8 k_pe)", kv6, per_layer(plain(int5), int8_one_scale)),
        ("mla-kv6c (static per channel, bits by output sensitivity)", STATIC_BYTES, mla_kv6c),
        ("-- the latent alone (fp32 k_pe) --", None, None),
        ("int5/32 latent, fp16 scales", None, per_layer(plain(int5), keep)),
        ("int6/32 latent, fp16 scales", None, per_layer(plain(lambda x: int_symmetric(x, 32, 31)), keep)),
        ("int6 latent, static per channel", None, PreRoPE(static_layout(samples, uniform_bits(6, 6, samples))[0].latent)),
        ("int5 latent, static per channel", None, PreRoPE(static_layout(samples, uniform_bits(5, 5, samples))[0].latent)),
        ("nuq6 latent (per-channel k-means levels)", None, PreRoPE(lambda i, x: nuq(nuq_levels(samples[i][0], 64))(x))),
        ("nuq5 latent (per-channel k-means levels)", None, PreRoPE(lambda i, x: nuq(nuq_levels(samples[i][0], 32))(x))),
        ("-- k_pe alone (fp32 latent) --", None, None),
        ("int8 k_pe after RoPE, one fp16 scale", None, per_layer(plain(keep), int8_one_scale)),
        ("int8 k_pe before RoPE, static per channel", None, PreRoPE(None, static_layout(samples, uniform_bits(8, 8, samples))[0].rope)),
        ("int6 k_pe before RoPE, static per channel", None, PreRoPE(None, static_layout(samples, uniform_bits(6, 6, samples))[0].rope)),
        ("int4 k_pe before RoPE, static per channel", None, PreRoPE(None, static_layout(samples, uniform_bits(4, 4, samples))[0].rope)),
        ("nuq6 k_pe before RoPE (per-channel k-means levels)", None, PreRoPE(None, lambda i, x: nuq(nuq_levels(samples[i][1], 64))(x))),
        ("-- 6.000 bits per element --", None, None),
        ("mla-kv6, equalization alpha 0.5 (calibrated)", kv6, per_layer(equalized(0.5), int8_one_scale)),
        ("mla-kv6, equalization alpha 1", kv6, per_layer(equalized(1.0), int8_one_scale)),
        ("mla-kv6, randomized Hadamard latent", kv6, per_layer(plain(lambda x: int5(x @ rotation.T) @ rotation), int8_one_scale)),
        ("mla-kv6, MSE-clipped scales", kv6,
         per_layer(plain(lambda x: int_symmetric(x, 32, 15, clips=[1 - k / 20 for k in range(11)])), int8_one_scale)),
        ("E2M2 5-bit latent /32 + int8 k_pe", kv6, per_layer(plain(lambda x: minifloat(x, minifloat_levels(2, 2))), int8_one_scale)),
        ("E3M1 5-bit latent /32 + int8 k_pe", kv6, per_layer(plain(lambda x: minifloat(x, minifloat_levels(3, 1))), int8_one_scale)),
        ("int6 latent + int6 k_pe before RoPE, static", STATIC_BYTES, static_layout(samples, uniform_bits(6, 6, samples))[0]),
        ("nuq6 latent + nuq6 k_pe before RoPE", STATIC_BYTES, PreRoPE(lambda i, x: nuq(nuq_levels(samples[i][0], 64))(x),
                                                                      lambda i, x: nuq(nuq_levels(samples[i][1], 64))(x))),
        ("static, bits by energy alone", STATIC_BYTES, static_layout(samples, allocated(samples, None))[0]),
        ("static, bits by latent-space sensitivity", STATIC_BYTES,
         static_layout(samples, allocated(samples, output_sensitivity(model, calibration, "latent")))[0]),
        ("static, bits by context sensitivity", STATIC_BYTES,
         static_layout(samples, allocated(samples, output_sensitivity(model, calibration, "context")))[0]),
        ("static, bits by Fisher information", STATIC_BYTES, static_layout(samples, allocated(samples, fisher_sensitivity(model, calibration)))[0]),
        ("mla-kv6c + 1 exact outlier per token", STATIC_BYTES, outlier_layout(model, samples, output, 1)),
        ("mla-kv6c + 2 exact outliers per token", STATIC_BYTES, outlier_layout(model, samples, output, 2)),
        ("-- above 6 bits --", None, None),
        ("int6/32 latent + int8 k_pe (mla-kv6.7)", v2_bytes(6, 32, V2_ROPE + 2)[0],
         per_layer(plain(lambda x: int_symmetric(x, 32, 31)), int8_one_scale)),
    ]
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixture", action="append", help="a trained fixture (default: Fixtures/trained and Fixtures/trained-wide)")
    args = parser.parse_args()
    torch.manual_seed(0)
    for fixture in args.fixture or [os.path.join(ROOT, "Fixtures", name) for name in ("trained", "trained-wide")]:
        model = DeepseekV2ForCausalLM.from_pretrained(fixture, dtype=torch.float32).eval()
        heldout = json.load(open(os.path.join(fixture, "heldout.json")))["tokens"]
        calibration = json.load(open(os.path.join(fixture, "calibration.json")))["tokens"]
        samples = calibrate(model, calibration)
        reference = logits(model, heldout, None)
        print(f"fixture {os.path.relpath(fixture, ROOT)}: held-out {len(heldout)} x {len(heldout[0])} tokens; "
              f"latent {model.config.kv_lora_rank}, rope {model.config.qk_rope_head_dim}; torch {torch.__version__}")
        print(f"{'layout':58} {'V2 bytes':>8} {'KL mean':>9} {'x fp8':>6} {'KL max':>7} {'top-1':>7}")
        fp8 = None
        for name, size, codec in layouts(model, samples, calibration):
            if codec is None:
                print(name)
                continue
            mean, worst, top1 = drift(reference, logits(model, heldout, codec))
            fp8 = mean if name == "fp8_ds_mla" else fp8
            ratio = f"{mean / fp8:6.2f}" if fp8 else f"{'':6}"
            print(f"{name:58} {size if size else '-':>8} {mean:9.2e} {ratio} {worst:7.3f} {top1:7.4f}", flush=True)
        print()


if __name__ == "__main__":
    main()
