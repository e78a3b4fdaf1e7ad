import DeepSeekModel
import Foundation
import Numerics
import SafeTensors

/// Writes a DeepSeek-V2-Lite-shaped checkpoint of random bf16 weights for benchmarks (no Python).
///
/// Real V2-Lite names and per-layer shapes: layer 0 dense, layers 1… MoE with 64 experts. With
/// `layers` 3 ("the lite slice": embed + 1 dense + 2 MoE + lm_head) it is about 3.3 GB; with 27 it
/// is the full 31 GB model. Values are deterministic (a counter-based generator per tensor).
public enum SyntheticCheckpoint {
    public static func liteConfig(layers: Int) throws -> (DeepSeekConfig, JSONValue) {
        let json = """
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
        let data = Data(json.utf8)
        return (try DeepSeekConfig.decode(data, path: "synthetic config"), try JSONParser.parse(data))
    }

    public static func write(layers: Int, output: URL, force: Bool, progress: ((String) -> Void)? = nil) throws -> Int {
        let (config, raw) = try liteConfig(layers: layers)
        let tensors = config.expectedTensors()
        // 1 GB shards, so the output is sharded with an index like the hub's checkpoints.
        let layout = CheckpointLayout(tensors: tensors.map { PlannedTensor(name: $0.name, dtype: .bf16, shape: $0.shape) }, maxShardSize: 1_000_000_000)
        let directory = try AtomicOutputDirectory(final: output, inputs: [], marker: ConversionManifest.fileName, force: force)
        let writer = CheckpointWriter(layout: layout, directory: directory.temporaryURL)
        var written = 0
        for (i, tensor) in tensors.enumerated() {
            let count = try tensor.elementCount()
            var values = [UInt16](repeating: 0, count: count)
            let seed = tensor.name.utf8.reduce(UInt64(14695981039346656037)) { ($0 ^ UInt64($1)) &* 1099511628211 }
            let isNorm = tensor.shape.count == 1
            let scale = isNorm ? 0 : 1 / Float(tensor.shape[1]).squareRoot()
            values.withUnsafeMutableBufferPointer { buffer in
                let out = SharedPointer(buffer.baseAddress!)
                let chunk = 1 << 16
                Parallel.forEach((count + chunk - 1) / chunk) { c in
                    var state = seed &+ UInt64(c) &* 0x9E37_79B9_7F4A_7C15
                    for j in (c * chunk)..<min(count, (c + 1) * chunk) {
                        state ^= state << 13; state ^= state >> 7; state ^= state << 17
                        let unit = Float(Int32(truncatingIfNeeded: state >> 32)) / Float(Int32.max)
                        out.pointer[j] = FloatConversion.floatToBF16(isNorm ? 1 + 0.1 * unit : scale * unit)
                    }
                }
            }
            try writer.write(tensor.name, bytes: values.withUnsafeBytes { Array($0) })
            written += count * 2
            if i % 64 == 0 || i == tensors.count - 1 { progress?("generate: \(i + 1)/\(tensors.count) tensors, \(written / 1_000_000) MB") }
        }
        try writer.finish()
        try AtomicFile.write(ConfigDocument.data(raw), to: directory.temporaryURL.appendingPathComponent("config.json"))
        // A manifest like every other output's, so `--force` may replace this directory later.
        let files = try layout.shards.map { ConversionManifest.FileRecord(name: $0.fileName, bytes: $0.fileSize, sha256: try writer.waitForSHA256(of: $0.fileName)) }
        let stage = ConversionManifest.Stage(stage: "generate", options: ["layers": String(layers)], input: "synthetic")
        try AtomicFile.write(try ConversionManifest(stages: [stage], files: files).encoded(), to: directory.temporaryURL.appendingPathComponent(ConversionManifest.fileName))
        try directory.commit()
        return written
    }
}
