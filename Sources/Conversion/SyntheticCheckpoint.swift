import DeepSeekModel
import Foundation
import Numerics
import SafeTensors

/// Writes a checkpoint of random weights with a real model's names and shapes, for benchmarks (no
/// Python): DeepSeek-V2-Lite in bf16, or a slice of DeepSeek-V3 as it is published (FP8 E4M3 with
/// 128×128 `weight_scale_inv` for every attention and MLP projection; bf16 embeddings, norms, router
/// and head; F32 `e_score_correction_bias`). Values are deterministic (a counter-based generator per
/// tensor); FP8 codes are never NaN.
public enum SyntheticCheckpoint {
    public enum Shape: Sendable {
        /// V2-Lite: layer 0 dense, the rest MoE with 64 experts. 3 layers ("the lite slice": embed +
        /// 1 dense + 2 MoE + lm_head) is about 3.3 GB; 27 is the full 31 GB model.
        case v2Lite(layers: Int)
        /// V2's real shapes (hidden 5120, 128 heads, q_lora 1536, kv_lora 512, experts of 1536 in 8 groups,
        /// vocab 102400) with `experts` of its 160 routed experts per layer (a multiple of 8): layer 0 dense,
        /// the rest MoE, in bf16. 2 layers with 16 experts is about 3.9 GB: a V2-Lite-sized slice with
        /// query compression, which llama.cpp's deepseek2 loader (and so llama-quantize) requires of every
        /// model but V2-Lite's 26/27 layers.
        case v2(layers: Int, experts: Int)
        /// V3's real shapes (hidden 7168, 128 heads, q_lora 1536, kv_lora 512, 256 experts of 2048 in 8
        /// groups): embed, `dense` dense layers, `moe` MoE layers, lm_head, in FP8. 3 dense + 1 MoE is
        /// about 17 GB; each further MoE layer adds 11.5 GB (the full V3 has 3 + 58, and one MTP layer).
        /// `mtp` multi-token-prediction layers follow, each a MoE layer with its own embedding, head,
        /// norms and `eh_proj` (bf16, as published; 15.3 GB each), as `num_nextn_predict_layers` declares.
        case v3(dense: Int, moe: Int, mtp: Int)

        public var label: String {
            switch self {
            case let .v2Lite(layers): return "DeepSeek-V2-Lite-shaped, \(layers) layers, bf16"
            case let .v2(layers, experts): return "DeepSeek-V2-shaped, \(layers) layers, \(experts) of 160 experts, bf16"
            case let .v3(dense, moe, mtp):
                return "DeepSeek-V3-shaped, \(dense) dense + \(moe) MoE layers\(mtp > 0 ? " + \(mtp) MTP" : ""), FP8 as published"
            }
        }
    }

    /// The slice's `config.json`: the published V2-Lite, V2 or V3 values with the layer (and V2's expert) count cut.
    public static func config(_ shape: Shape) throws -> ConfigDocument {
        let json: String
        switch shape {
        case let .v2Lite(layers):
            json = """
            {"architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2", "attention_bias": false, "bos_token_id": 100000,
             "eos_token_id": 100001, "first_k_dense_replace": 1, "hidden_act": "silu", "hidden_size": 2048, "intermediate_size": 10944,
             "kv_lora_rank": 512, "max_position_embeddings": 163840, "moe_intermediate_size": 1408, "moe_layer_freq": 1,
             "n_group": 1, "n_routed_experts": 64, "n_shared_experts": 2, "norm_topk_prob": false, "num_attention_heads": 16,
             "num_experts_per_tok": 6, "num_hidden_layers": \(layers), "num_key_value_heads": 16, "q_lora_rank": null,
             "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "rms_norm_eps": 1e-06, "rope_theta": 10000,
             "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
                              "original_max_position_embeddings": 4096, "type": "yarn"},
             "routed_scaling_factor": 1.0, "scoring_func": "softmax", "tie_word_embeddings": false, "topk_group": 1,
             "topk_method": "greedy", "torch_dtype": "bfloat16", "v_head_dim": 128, "vocab_size": 102400}
            """
        case let .v2(layers, experts):
            json = """
            {"architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2", "attention_bias": false, "bos_token_id": 100000,
             "eos_token_id": 100001, "first_k_dense_replace": 1, "hidden_act": "silu", "hidden_size": 5120, "intermediate_size": 12288,
             "kv_lora_rank": 512, "max_position_embeddings": 163840, "moe_intermediate_size": 1536, "moe_layer_freq": 1,
             "n_group": 8, "n_routed_experts": \(experts), "n_shared_experts": 2, "norm_topk_prob": false, "num_attention_heads": 128,
             "num_experts_per_tok": 6, "num_hidden_layers": \(layers), "num_key_value_heads": 128, "q_lora_rank": 1536,
             "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "rms_norm_eps": 1e-06, "rope_theta": 10000,
             "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
                              "original_max_position_embeddings": 4096, "type": "yarn"},
             "routed_scaling_factor": 16.0, "scoring_func": "softmax", "tie_word_embeddings": false, "topk_group": 3,
             "topk_method": "group_limited_greedy", "torch_dtype": "bfloat16", "v_head_dim": 128, "vocab_size": 102400}
            """
        case let .v3(dense, moe, mtp):
            json = """
            {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "attention_bias": false, "bos_token_id": 0,
             "eos_token_id": 1, "first_k_dense_replace": \(dense), "hidden_act": "silu", "hidden_size": 7168, "intermediate_size": 18432,
             "kv_lora_rank": 512, "max_position_embeddings": 163840, "moe_intermediate_size": 2048, "moe_layer_freq": 1,
             "n_group": 8, "n_routed_experts": 256, "n_shared_experts": 1, "norm_topk_prob": true, "num_attention_heads": 128,
             "num_experts_per_tok": 8, "num_hidden_layers": \(dense + moe), "num_key_value_heads": 128, "num_nextn_predict_layers": \(mtp),
             "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "rms_norm_eps": 1e-06, "rope_theta": 10000,
             "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                              "original_max_position_embeddings": 4096, "type": "yarn"},
             "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]},
             "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "tie_word_embeddings": false, "topk_group": 4,
             "topk_method": "noaux_tc", "torch_dtype": "bfloat16", "v_head_dim": 128, "vocab_size": 129280}
            """
        }
        return try ConfigDocument(data: Data(json.utf8), path: "synthetic config")
    }

    /// A tensor of the slice as stored: its dtype and how its values are drawn.
    private struct Stored {
        let tensor: ExpectedTensor
        let dtype: DType
        /// Block scales of an FP8 weight: [ceil(rows/128), ceil(cols/128)].
        let isScale: Bool
        var name: String { isScale ? tensor.name + QuantizationConfig.scaleSuffix : tensor.name }
        var shape: [Int] { isScale ? QuantizationConfig.scaleShape(of: tensor.shape, block: 128) : tensor.shape }
    }

    /// Every tensor the slice stores, in the order written, with its dtype and shape.
    static func plan(_ shape: Shape) throws -> [PlannedTensor] {
        try stored(config(shape).model).map { PlannedTensor(name: $0.name, dtype: $0.dtype, shape: $0.shape) }
    }

    private static func stored(_ config: DeepSeekConfig) -> [Stored] {
        let policy = FP8Policy()
        return config.expectedTensors().flatMap { t -> [Stored] in
            // The default policy has no pattern to give up: it cannot throw.
            if config.quantization != nil, (try? policy.shouldQuantize(name: t.name, shape: t.shape)) == true {
                return [Stored(tensor: t, dtype: .f8E4M3, isScale: false), Stored(tensor: t, dtype: .f32, isScale: true)]
            }
            if case .layer(_, .routerBias)? = TensorNames.parse(t.name) { return [Stored(tensor: t, dtype: .f32, isScale: false)] }
            return [Stored(tensor: t, dtype: .bf16, isScale: false)]
        }
    }

    /// Writes the slice; returns the bytes of tensor data written.
    public static func write(_ shape: Shape, output: URL, force: Bool, progress: ((String) -> Void)? = nil) throws -> Int {
        let document = try config(shape)
        let tensors = stored(document.model)
        // Shards of at most 1 GB (V2-Lite) or 5 GB (V3; the published files are ~4.3 GB each), with an index.
        let limit: Int
        switch shape {
        case .v2Lite, .v2: limit = 1_000_000_000
        case .v3: limit = 5_000_000_000
        }
        let layout = CheckpointLayout(tensors: tensors.map { PlannedTensor(name: $0.name, dtype: $0.dtype, shape: $0.shape) }, maxShardSize: limit)
        let directory = try AtomicOutputDirectory(final: output, inputs: [], marker: ConversionManifest.fileName, force: force)
        let writer = CheckpointWriter(layout: layout, directory: directory.temporaryURL)
        var written = 0
        for (i, t) in tensors.enumerated() {
            let bytes = try values(t)
            try writer.write(t.name, bytes: bytes)
            written += bytes.count
            if i % 64 == 0 || i == tensors.count - 1 { progress?("generate: \(i + 1)/\(tensors.count) tensors, \(written / 1_000_000) MB") }
        }
        try writer.finish()
        try AtomicFile.write(document.data, to: directory.temporaryURL.appendingPathComponent("config.json"))
        // A manifest like every other output's, so `--force` may replace this directory later.
        let files = try layout.shards.map { ConversionManifest.FileRecord(name: $0.fileName, bytes: $0.fileSize, sha256: try writer.waitForSHA256(of: $0.fileName)) }
        var options: [String: String]
        switch shape {
        case let .v2Lite(layers): options = ["layers": String(layers)]
        case let .v2(layers, experts): options = ["shape": "v2", "layers": String(layers), "experts": String(experts)]
        case let .v3(dense, moe, mtp): options = ["shape": "v3", "dense_layers": String(dense), "moe_layers": String(moe), "mtp_layers": String(mtp)]
        }
        let stage = ConversionManifest.Stage(stage: .generate, options: options, input: "synthetic")
        try AtomicFile.write(try ConversionManifest(stages: [stage], files: files).encoded(), to: directory.temporaryURL.appendingPathComponent(ConversionManifest.fileName))
        try directory.commit()
        return written
    }

    /// The little-endian bytes of one stored tensor: bf16 weights ~U(-1, 1)/sqrt(fan-in), norms 1 ± 0.1,
    /// FP8 codes uniform over the finite E4M3 codes, scales ~1e-3 · (1 ± 0.5), the router bias ± 0.05.
    private static func values(_ t: Stored) throws -> [UInt8] {
        let count = try CheckedSize.product(t.shape, of: "the element count of '\(t.name)' \(t.shape)")
        let size = t.dtype.byteSize!
        var out = [UInt8](repeating: 0, count: count * size)
        let seed = t.name.utf8.reduce(UInt64(14695981039346656037)) { ($0 ^ UInt64($1)) &* 1099511628211 }
        let isNorm = t.tensor.shape.count == 1
        let scale = isNorm ? 0 : 1 / Float(t.tensor.shape[t.tensor.shape.count - 1]).squareRoot()
        let dtype = t.dtype, isScale = t.isScale
        out.withUnsafeMutableBytes { raw in
            let base = SharedPointer(raw.baseAddress!.assumingMemoryBound(to: UInt8.self))
            let chunk = 1 << 16
            Parallel.forEach((count + chunk - 1) / chunk) { c in
                var state = seed &+ UInt64(c) &* 0x9E37_79B9_7F4A_7C15
                for j in (c * chunk)..<min(count, (c + 1) * chunk) {
                    state ^= state << 13; state ^= state >> 7; state ^= state << 17
                    let unit = Float(Int32(truncatingIfNeeded: state >> 32)) / Float(Int32.max)
                    switch dtype {
                    case .f8E4M3:
                        let code = UInt8(truncatingIfNeeded: state >> 24)
                        base.pointer[j] = code & 0x7F == 0x7F ? code & 0xFE : code  // 0x7F/0xFF are NaN
                    case .f32:
                        let value = isScale ? 1e-3 * (1 + 0.5 * unit) : 0.05 * unit
                        withUnsafeBytes(of: value.bitPattern.littleEndian) { for b in 0..<4 { base.pointer[4 * j + b] = $0[b] } }
                    default:
                        let bits = FloatConversion.floatToBF16(isNorm ? 1 + 0.1 * unit : scale * unit)
                        base.pointer[2 * j] = UInt8(truncatingIfNeeded: bits)
                        base.pointer[2 * j + 1] = UInt8(truncatingIfNeeded: bits >> 8)
                    }
                }
            }
        }
        return out
    }
}
