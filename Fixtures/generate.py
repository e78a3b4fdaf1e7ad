#!/usr/bin/env python3
"""Writes the tiny DeepSeek-V2 fixture checkpoints and their transformers goldens.

Run by hand (not by CI), with the versions pinned in requirements.txt:

    pip install -r Fixtures/requirements.txt
    python3 Fixtures/generate.py            # every fixture
    python3 Fixtures/generate.py trained    # one fixture

Each fixture directory holds a bf16 multi-shard checkpoint in the hub layout (config.json with
rope_theta + rope_scaling, model.safetensors.index.json, model-0000i-of-0000N.safetensors), the
token ids it was run on (tokens.json), and golden.safetensors from transformers'
DeepseekV2ForCausalLM run in float32 on those bf16 weights:
  logits                  F32 [batch, seq, vocab]
  hidden_states.{i}       F32 [batch, seq, hidden], i = 0..num_hidden_layers, as transformers'
                          output_hidden_states: 0 is the embedding output, i the output of layer
                          i-1; the last one is after the final norm (model.norm), as transformers returns it.
  routing.{layer}.experts I32 [batch, seq, k], each token's selected experts, ascending
  routing.{layer}.weights F32 [batch, seq, k], their weights (after routed_scaling_factor)
"""
import json
import math
import os
import shutil
import sys
import time

import torch
from safetensors.torch import save_file
from transformers import DeepseekV2Config, DeepseekV2ForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
YARN = {"type": "yarn", "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
        "original_max_position_embeddings": 4096, "beta_fast": 32, "beta_slow": 1}

# The hub's config.json keys (DeepSeek-V2 / V2-Lite files), filled per fixture.
def hub_config(**dims):
    cfg = {
        "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
        "attention_bias": False, "attention_dropout": 0.0, "aux_loss_alpha": 0.001,
        "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1, "hidden_act": "silu",
        "initializer_range": 0.02, "max_position_embeddings": 163840, "moe_layer_freq": 1,
        "norm_topk_prob": False, "num_key_value_heads": dims["num_attention_heads"],
        "pretraining_tp": 1, "rms_norm_eps": 1e-6, "rope_theta": 10000, "rope_scaling": None,
        "scoring_func": "softmax", "seq_aux": True, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "use_cache": True,
    }
    cfg.update(dims)
    return cfg

FIXTURES = {
    # V2-Lite-shaped: no query compression, greedy routing, v_head_dim != qk_nope_head_dim.
    "lite": hub_config(vocab_size=320, hidden_size=64, intermediate_size=160, moe_intermediate_size=32,
                       num_hidden_layers=3, num_attention_heads=4, q_lora_rank=None, kv_lora_rank=32,
                       qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12, n_routed_experts=8,
                       n_shared_experts=2, num_experts_per_tok=2, first_k_dense_replace=1,
                       topk_method="greedy", n_group=1, topk_group=1, routed_scaling_factor=1.0),
    # V2-shaped: query compression, group-limited routing (8 groups, top-3), YaRN with mscale, scaling 16.
    "v2": hub_config(vocab_size=384, hidden_size=96, intermediate_size=192, moe_intermediate_size=24,
                     num_hidden_layers=3, num_attention_heads=4, q_lora_rank=48, kv_lora_rank=32,
                     qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=16,
                     n_shared_experts=2, num_experts_per_tok=4, first_k_dense_replace=1,
                     topk_method="group_limited_greedy", n_group=8, topk_group=3,
                     routed_scaling_factor=16.0, rope_scaling=YARN),
    # FP8-sized: some dimensions multiples of 128, others leaving partial 128-blocks.
    "fp8": hub_config(vocab_size=500, hidden_size=320, intermediate_size=384, moe_intermediate_size=192,
                      num_hidden_layers=2, num_attention_heads=2, q_lora_rank=200, kv_lora_rank=128,
                      qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64, n_routed_experts=4,
                      n_shared_experts=1, num_experts_per_tok=2, first_k_dense_replace=1,
                      topk_method="greedy", n_group=1, topk_group=1, routed_scaling_factor=1.0,
                      rope_scaling=YARN),
    # Trained on CPU on byte-level English; drift thresholds are calibrated on this one.
    "trained": hub_config(vocab_size=256, hidden_size=128, intermediate_size=384, moe_intermediate_size=64,
                          num_hidden_layers=4, num_attention_heads=4, q_lora_rank=96, kv_lora_rank=64,
                          qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, n_routed_experts=16,
                          n_shared_experts=2, num_experts_per_tok=4, first_k_dense_replace=1,
                          topk_method="group_limited_greedy", n_group=8, topk_group=3,
                          routed_scaling_factor=1.0, rope_scaling=YARN),
    # Trained like "trained", with DeepSeek-V2-Lite's MLA proportions: no query compression, a latent
    # half the hidden size (L = 128 >= 128), R = L/8 (k_pe 11% of a cache entry, as in V2 and V2-Lite),
    # heads x qk_nope = hidden, greedy routing. The KV-cache formats are measured on both.
    "trained-wide": hub_config(vocab_size=256, hidden_size=256, intermediate_size=512, moe_intermediate_size=32,
                               num_hidden_layers=4, num_attention_heads=4, q_lora_rank=None, kv_lora_rank=128,
                               qk_nope_head_dim=64, qk_rope_head_dim=16, v_head_dim=64, n_routed_experts=16,
                               n_shared_experts=2, num_experts_per_tok=4, first_k_dense_replace=1,
                               topk_method="greedy", n_group=1, topk_group=1,
                               routed_scaling_factor=1.0, rope_scaling=YARN),
}
SHARD_SIZE = {"lite": "100KB", "v2": "100KB", "fp8": "1MB", "trained": "1MB", "trained-wide": "2MB"}
TRAINED = ("trained", "trained-wide")

LICENSES = "/usr/share/common-licenses"
HELDOUT_FILE = "MPL-2.0"
# Calibration text for quantize --kv6: 8 x 256 bytes of the GPL-3 (part of the training text), every 4 KiB from 2000.
CALIBRATION_FILE, CALIBRATION_START, CALIBRATION_STRIDE = "GPL-3", 2000, 4096


def transformers_config(hub):
    """The same config as transformers 5 spells it (rope_parameters)."""
    cfg = {k: v for k, v in hub.items() if k not in ("rope_scaling", "rope_theta", "architectures", "model_type",
                                                   "torch_dtype", "aux_loss_alpha", "seq_aux", "ep_size",
                                                   "scoring_func", "moe_layer_freq")}
    params = {"rope_theta": float(hub["rope_theta"]), "rope_type": "default"}
    if hub["rope_scaling"]:
        params = dict(hub["rope_scaling"])
        params["rope_type"] = params.pop("type")
        params["rope_theta"] = float(hub["rope_theta"])
    cfg["rope_parameters"] = params
    return DeepseekV2Config(**cfg)


def training_text():
    names = sorted(n for n in os.listdir(LICENSES) if n != HELDOUT_FILE and not os.path.islink(os.path.join(LICENSES, n)))
    return b"\n".join(open(os.path.join(LICENSES, n), "rb").read() for n in names)


def train(model, seconds):
    data = torch.tensor(list(training_text()), dtype=torch.long)
    torch.manual_seed(1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    seq, batch, step, start = 128, 16, 0, time.time()
    model.train()
    while time.time() - start < seconds:
        idx = torch.randint(0, len(data) - seq - 1, (batch,))
        x = torch.stack([data[i:i + seq] for i in idx])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 50 == 0:
            print(f"  step {step} loss {loss.item():.3f} ({time.time() - start:.0f}s)", flush=True)
    model.eval()
    return step


def randomize(model):
    """Random weights larger than the 0.02 init, so activations are not all near zero, still stable:
    matrices N(0, 1/fan_in), vectors (norm gains) U(0.5, 1.5)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 1.0 / math.sqrt(p.shape[1]))
            else:
                p.uniform_(0.5, 1.5)


def capture_routing(model):
    records = {}
    def hook(layer):
        def fn(_module, _inputs, output):
            _, weights, indices = output
            order = indices.argsort(dim=-1)
            records[layer] = (indices.gather(-1, order), weights.gather(-1, order))
        return fn
    handles = []
    for i, block in enumerate(model.model.layers):
        gate = getattr(block.mlp, "gate", None)
        if gate is not None and hasattr(gate, "topk_method"):
            handles.append(gate.register_forward_hook(hook(i)))
    return records, handles


def write(name):
    hub = FIXTURES[name]
    out = os.path.join(HERE, name)
    shutil.rmtree(out, ignore_errors=True)
    torch.manual_seed({"lite": 11, "v2": 22, "fp8": 33, "trained": 44, "trained-wide": 55}[name])
    model = DeepseekV2ForCausalLM(transformers_config(hub)).float()
    if name in TRAINED:
        steps = train(model, float(os.environ.get("TRAIN_SECONDS", "240")))
        print(f"  trained {steps} steps")
    else:
        randomize(model)
    model = model.to(torch.bfloat16)
    model.save_pretrained(out, max_shard_size=SHARD_SIZE[name])
    # Replace transformers' config with the hub layout real DeepSeek checkpoints ship.
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(hub, f, indent=2)
        f.write("\n")
    for extra in ("generation_config.json",):
        path = os.path.join(out, extra)
        if os.path.exists(path):
            os.remove(path)

    # Goldens: transformers loads the bf16 files we just wrote (hub config) and runs in fp32.
    reloaded = DeepseekV2ForCausalLM.from_pretrained(out, dtype=torch.float32)
    reloaded.eval()
    if name in TRAINED:
        held = open(os.path.join(LICENSES, HELDOUT_FILE), "rb").read()[:4096]
        with open(os.path.join(out, "heldout.txt"), "wb") as f:
            f.write(held)
        tokens = [list(held[0:64]), list(held[1024:1088])]
        with open(os.path.join(out, "heldout.json"), "w") as f:
            json.dump({"tokens": [list(held[i:i + 256]) for i in range(0, 4096, 256)]}, f)
            f.write("\n")
        calibration = open(os.path.join(LICENSES, CALIBRATION_FILE), "rb").read()
        with open(os.path.join(out, "calibration.json"), "w") as f:
            starts = [CALIBRATION_START + CALIBRATION_STRIDE * i for i in range(8)]
            json.dump({"tokens": [list(calibration[s:s + 256]) for s in starts]}, f)
            f.write("\n")
    else:
        g = torch.Generator().manual_seed(7)
        tokens = torch.randint(0, hub["vocab_size"], (2, 16), generator=g).tolist()
    with open(os.path.join(out, "tokens.json"), "w") as f:
        json.dump({"tokens": tokens}, f)
        f.write("\n")
    records, handles = capture_routing(reloaded)
    with torch.no_grad():
        result = reloaded(torch.tensor(tokens), output_hidden_states=True)
    for h in handles:
        h.remove()
    golden = {"logits": result.logits.float().contiguous()}
    for i, hs in enumerate(result.hidden_states):
        golden[f"hidden_states.{i}"] = hs.float().contiguous()
    b, s = len(tokens), len(tokens[0])
    for layer, (experts, weights) in records.items():
        golden[f"routing.{layer}.experts"] = experts.view(b, s, -1).to(torch.int32).contiguous()
        golden[f"routing.{layer}.weights"] = weights.view(b, s, -1).float().contiguous()
    save_file(golden, os.path.join(out, "golden.safetensors"), metadata={"format": "pt", "transformers": "5.23.0"})
    if name in TRAINED:
        held_tokens = json.load(open(os.path.join(out, "heldout.json")))["tokens"]
        with torch.no_grad():
            loss = reloaded(torch.tensor(held_tokens), labels=torch.tensor(held_tokens)).loss.item()
        print(f"  held-out perplexity {math.exp(loss):.3f} (bf16 weights, fp32 compute)")
        with open(os.path.join(out, "heldout-perplexity.json"), "w") as f:
            json.dump({"perplexity": math.exp(loss), "nll_nats_per_token": loss, "source": "transformers 5.23.0, fp32 compute"}, f, indent=2)
            f.write("\n")
    print(f"{name}: {sum(p.numel() for p in reloaded.parameters())} parameters -> {out}")


def write_real_configs():
    common = dict(max_position_embeddings=163840, bos_token_id=100000, eos_token_id=100001,
                  rope_scaling=YARN, vocab_size=102400, kv_lora_rank=512, qk_nope_head_dim=128,
                  qk_rope_head_dim=64, v_head_dim=128, n_shared_experts=2, num_experts_per_tok=6,
                  first_k_dense_replace=1)
    real = {
        "DeepSeek-V2": hub_config(hidden_size=5120, intermediate_size=12288, moe_intermediate_size=1536,
                                  num_hidden_layers=60, num_attention_heads=128, q_lora_rank=1536,
                                  n_routed_experts=160, topk_method="group_limited_greedy", n_group=8,
                                  topk_group=3, routed_scaling_factor=16.0, **common),
        "DeepSeek-V2-Lite": hub_config(hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408,
                                       num_hidden_layers=27, num_attention_heads=16, q_lora_rank=None,
                                       n_routed_experts=64, topk_method="greedy", n_group=1, topk_group=1,
                                       routed_scaling_factor=1.0, **common),
    }
    for name, cfg in real.items():
        os.makedirs(os.path.join(HERE, "configs", name), exist_ok=True)
        with open(os.path.join(HERE, "configs", name, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    torch.set_num_threads(os.cpu_count() or 1)
    names = sys.argv[1:] or ["lite", "v2", "fp8", "trained", "trained-wide"]
    write_real_configs()
    for n in names:
        print(f"writing {n}", flush=True)
        write(n)
