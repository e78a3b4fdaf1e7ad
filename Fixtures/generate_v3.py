#!/usr/bin/env python3
"""Writes the tiny DeepSeek-V3-family fixture checkpoints, their transformers goldens, the
published V3-family configs and their parameter counts.

Run by hand (not by CI), with the versions pinned in requirements.txt (torch 2.13.0+cpu,
transformers 5.23.0, safetensors 0.8.0):

    pip install -r Fixtures/requirements.txt
    python3 Fixtures/generate_v3.py                 # everything below
    python3 Fixtures/generate_v3.py v3 kimi configs # a subset (v3-fp8 is made from v3's files)

Outputs
=======

Fixtures/v3/  a DeepSeek-V3-shaped bf16 checkpoint written by transformers' DeepseekV3ForCausalLM
  (save_pretrained, 200KB shards), config.json in the layout DeepSeek publishes for V3 (its key set:
  rope_theta + rope_scaling yarn factor 40 with mscale = mscale_all_dim = 1.0, topk_method noaux_tc,
  scoring_func sigmoid, n_group 8 / topk_group 4, norm_topk_prob, routed_scaling_factor 2.5,
  num_nextn_predict_layers 1, ...; transformers' own config.json and generation_config.json are
  not kept). Dimensions (V3_DIMS below): vocab 320, hidden 144 (so FP8 128-blocks are partial:
  ceil(144/128) = 2 column blocks, of 128 and 16), intermediate 288, moe_intermediate 24,
  3 layers of which the first is dense (first_k_dense_replace 1), 4 heads, q_lora_rank 96,
  kv_lora_rank 64, qk_nope 16, qk_rope 8, v_head 16, 16 routed experts in 8 groups of 2 (2 experts
  per device over 8 devices), 1 shared expert, 4 experts per token, max_position_embeddings 163840.
  moe_intermediate is 24 (not a power of two, and a single partial FP8 block) rather than a larger
  size so that v3-fp8, which also carries a bf16 copy of every FP8 weight, stays near 3 MB.
  - Weights: every parameter with 2 or more dimensions ~ normal(0, 1/sqrt(fan_in)), fan_in the last
    dimension (transformers 5.23 holds the routed experts fused as 3-D [experts, out, in] tensors, and
    they get the same rule); every 1-D parameter (norms) ~ uniform(0.5, 1.5); then rounded to bf16.
  - mlp.gate.e_score_correction_bias: non-zero, ~ uniform(-0.25, 0.25), stored F32 as in the
    published checkpoints (it is the only F32 tensor; the values are not bf16-representable). The
    script checks that the bias changes expert choices against the same router without bias and
    prints how many.
  - Expert tensor names: transformers 5.23 keeps routed experts as fused parameters
    (mlp.experts.gate_up_proj [E, 2*moe_inter, hidden] and mlp.experts.down_proj [E, hidden,
    moe_inter]); save_pretrained reverses its own load-time conversion (the "qwen2_moe" weight
    converters, used for deepseek_v3) and writes the hub names
    model.layers.{i}.mlp.experts.{j}.{gate,up,down}_proj.weight, one 2-D tensor per expert, as the
    published checkpoints do. The script checks those names and that gate/up are the two halves of
    gate_up_proj[j].
  - The MTP layer, in the published layout: model.layers.3 (= num_hidden_layers) holding a full MoE
    decoder layer (same tensor names as any MoE layer, e_score_correction_bias included) plus
    model.layers.3.embed_tokens.weight [vocab, hidden], .enorm.weight [hidden], .hnorm.weight
    [hidden], .eh_proj.weight [hidden, 2*hidden], .shared_head.norm.weight [hidden],
    .shared_head.head.weight [vocab, hidden]. transformers 5.23 does not compute MTP (its
    DeepseekV3ForCausalLM has no MTP module and ignores these keys on load), so these tensors are
    drawn with the same random rule (their own values: embed_tokens and shared_head.head are not
    copies of the main model's) and written to shards of their own at the end, added to
    model.safetensors.index.json (total_size, total_parameters updated). The script checks that
    transformers loads the directory with no missing key and no unexpected key outside
    model.layers.3.
  - tokens.json: {"tokens": 2 sequences of 16 random ids} (generator seed 7, as generate.py).
  - golden.safetensors: transformers reloads the written bf16 files (from_pretrained, dtype
    float32) and runs in fp32:
      logits                  F32 [batch, seq, vocab]
      hidden_states.{i}       F32 [batch, seq, hidden], i = 0..num_hidden_layers, transformers'
                              output_hidden_states: 0 is the embedding output, i the output of layer
                              i-1, except the last, which is after the final norm (model.norm), as
                              transformers returns it (checked by the script).
      routing.{layer}.experts I32 [batch, seq, k], each token's selected experts, ascending
      routing.{layer}.weights F32 [batch, seq, k], their weights in the same order, after
                              norm_topk_prob and routed_scaling_factor
    for every MoE layer of the main stack (not the MTP layer). The routing is captured by a
    forward hook on DeepseekV3TopkRouter, whose forward returns (router_logits, topk_weights,
    topk_indices).

  transformers 5.23's router (models/deepseek_v3/modeling_deepseek_v3.py, DeepseekV3TopkRouter.
  forward, lines 133-158): logits = x.float() @ W.float()^T; s = sigmoid(logits);
  c = s + e_score_correction_bias (the bias is used only to choose); group score = sum of the two
  largest c in each of n_group groups (topk(2).sum); the topk_group best groups are kept and the
  other groups' c are masked with -inf (masked_fill(~mask, float("-inf")), line 151; not 0.0: the
  hub's remote modeling_deepseek.py masks with 0.0, DeepSeek's inference/model.py with -inf, and
  the two differ only if a kept biased score is negative); top-k experts by c; weights = s at those
  experts (unbiased), divided by their sum + 1e-20 when norm_topk_prob, times
  routed_scaling_factor. The script re-implements this, checks it reproduces the hook's output
  bit for bit, and prints how many tokens a 0.0 mask would have routed differently.

  YaRN with mscale = mscale_all_dim (V3's 1.0, V2's 0.707) leaves cos/sin unscaled (transformers'
  attention_factor = get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim) = 1), but the
  softmax scale is still corrected: DeepseekV3Attention.scaling = qk_head_dim^-0.5 * m^2 with
  m = 0.1 * mscale_all_dim * ln(factor) + 1 (yarn_apply_mscale), m^2 = 1.874 for factor 40 and
  mscale_all_dim 1.0 (1.813 for Kimi-K2's factor 32), as DeepSeek's own code does.

Fixtures/v3-fp8/  the same model FP8-native, made the way DeepSeek publishes V3: every linear weight
  of attention and MLP (q_a_proj, q_b_proj, kv_a_proj_with_mqa, kv_b_proj, o_proj; the dense MLP's,
  the shared expert's and every routed expert's gate/up/down_proj; in the MTP layer too) is
  F8_E4M3 with <name>_scale_inv F32 [ceil(out/128), ceil(in/128)], quantized from the v3 bf16
  weight exactly as generate_fp8_goldens.py does (its quantize() is imported): per 128x128 block
  (partial at the edges) s = amax / 448 in fp32, q = (x / s).to(torch.float8_e4m3fn), an all-zero
  block gets s = 1. Kept as they are: embed_tokens, lm_head, every norm, mlp.gate.weight (bf16),
  e_score_correction_bias (F32), and in the MTP layer embed_tokens, enorm, hnorm, eh_proj and
  shared_head.* (bf16). eh_proj stays bf16 because the serving engines' DeepSeek MTP modules build
  it as a plain unquantized nn.Linear (SGLang's deepseek_nextn, vLLM's deepseek_mtp), so the
  published checkpoints carry it without a scale. config.json is v3's plus "quantization_config":
  {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size":
  [128, 128]}. Each tensor (and its scale) is in the shard where v3 has it; shards are named
  model-0000i-of-0000NN.safetensors with a 6-digit total, as the published V3 files are
  (model-00001-of-000163.safetensors), with model.safetensors.index.json. tokens.json as v3.
  - golden.safetensors: same keys as v3's, from transformers' fp32 forward on the DEQUANTIZED
    weights: the f32 product code * scale (not rounded to bf16) for every FP8 weight, the other
    tensors as stored, loaded through from_pretrained(dtype float32) from a temporary F32 copy.
  - dequantized-golden.safetensors: what DeepSeek's own inference/fp8_cast_bf16.py writes for every
    FP8 weight (its weight_dequant kernel: code.float() * scale expanded per block, stored as
    bfloat16, round to nearest even), under the weight's name, no scale tensors; for comparing
    `quantize --dequantize` byte for byte.

Fixtures/kimi/  a Kimi-K2/Moonlight-style ungrouped V3: DeepseekV3ForCausalLM with n_group 1,
  topk_group 1, noaux_tc, sigmoid, norm_topk_prob, routed_scaling_factor 2.827 (Kimi-K2), no MTP
  (num_nextn_predict_layers 0), no query compression (q_lora_rank null, as Moonlight), config.json
  in Kimi-K2-Instruct's key set with model_type "kimi_k2" (Kimi-K2 ships that model_type with
  architectures ["DeepseekV3ForCausalLM"]) and Kimi-K2's YaRN (factor 32, beta_fast 1.0, beta_slow
  1.0, mscale = mscale_all_dim = 1.0, rope_theta 50000). Dimensions (kimi_hub_config): vocab 320, hidden
  64, intermediate 160, moe_intermediate 32, 3 layers (first dense), 4 heads, kv_lora_rank 32,
  qk_nope 16, qk_rope 8, v_head 16, 24 routed experts (3 per device over 8 devices), 1 shared,
  6 per token. bf16, non-zero F32 bias, 100KB shards renamed model-{i}-of-{N}.safetensors (no zero
  padding), the naming Kimi-K2's published files use. tokens.json and golden.safetensors as v3.
  transformers 5.23 does not know model_type "kimi_k2": DeepseekV3ForCausalLM.from_pretrained reads
  the config (with a warning) but then applies no expert conversion and leaves every routed expert
  missing (randomly initialized). The golden is therefore computed through a temporary copy whose
  config.json says "deepseek_v3" (see load_checked); the directory itself keeps "kimi_k2".

Fixtures/configs/<Name>/config.json  published configs, no weights:
  DeepSeek-V3, DeepSeek-R1, Kimi-K2-Instruct, Moonlight-16B-A3B-Instruct (PUBLISHED below says where
  each text comes from and what could not be checked).
Fixtures/configs/param-counts.json  for each of those and the existing DeepSeek-V2 and
  DeepSeek-V2-Lite configs, computed with transformers (DeepseekV3ForCausalLM / DeepseekV2ForCausalLM
  built on the meta device from the config, numel summed):
  total_main     every tensor of the main stack as the checkpoint stores it: parameters plus the
                 e_score_correction_bias buffers (embed_tokens and lm_head included, MTP excluded)
  mtp            the MTP layer(s), by hand formula: one MoE decoder layer + embed_tokens + head +
                 enorm + hnorm + eh_proj + shared_head.norm per layer (the formula's MoE decoder
                 layer is checked against transformers' count for a main-stack MoE layer)
  active_main    parameters one token uses in the main stack, DeepSeek's definition (the one that
                 gives V3 ~37B, "36.6B including 0.9B for the output head"): total_main minus all
                 routed experts minus embed_tokens (a lookup, not a matmul), plus num_experts_per_tok
                 routed experts per MoE layer; lm_head included
  active_main_with_embedding  the same plus embed_tokens
  kv_cache_bf16_bytes_per_token  num_hidden_layers * (kv_lora_rank + qk_rope_head_dim) * 2
"""
import json
import math
import os
import re
import shutil
import sys
import tempfile

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (DeepseekV2Config, DeepseekV2ForCausalLM, DeepseekV3Config,
                          DeepseekV3ForCausalLM)
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

from generate_fp8_goldens import BLOCK, quantize

HERE = os.path.dirname(os.path.abspath(__file__))
FP8_FORMAT = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]}
V3_YARN = {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
           "original_max_position_embeddings": 4096, "type": "yarn"}
K2_YARN = {"beta_fast": 1.0, "beta_slow": 1.0, "factor": 32.0, "mscale": 1.0, "mscale_all_dim": 1.0,
           "original_max_position_embeddings": 4096, "type": "yarn"}
AUTO_MAP = {"AutoConfig": "configuration_deepseek.DeepseekV3Config",
            "AutoModel": "modeling_deepseek.DeepseekV3Model",
            "AutoModelForCausalLM": "modeling_deepseek.DeepseekV3ForCausalLM"}


def v3_hub_config(**dims):
    """DeepSeek-V3's published config.json key set (keys sorted, as the hub file), filled per fixture."""
    cfg = {
        "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "auto_map": AUTO_MAP, "aux_loss_alpha": 0.001, "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1,
        "hidden_act": "silu", "initializer_range": 0.02, "max_position_embeddings": 163840,
        "model_type": "deepseek_v3", "moe_layer_freq": 1, "norm_topk_prob": True, "pretraining_tp": 1,
        "rms_norm_eps": 1e-06, "rope_scaling": V3_YARN, "rope_theta": 10000, "scoring_func": "sigmoid",
        "seq_aux": True, "tie_word_embeddings": False, "topk_method": "noaux_tc", "torch_dtype": "bfloat16",
        "transformers_version": "5.23.0", "use_cache": True,
    }
    cfg.update(dims)
    cfg["num_key_value_heads"] = cfg["num_attention_heads"]
    return dict(sorted(cfg.items()))


V3_DIMS = dict(vocab_size=320, hidden_size=144, intermediate_size=288, moe_intermediate_size=24,
               num_hidden_layers=3, first_k_dense_replace=1, num_attention_heads=4, q_lora_rank=96,
               kv_lora_rank=64, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=16,
               n_group=8, topk_group=4, n_shared_experts=1, num_experts_per_tok=4, routed_scaling_factor=2.5,
               num_nextn_predict_layers=1)


def kimi_hub_config():
    """Kimi-K2-Instruct's published config.json key set (its key order), tiny dimensions, no FP8."""
    return {
        "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "auto_map": AUTO_MAP, "aux_loss_alpha": 0.001, "bos_token_id": 0, "eos_token_id": 1,
        "first_k_dense_replace": 1, "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.02,
        "intermediate_size": 160, "kv_lora_rank": 32, "max_position_embeddings": 131072, "model_type": "kimi_k2",
        "moe_intermediate_size": 32, "moe_layer_freq": 1, "n_group": 1, "n_routed_experts": 24,
        "n_shared_experts": 1, "norm_topk_prob": True, "num_attention_heads": 4, "num_experts_per_tok": 6,
        "num_hidden_layers": 3, "num_key_value_heads": 4, "num_nextn_predict_layers": 0, "pretraining_tp": 1,
        "q_lora_rank": None, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "rms_norm_eps": 1e-06,
        "rope_theta": 50000.0, "routed_scaling_factor": 2.827, "rope_scaling": K2_YARN, "scoring_func": "sigmoid",
        "seq_aux": True, "tie_word_embeddings": False, "topk_group": 1, "topk_method": "noaux_tc",
        "torch_dtype": "bfloat16", "transformers_version": "5.23.0", "use_cache": True, "v_head_dim": 16,
        "vocab_size": 320,
    }


FIXTURES = {"v3": v3_hub_config(**V3_DIMS), "kimi": kimi_hub_config()}
SHARD_SIZE = {"v3": "200KB", "kimi": "100KB"}
SEED = {"v3": 55, "kimi": 66}
BIAS_RANGE = 0.25

# Keys of the hub files that are not DeepseekV3Config/DeepseekV2Config fields (or are spelled
# differently there: rope_theta + rope_scaling become rope_parameters).
NOT_MODEL_KEYS = ("rope_scaling", "rope_theta", "architectures", "model_type", "torch_dtype", "aux_loss_alpha",
                  "seq_aux", "ep_size", "scoring_func", "moe_layer_freq", "topk_method", "auto_map",
                  "quantization_config", "transformers_version")


def transformers_config(hub):
    """The same config as transformers 5 spells it (rope_parameters)."""
    cfg = {k: v for k, v in hub.items() if k not in NOT_MODEL_KEYS}
    params = {"rope_theta": float(hub["rope_theta"]), "rope_type": "default"}
    if hub.get("rope_scaling"):
        params = dict(hub["rope_scaling"])
        params["rope_type"] = params.pop("type")
        params["rope_theta"] = float(hub["rope_theta"])
    cfg["rope_parameters"] = params
    if hub["architectures"] == ["DeepseekV2ForCausalLM"]:
        return DeepseekV2Config(**cfg)
    return DeepseekV3Config(**cfg)


def randomize(module):
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() >= 2:
                p.normal_(0, 1.0 / math.sqrt(p.shape[-1]))
            else:
                p.uniform_(0.5, 1.5)


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def read_dir(directory):
    """Every tensor of a checkpoint directory, by name, and the shard each one is in."""
    index = json.load(open(os.path.join(directory, "model.safetensors.index.json")))
    tensors = {}
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(os.path.join(directory, shard), "pt") as f:
            for name in f.keys():
                tensors[name] = f.get_tensor(name)
    assert set(tensors) == set(index["weight_map"]), "index and shards disagree"
    return tensors, index["weight_map"]


def shard_bytes(t):
    return t.numel() * t.element_size()


def pack(names, tensors, limit):
    """Greedy shards of at most `limit` bytes in the given order (a larger tensor gets a shard of its own)."""
    shards, current, size = [], [], 0
    for n in names:
        b = shard_bytes(tensors[n])
        if current and size + b > limit:
            shards.append(current)
            current, size = [], 0
        current.append(n)
        size += b
    if current:
        shards.append(current)
    return shards


def write_shards(out, groups, tensors, file_name, metadata_extra=None):
    """Writes the shards (lists of names) as file_name(i, n) and the index."""
    weight_map = {}
    for i, group in enumerate(groups, 1):
        fname = file_name(i, len(groups))
        save_file({n: tensors[n].contiguous() for n in group}, os.path.join(out, fname), metadata={"format": "pt"})
        for n in group:
            weight_map[n] = fname
    metadata = {"total_size": sum(shard_bytes(t) for t in tensors.values())}
    metadata.update(metadata_extra or {})
    write_json(os.path.join(out, "model.safetensors.index.json"),
               {"metadata": metadata, "weight_map": dict(sorted(weight_map.items()))})


def transformers_names(i, total):
    return f"model-{i:05d}-of-{total:05d}.safetensors"


def kimi_names(i, total):
    return f"model-{i}-of-{total}.safetensors"


# ---------------------------------------------------------------- routing


def route(module, x, mask_value=float("-inf"), use_bias=True):
    """DeepseekV3TopkRouter.forward re-implemented, with the group mask value and the bias as knobs."""
    x = x.reshape(-1, module.hidden_dim)
    s = torch.nn.functional.linear(x.float(), module.weight.float()).sigmoid()
    c = s + module.e_score_correction_bias if use_bias else s.clone()
    e, g = module.num_experts, module.num_group
    group_scores = c.view(-1, g, e // g).topk(2, dim=-1)[0].sum(dim=-1)
    groups = group_scores.topk(module.topk_group, dim=-1, sorted=False)[1]
    keep = torch.zeros_like(group_scores).scatter_(1, groups, 1).unsqueeze(-1).expand(-1, g, e // g).reshape(-1, e)
    c = c.masked_fill(~keep.bool(), mask_value)
    idx = c.topk(module.top_k, dim=-1, sorted=False)[1]
    w = s.gather(1, idx)
    if module.norm_topk_prob:
        w = w / (w.sum(dim=-1, keepdim=True) + 1e-20)
    return idx, w * module.routed_scaling_factor


def capture_routing(model):
    records, handles = {}, []
    def hook(layer):
        def fn(module, inputs, output):
            _, weights, indices = output
            records[layer] = (inputs[0].detach().clone(), indices, weights)
        return fn
    for i, block in enumerate(model.model.layers):
        gate = getattr(block.mlp, "gate", None)
        if isinstance(gate, DeepseekV3TopkRouter):
            handles.append(gate.register_forward_hook(hook(i)))
    return records, handles


def check_routing(model, records):
    """The re-implementation reproduces transformers; counts what the bias and a 0.0 mask change."""
    changed_choices, changed_tokens, zero_mask_tokens, total = 0, 0, 0, 0
    for layer, (x, indices, weights) in records.items():
        module = model.model.layers[layer].mlp.gate
        idx, w = route(module, x)
        order_t, order_m = indices.argsort(-1), idx.argsort(-1)
        assert torch.equal(indices.gather(-1, order_t), idx.gather(-1, order_m)), f"layer {layer}: experts differ"
        assert torch.equal(weights.gather(-1, order_t), w.gather(-1, order_m)), f"layer {layer}: weights differ"
        unbiased, _ = route(module, x, use_bias=False)
        zero, _ = route(module, x, mask_value=0.0)
        for a, b, z in zip(idx.tolist(), unbiased.tolist(), zero.tolist()):
            diff = len(set(a) - set(b))
            changed_choices += diff
            changed_tokens += diff > 0
            zero_mask_tokens += set(a) != set(z)
            total += 1
    return changed_choices, changed_tokens, zero_mask_tokens, total


def run_goldens(model, tokens):
    """logits, hidden_states.{i}, routing.{layer}.{experts,weights} from an fp32 forward."""
    model.eval()
    records, handles = capture_routing(model)
    with torch.no_grad():
        result = model(torch.tensor(tokens), output_hidden_states=True)
        last = model.model(torch.tensor(tokens)).last_hidden_state
    for h in handles:
        h.remove()
    assert torch.equal(result.hidden_states[-1], last), "last hidden state is not after model.norm"
    golden = {"logits": result.logits.float().contiguous()}
    for i, hs in enumerate(result.hidden_states):
        golden[f"hidden_states.{i}"] = hs.float().contiguous()
    b, s = len(tokens), len(tokens[0])
    for layer, (_, indices, weights) in sorted(records.items()):
        order = indices.argsort(dim=-1)
        golden[f"routing.{layer}.experts"] = indices.gather(-1, order).view(b, s, -1).to(torch.int32).contiguous()
        golden[f"routing.{layer}.weights"] = weights.gather(-1, order).view(b, s, -1).float().contiguous()
    return golden, check_routing(model, records)


def save_golden(golden, path):
    # One metadata key only: safetensors writes several in a varying order, and the files should be
    # byte-identical from run to run (the versions are pinned above and in requirements.txt).
    save_file(golden, path, metadata={"format": "pt"})


def load_checked(directory, mtp_prefix=None):
    """from_pretrained in fp32; no missing key, and no unexpected key outside the MTP layer.

    transformers 5.23 chooses its checkpoint conversions by config.model_type: for "deepseek_v3" it
    merges the per-expert tensors into its fused experts, for "kimi_k2" it has none, so loading a
    kimi_k2 directory as is leaves every routed expert MISSING (randomly initialized, with a warning).
    Such a directory is therefore read through a temporary copy whose config.json says "deepseek_v3"
    (the workaround Moonshot's Kimi-K2 deployment notes give for frameworks without kimi_k2).
    """
    config = json.load(open(os.path.join(directory, "config.json")))
    with tempfile.TemporaryDirectory() as tmp:
        if config["model_type"] != "deepseek_v3":
            for f in os.listdir(directory):
                if f.endswith(".safetensors") or f.endswith(".index.json"):
                    os.symlink(os.path.abspath(os.path.join(directory, f)), os.path.join(tmp, f))
            write_json(os.path.join(tmp, "config.json"), dict(config, model_type="deepseek_v3"))
            directory = tmp
        model, info = DeepseekV3ForCausalLM.from_pretrained(directory, dtype=torch.float32, output_loading_info=True)
    unexpected = sorted(info["unexpected_keys"])
    assert not info["missing_keys"], info["missing_keys"]
    assert not info["mismatched_keys"], info["mismatched_keys"]
    assert all(mtp_prefix and k.startswith(mtp_prefix) for k in unexpected), unexpected
    return model, unexpected


# ---------------------------------------------------------------- fixtures


def build(name):
    """The random bf16 model (hub-named tensors) of fixture `name`, with its MTP tensors if any."""
    hub = FIXTURES[name]
    n_layers, n_mtp = hub["num_hidden_layers"], hub["num_nextn_predict_layers"]
    torch.manual_seed(SEED[name])
    # The main stack and the MTP layers' decoder layers come from one model of n_layers + n_mtp
    # layers, so the MTP decoder layer is a transformers DeepseekV3DecoderLayer named by transformers.
    full_cfg = transformers_config(dict(hub, num_hidden_layers=n_layers + n_mtp))
    full = DeepseekV3ForCausalLM(full_cfg).float()
    randomize(full)
    biases = {}
    for i, layer in enumerate(full.model.layers):
        gate = getattr(layer.mlp, "gate", None)
        if isinstance(gate, DeepseekV3TopkRouter):
            biases[i] = torch.empty(gate.num_experts).uniform_(-BIAS_RANGE, BIAS_RANGE)
    full = full.to(torch.bfloat16)
    for i, bias in biases.items():
        full.model.layers[i].mlp.gate.e_score_correction_bias = bias  # F32, as published
    hidden, vocab = hub["hidden_size"], hub["vocab_size"]
    extras = {}
    for j in range(n_mtp):
        p = f"model.layers.{n_layers + j}."
        extras[p + "embed_tokens.weight"] = torch.empty(vocab, hidden).normal_(0, 1 / math.sqrt(hidden))
        extras[p + "enorm.weight"] = torch.empty(hidden).uniform_(0.5, 1.5)
        extras[p + "hnorm.weight"] = torch.empty(hidden).uniform_(0.5, 1.5)
        extras[p + "eh_proj.weight"] = torch.empty(hidden, 2 * hidden).normal_(0, 1 / math.sqrt(2 * hidden))
        extras[p + "shared_head.norm.weight"] = torch.empty(hidden).uniform_(0.5, 1.5)
        extras[p + "shared_head.head.weight"] = torch.empty(vocab, hidden).normal_(0, 1 / math.sqrt(hidden))
    extras = {k: v.to(torch.bfloat16) for k, v in extras.items()}
    return full, extras


def check_expert_names(model, tensors, hub):
    inter = hub["moe_intermediate_size"]
    for i, layer in enumerate(model.model.layers):
        experts = getattr(layer.mlp, "experts", None)
        if experts is None:
            continue
        assert not any(n.startswith(f"model.layers.{i}.mlp.experts.gate_up_proj") for n in tensors)
        for j in range(hub["n_routed_experts"]):
            p = f"model.layers.{i}.mlp.experts.{j}."
            assert torch.equal(tensors[p + "gate_proj.weight"], experts.gate_up_proj[j][:inter])
            assert torch.equal(tensors[p + "up_proj.weight"], experts.gate_up_proj[j][inter:])
            assert torch.equal(tensors[p + "down_proj.weight"], experts.down_proj[j])


def write_model_dir(name, out, file_name):
    hub = FIXTURES[name]
    n_layers, n_mtp = hub["num_hidden_layers"], hub["num_nextn_predict_layers"]
    shutil.rmtree(out, ignore_errors=True)
    full, extras = build(name)
    mtp_prefixes = tuple(f"model.layers.{n_layers + j}." for j in range(n_mtp))
    with tempfile.TemporaryDirectory() as tmp:
        # transformers names the MTP decoder layer(s): save the whole model once, keep those tensors.
        full.save_pretrained(os.path.join(tmp, "full"), max_shard_size=SHARD_SIZE[name])
        mtp_tensors = {n: t for n, t in read_dir(os.path.join(tmp, "full"))[0].items() if n.startswith(mtp_prefixes)}
        # The main stack is written by save_pretrained with the MTP layers dropped, in its own shards.
        full.model.layers = full.model.layers[:n_layers]
        full.config.num_hidden_layers = n_layers
        full.save_pretrained(os.path.join(tmp, "main"), max_shard_size=SHARD_SIZE[name])
        tensors, weight_map = read_dir(os.path.join(tmp, "main"))
    check_expert_names(full, tensors, hub)
    tensors.update(mtp_tensors)
    assert all(t.dtype == torch.bfloat16 for n, t in tensors.items() if "e_score_correction_bias" not in n)
    assert all(t.dtype == torch.float32 for n, t in tensors.items() if "e_score_correction_bias" in n)
    # Main stack: transformers' shards as it wrote them; then the MTP layer(s) in shards of their own,
    # filled in the order of a decoder layer's tensors followed by the MTP-only ones.
    main_shards = {}
    for n in weight_map:
        main_shards.setdefault(weight_map[n], []).append(n)
    groups = [sorted(main_shards[f]) for f in sorted(main_shards)]
    limit = int(SHARD_SIZE[name].removesuffix("KB")) * 1000
    for p in mtp_prefixes:
        mtp_names = sorted(n for n in tensors if n.startswith(p)) + sorted(n for n in extras if n.startswith(p))
        groups += pack(mtp_names, {**tensors, **extras}, limit)
    all_tensors = {**tensors, **extras}
    os.makedirs(out)
    write_shards(out, groups, all_tensors, file_name,
                 {"total_parameters": sum(t.numel() for t in all_tensors.values())})
    write_json(os.path.join(out, "config.json"), hub)
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, hub["vocab_size"], (2, 16), generator=g).tolist()
    with open(os.path.join(out, "tokens.json"), "w") as f:  # one line, as generate.py writes it
        json.dump({"tokens": tokens}, f)
        f.write("\n")
    return all_tensors, tokens, mtp_prefixes


def report_routing(name, counts):
    changed_choices, changed_tokens, zero_mask_tokens, total = counts
    print(f"  {name}: e_score_correction_bias changed {changed_choices} expert choices in {changed_tokens} of "
          f"{total} token-layers vs the same router without bias; a 0.0 group mask (instead of -inf) would "
          f"change {zero_mask_tokens}")
    assert changed_choices > 0, "the bias changed no expert choice"


def write_fixture(name):
    out = os.path.join(HERE, name)
    file_name = transformers_names if name == "v3" else kimi_names
    tensors, tokens, mtp_prefixes = write_model_dir(name, out, file_name)
    model, unexpected = load_checked(out, mtp_prefixes[0] if mtp_prefixes else None)
    print(f"  {name}: transformers loaded it; missing keys none; unexpected keys {len(unexpected)}, "
          f"all under {mtp_prefixes[0] if mtp_prefixes else '-'}")
    golden, counts = run_goldens(model, tokens)
    save_golden(golden, os.path.join(out, "golden.safetensors"))
    report_routing(name, counts)
    print(f"  {name}: {sum(t.numel() for t in tensors.values())} stored values -> {out}")


FP8_LINEAR = re.compile(r"\.(self_attn\.(q_a_proj|q_b_proj|q_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj)"
                        r"|mlp\.(shared_experts\.|experts\.\d+\.)?(gate_proj|up_proj|down_proj))\.weight$")


def expand(scale, rows, cols):
    return scale.repeat_interleave(BLOCK, 0)[:rows].repeat_interleave(BLOCK, 1)[:, :cols]


def write_fp8():
    src, out = os.path.join(HERE, "v3"), os.path.join(HERE, "v3-fp8")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    tensors, weight_map = read_dir(src)
    stored, dequant_f32, dequant_bf16 = {}, {}, {}
    for name, t in tensors.items():
        if FP8_LINEAR.search(name):
            q, s = quantize(t.float())
            assert list(s.shape) == [-(-t.shape[0] // BLOCK), -(-t.shape[1] // BLOCK)]
            stored[name], stored[name + "_scale_inv"] = q, s
            product = q.float() * expand(s, *t.shape)
            dequant_f32[name] = product
            dequant_bf16[name] = product.to(torch.bfloat16)
        else:
            stored[name] = t
            dequant_f32[name] = t.float()
    kept = sorted(n for n in tensors if not FP8_LINEAR.search(n) and tensors[n].dim() == 2)
    kept = sorted(set(re.sub(r"layers\.\d+\.", "layers.N.", n) for n in kept))
    print(f"  v3-fp8: {len(dequant_bf16)} FP8 weights; 2-D tensors kept as they are: {kept}")
    shards = {}
    for name in sorted(tensors):
        shards.setdefault(weight_map[name], []).append(name)
        if name + "_scale_inv" in stored:
            shards[weight_map[name]].append(name + "_scale_inv")
    groups = [shards[f] for f in sorted(shards)]
    write_shards(out, groups, stored, lambda i, total: f"model-{i:05d}-of-{total:06d}.safetensors",
                 {"total_parameters": sum(t.numel() for n, t in stored.items() if not n.endswith("_scale_inv"))})
    hub = dict(FIXTURES["v3"], quantization_config=FP8_FORMAT)
    write_json(os.path.join(out, "config.json"), dict(sorted(hub.items())))
    shutil.copy(os.path.join(src, "tokens.json"), os.path.join(out, "tokens.json"))
    save_golden(dequant_bf16, os.path.join(out, "dequantized-golden.safetensors"))
    # Golden: transformers, fp32, on the f32 dequantized weights (a temporary F32 copy of the
    # checkpoint without quantization_config, read by from_pretrained).
    mtp = f"model.layers.{FIXTURES['v3']['num_hidden_layers']}."
    with tempfile.TemporaryDirectory() as tmp:
        save_file({n: t.contiguous() for n, t in dequant_f32.items() if not n.startswith(mtp)},
                  os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        write_json(os.path.join(tmp, "config.json"), FIXTURES["v3"])
        model, _ = load_checked(tmp)
        for name, t in dequant_f32.items():
            if name.endswith("e_score_correction_bias") and not name.startswith(mtp):
                layer = int(name.split(".")[2])
                assert torch.equal(model.model.layers[layer].mlp.gate.e_score_correction_bias, t)
    tokens = json.load(open(os.path.join(out, "tokens.json")))["tokens"]
    golden, counts = run_goldens(model, tokens)
    save_golden(golden, os.path.join(out, "golden.safetensors"))
    report_routing("v3-fp8", counts)
    bf16_logits = load_golden(os.path.join(src, "golden.safetensors"))["logits"]
    err = (golden["logits"] - bf16_logits).abs().max().item() / bf16_logits.abs().max().item()
    print(f"  v3-fp8: max |logits(fp8 dequantized) - logits(bf16)| / max |logits| = {err:.4f}")


def load_golden(path):
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


# ---------------------------------------------------------------- published configs

# Published config.json texts. The hub itself could not be read from here; each text is a copy of the
# hub file found in public source repositories that quote it (tests and model reports), and the key
# sets and values below are the ones those copies agree on.
#
# DeepSeek-V3: copies quoting deepseek-ai/DeepSeek-V3 disagree on three keys that do not change the
# architecture: two carry aux_loss_alpha 0.001, pretraining_tp 1 and seq_aux true (as DeepSeek-V2's
# file does), two others omit them. They are kept here. All copies agree on every other key and value,
# on transformers_version "4.33.1", and on the quantization_config. The copies' indentation differs,
# so the file's exact whitespace is not claimed.
# DeepSeek-R1: two independent copies agree key for key (no aux_loss_alpha, pretraining_tp, seq_aux;
# transformers_version "4.46.3").
# Kimi-K2-Instruct: a verbatim dump of moonshotai/Kimi-K2-Instruct's config.json, key order kept
# (rope_scaling after routed_scaling_factor, as published); model_type "kimi_k2" with architectures
# ["DeepseekV3ForCausalLM"] (a second copy has the same order and values).
# Moonlight: the only verbatim copy found is moonshotai/Moonlight-16B-A3B-Instruct's (at hub revision
# 4e735b07a89f73647dfab71ab91b840f362ede5b), so that is the file written; the base model
# Moonlight-16B-A3B has the same architecture (27 layers, hidden 2048, 64+2 experts, top-6), but its
# own file's token ids (eos_token_id) could not be checked.
PUBLISHED = {
    "DeepSeek-V3": {
        "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "auto_map": AUTO_MAP, "aux_loss_alpha": 0.001, "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1,
        "first_k_dense_replace": 3, "hidden_act": "silu", "hidden_size": 7168, "initializer_range": 0.02,
        "intermediate_size": 18432, "kv_lora_rank": 512, "max_position_embeddings": 163840,
        "model_type": "deepseek_v3", "moe_intermediate_size": 2048, "moe_layer_freq": 1, "n_group": 8,
        "n_routed_experts": 256, "n_shared_experts": 1, "norm_topk_prob": True, "num_attention_heads": 128,
        "num_experts_per_tok": 8, "num_hidden_layers": 61, "num_key_value_heads": 128,
        "num_nextn_predict_layers": 1, "pretraining_tp": 1, "q_lora_rank": 1536, "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64, "quantization_config": FP8_FORMAT, "rms_norm_eps": 1e-06,
        "rope_scaling": V3_YARN, "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid",
        "seq_aux": True, "tie_word_embeddings": False, "topk_group": 4, "topk_method": "noaux_tc",
        "torch_dtype": "bfloat16", "transformers_version": "4.33.1", "use_cache": True, "v_head_dim": 128,
        "vocab_size": 129280,
    },
    "DeepSeek-R1": {
        "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "auto_map": AUTO_MAP, "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1, "first_k_dense_replace": 3,
        "hidden_act": "silu", "hidden_size": 7168, "initializer_range": 0.02, "intermediate_size": 18432,
        "kv_lora_rank": 512, "max_position_embeddings": 163840, "model_type": "deepseek_v3",
        "moe_intermediate_size": 2048, "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256,
        "n_shared_experts": 1, "norm_topk_prob": True, "num_attention_heads": 128, "num_experts_per_tok": 8,
        "num_hidden_layers": 61, "num_key_value_heads": 128, "num_nextn_predict_layers": 1, "q_lora_rank": 1536,
        "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "quantization_config": FP8_FORMAT,
        "rms_norm_eps": 1e-06, "rope_scaling": V3_YARN, "rope_theta": 10000, "routed_scaling_factor": 2.5,
        "scoring_func": "sigmoid", "tie_word_embeddings": False, "topk_group": 4, "topk_method": "noaux_tc",
        "torch_dtype": "bfloat16", "transformers_version": "4.46.3", "use_cache": True, "v_head_dim": 128,
        "vocab_size": 129280,
    },
    "Kimi-K2-Instruct": {
        "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "auto_map": AUTO_MAP, "aux_loss_alpha": 0.001, "bos_token_id": 163584, "eos_token_id": 163585,
        "first_k_dense_replace": 1, "hidden_act": "silu", "hidden_size": 7168, "initializer_range": 0.02,
        "intermediate_size": 18432, "kv_lora_rank": 512, "max_position_embeddings": 131072,
        "model_type": "kimi_k2", "moe_intermediate_size": 2048, "moe_layer_freq": 1, "n_group": 1,
        "n_routed_experts": 384, "n_shared_experts": 1, "norm_topk_prob": True, "num_attention_heads": 64,
        "num_experts_per_tok": 8, "num_hidden_layers": 61, "num_key_value_heads": 64,
        "num_nextn_predict_layers": 0, "pretraining_tp": 1, "q_lora_rank": 1536, "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64, "quantization_config": FP8_FORMAT, "rms_norm_eps": 1e-06,
        "rope_theta": 50000.0, "routed_scaling_factor": 2.827, "rope_scaling": K2_YARN,
        "scoring_func": "sigmoid", "seq_aux": True, "tie_word_embeddings": False, "topk_group": 1,
        "topk_method": "noaux_tc", "torch_dtype": "bfloat16", "transformers_version": "4.48.3",
        "use_cache": True, "v_head_dim": 128, "vocab_size": 163840,
    },
    "Moonlight-16B-A3B-Instruct": {
        "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "auto_map": AUTO_MAP, "aux_loss_alpha": 0.001, "bos_token_id": 163584, "eos_token_id": 163586,
        "ep_size": 1, "first_k_dense_replace": 1, "hidden_act": "silu", "hidden_size": 2048,
        "initializer_range": 0.02, "intermediate_size": 11264, "kv_lora_rank": 512,
        "max_position_embeddings": 8192, "model_type": "deepseek_v3", "moe_intermediate_size": 1408,
        "moe_layer_freq": 1, "n_group": 1, "n_routed_experts": 64, "n_shared_experts": 2,
        "norm_topk_prob": True, "num_attention_heads": 16, "num_experts_per_tok": 6, "num_hidden_layers": 27,
        "num_key_value_heads": 16, "num_nextn_predict_layers": 0, "pretraining_tp": 1, "q_lora_rank": None,
        "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "rms_norm_eps": 1e-05, "rope_theta": 50000.0,
        "routed_scaling_factor": 2.446, "scoring_func": "sigmoid", "seq_aux": True,
        "tie_word_embeddings": False, "topk_group": 1, "topk_method": "noaux_tc", "torch_dtype": "bfloat16",
        "transformers_version": "4.46.3", "use_cache": True, "v_head_dim": 128, "vocab_size": 163840,
    },
}


def attention_params(c):
    h, heads = c["hidden_size"], c["num_attention_heads"]
    qk = c["qk_nope_head_dim"] + c["qk_rope_head_dim"]
    q = c["q_lora_rank"]
    n = h * q + q + q * heads * qk if q else h * heads * qk
    n += h * (c["kv_lora_rank"] + c["qk_rope_head_dim"]) + c["kv_lora_rank"]
    n += c["kv_lora_rank"] * heads * (c["qk_nope_head_dim"] + c["v_head_dim"])
    return n + heads * c["v_head_dim"] * h


def moe_layer_params(c, bias):
    """A MoE decoder layer by hand: attention, 2 norms, routed + shared experts, gate (+ bias)."""
    h, e, mi = c["hidden_size"], c["n_routed_experts"], c["moe_intermediate_size"]
    return (attention_params(c) + 2 * h + e * 3 * h * mi + c["n_shared_experts"] * 3 * h * mi + e * h
            + (e if bias else 0))


def count(name, hub):
    v3 = hub["architectures"] == ["DeepseekV3ForCausalLM"]
    with torch.device("meta"):
        model = (DeepseekV3ForCausalLM if v3 else DeepseekV2ForCausalLM)(transformers_config(hub))
    params = dict(model.named_parameters())
    buffers = {n: b for n, b in model.named_buffers() if "e_score_correction_bias" in n}
    total = sum(p.numel() for p in params.values()) + sum(b.numel() for b in buffers.values())
    routed = sum(p.numel() for n, p in params.items() if ".mlp.experts." in n)
    embed = params["model.embed_tokens.weight"].numel()
    moe_layers = [i for i, layer in enumerate(model.model.layers) if hasattr(layer.mlp, "experts")]
    per_expert = 3 * hub["hidden_size"] * hub["moe_intermediate_size"]
    assert routed == len(moe_layers) * hub["n_routed_experts"] * per_expert
    first_moe = moe_layers[0]
    layer_numel = sum(p.numel() for n, p in params.items() if n.startswith(f"model.layers.{first_moe}."))
    layer_numel += sum(b.numel() for n, b in buffers.items() if n.startswith(f"model.layers.{first_moe}."))
    assert layer_numel == moe_layer_params(hub, v3), (name, layer_numel, moe_layer_params(hub, v3))
    h, vocab = hub["hidden_size"], hub["vocab_size"]
    n_mtp = hub.get("num_nextn_predict_layers", 0)
    mtp = n_mtp * (moe_layer_params(hub, v3) + 2 * vocab * h + 2 * h + 2 * h * h + h)
    active = total - routed - embed + len(moe_layers) * hub["num_experts_per_tok"] * per_expert
    return {
        "total_main": total, "mtp": mtp, "active_main": active, "active_main_with_embedding": active + embed,
        "kv_cache_bf16_bytes_per_token": hub["num_hidden_layers"] * (hub["kv_lora_rank"] + hub["qk_rope_head_dim"]) * 2,
        "moe_layers": len(moe_layers), "routed_expert_params": routed, "embed_tokens": embed,
    }


def write_configs():
    for name, cfg in PUBLISHED.items():
        os.makedirs(os.path.join(HERE, "configs", name), exist_ok=True)
        write_json(os.path.join(HERE, "configs", name, "config.json"), cfg)
    counts = {"definitions": {
        "total_main": "every tensor of the main stack as stored: parameters + e_score_correction_bias buffers, "
                      "embed_tokens and lm_head included, MTP layers excluded; DeepseekV3ForCausalLM / "
                      "DeepseekV2ForCausalLM (transformers 5.23.0) built on the meta device, numel summed",
        "mtp": "num_nextn_predict_layers * (MoE decoder layer + embed_tokens + shared_head.head + enorm + hnorm + "
               "eh_proj + shared_head.norm), by hand formula",
        "active_main": "total_main - all routed experts - embed_tokens + num_experts_per_tok routed experts per "
                       "MoE layer (lm_head counted, the embedding lookup not: DeepSeek's definition)",
        "active_main_with_embedding": "active_main + embed_tokens",
        "kv_cache_bf16_bytes_per_token": "num_hidden_layers * (kv_lora_rank + qk_rope_head_dim) * 2",
    }}
    names = ["DeepSeek-V2", "DeepSeek-V2-Lite"] + list(PUBLISHED)
    for name in names:
        hub = json.load(open(os.path.join(HERE, "configs", name, "config.json")))
        counts[name] = count(name, hub)
        c = counts[name]
        print(f"  {name:28s} main {c['total_main'] / 1e9:8.2f}B  mtp {c['mtp'] / 1e9:6.2f}B  "
              f"active {c['active_main'] / 1e9:6.2f}B ({c['active_main_with_embedding'] / 1e9:6.2f}B with "
              f"embedding)  kv {c['kv_cache_bf16_bytes_per_token']} B/token")
    write_json(os.path.join(HERE, "configs", "param-counts.json"), counts)


if __name__ == "__main__":
    torch.set_num_threads(os.cpu_count() or 1)
    steps = sys.argv[1:] or ["v3", "v3-fp8", "kimi", "configs"]
    for step in steps:
        print(f"writing {step}", flush=True)
        if step in FIXTURES:
            write_fixture(step)
        elif step == "v3-fp8":
            write_fp8()
        elif step == "configs":
            write_configs()
        else:
            sys.exit(f"unknown step {step}")
