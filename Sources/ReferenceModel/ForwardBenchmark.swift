import COpenBLAS
import DeepSeekModel
import Foundation
import Synchronization

/// Weights held in memory, generated deterministically from each tensor's name: for benchmarks and
/// tests that need a model of real width without a checkpoint on disk.
public final class SyntheticWeights: WeightProvider {
    /// Generated once per name and kept, so timed runs measure compute, not generation.
    private let cache = Mutex<[String: [Float]]>([:])
    /// With a pool of P, routed expert j of every layer uses the values of expert j % P: the same
    /// products (shapes and FLOPs) as distinct experts, in the memory of P (V3's 256 experts of
    /// 2048 x 7168 would take 45 GB per layer in fp32).
    private let expertPool: Int?
    public var label: String { "synthetic" }
    public init(expertPool: Int? = nil) { self.expertPool = expertPool }

    public func floats(_ name: String, shape: [Int]) throws -> [Float] {
        var name = name
        if let pool = expertPool, case let .expert(_, j, projection)? = TensorNames.parse(name) {
            name = "pooled expert \(j % pool) \(projection.rawValue)"
        }
        return cache.withLock { cache in
            if let values = cache[name] { return values }
            var state = name.utf8.reduce(UInt64(1469598103934665603)) { ($0 ^ UInt64($1)) &* 1099511628211 }
            let count = shape.reduce(1, *)
            // Uniform with the variance of N(0, 1/fan_in) for matrices; gains around 1 for norms.
            let scale: Float = shape.count == 2 ? Float(3.0 / Double(max(shape[1], 1))).squareRoot() : 0.5
            let offset: Float = shape.count == 2 ? 0 : 1
            let values = (0..<count).map { _ -> Float in
                state = state &* 6364136223846793005 &+ 1442695040888963407
                let unit = Float(state >> 40) / Float(1 << 24) * 2 - 1
                return offset + scale * unit
            }
            cache[name] = values
            return values
        }
    }

    public func release(_ name: String) {}
}

/// Multiply-adds of one forward pass as `ReferenceForward` executes it (full S×S score products).
public enum ForwardCost {
    /// - Parameter routedTokenExperts: (token, expert) selections summed over all MoE layers.
    public static func flops(config c: DeepSeekConfig, batch: Int, seq: Int, routedTokenExperts: Int) -> Double {
        let t = Double(batch * seq), h = Double(c.hiddenSize), heads = Double(c.numAttentionHeads)
        let dq = Double(c.qkHeadDim), dv = Double(c.vHeadDim), kvl = Double(c.kvLoraRank), rope = Double(c.qkRopeHeadDim)
        var macs = 0.0
        for layer in 0..<c.numHiddenLayers {
            if let ql = c.qLoraRank { macs += t * (h * Double(ql) + Double(ql) * heads * dq) } else { macs += t * h * heads * dq }
            macs += t * h * (kvl + rope) + t * kvl * heads * (Double(c.qkNopeHeadDim) + dv) + t * heads * dv * h
            macs += Double(batch) * heads * Double(seq * seq) * (dq + dv)
            if c.isMoELayer(layer) {
                let m = Double(c.moeIntermediateSize)
                macs += t * h * Double(c.nRoutedExperts ?? 0)
                macs += t * 3 * h * m * Double(c.nSharedExperts ?? 0)
            } else {
                macs += t * 3 * h * Double(c.intermediateSize)
            }
        }
        // Every (token, expert) selection over all MoE layers runs one expert MLP.
        macs += Double(routedTokenExperts) * 3 * h * Double(c.moeIntermediateSize)
        macs += t * h * Double(c.vocabSize)
        return 2 * macs
    }
}

/// The forward pass's throughput next to plain `cblas_sgemm` in the same process.
public enum ForwardBenchmark {
    /// Every timed run, so the caller reports the median and spread (a best-of-N hides the spread).
    public struct Result: Sendable {
        public var tokens: Int
        /// Seconds of each timed forward pass.
        public var forwardSeconds: [Double]
        /// FLOPs of one forward pass, as executed.
        public var forwardFLOPs: Double
        public var sgemmShape: (m: Int, n: Int, k: Int)
        /// Seconds of each timed sgemm of `sgemmShape`.
        public var sgemmSeconds: [Double]
        public var threads: Int
        /// OpenBLAS's build and the kernels it runs (`BLASCore`).
        public var blas: String

        public var sgemmFLOPs: Double { 2 * Double(sgemmShape.m * sgemmShape.n * sgemmShape.k) }
    }

    /// A V2-Lite-width model of one dense and one MoE layer (64 experts, top-6, 2 shared), vocabulary
    /// 2048 so the lm_head does not dominate the count.
    public static func liteWidthConfig() throws -> DeepSeekConfig {
        let json = """
        {"architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2", "vocab_size": 2048, "hidden_size": 2048,
         "intermediate_size": 10944, "moe_intermediate_size": 1408, "num_hidden_layers": 2, "num_attention_heads": 16,
         "q_lora_rank": null, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
         "n_routed_experts": 64, "n_shared_experts": 2, "num_experts_per_tok": 6, "first_k_dense_replace": 1,
         "topk_method": "greedy", "n_group": 1, "topk_group": 1, "routed_scaling_factor": 1.0, "rope_theta": 10000,
         "rope_scaling": {"type": "yarn", "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
                          "original_max_position_embeddings": 4096, "beta_fast": 32, "beta_slow": 1}}
        """
        return try DeepSeekConfig.decode(Data(json.utf8), path: "synthetic V2-Lite-width config")
    }

    /// A DeepSeek-V3-width model of one dense and one MoE layer: hidden 7168, 128 heads, q_lora 1536,
    /// kv_lora 512, 256 experts of 2048 in 8 groups (top-4 groups, top-8, noaux_tc), 1 shared; vocabulary
    /// 2048. At 512 tokens each expert sees ~16 tokens: the small products of a V3 check.
    public static func v3WidthConfig() throws -> DeepSeekConfig {
        let json = """
        {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "vocab_size": 2048, "hidden_size": 7168,
         "intermediate_size": 18432, "moe_intermediate_size": 2048, "num_hidden_layers": 2, "num_attention_heads": 128,
         "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
         "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 8, "first_k_dense_replace": 1,
         "topk_method": "noaux_tc", "scoring_func": "sigmoid", "n_group": 8, "topk_group": 4, "norm_topk_prob": true,
         "routed_scaling_factor": 2.5, "rope_theta": 10000, "num_nextn_predict_layers": 0,
         "rope_scaling": {"type": "yarn", "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                          "original_max_position_embeddings": 4096, "beta_fast": 32, "beta_slow": 1}}
        """
        return try DeepSeekConfig.decode(Data(json.utf8), path: "synthetic V3-width config")
    }

    /// The model shapes the benchmark runs.
    public enum Shape: String, Sendable { case v2Lite = "v2-lite", v3 }

    public static func run(batch: Int, seq: Int, repeats: Int, shape: Shape = .v2Lite) throws -> Result {
        let config: DeepSeekConfig
        let weights: SyntheticWeights
        switch shape {
        case .v2Lite: (config, weights) = (try liteWidthConfig(), SyntheticWeights())
        case .v3: (config, weights) = (try v3WidthConfig(), SyntheticWeights(expertPool: 8))
        }
        let forward = ReferenceForward(config: config, weights: weights)
        let tokens = TokenFile.deterministicSample(vocabSize: config.vocabSize, batch: batch, length: seq)
        // The synthetic tokens' label: what the token checks name if --batch/--seq ask too much.
        let source = "benchmark tokens (--batch \(batch) --seq \(seq))"
        let warm = try forward.run(tokens: tokens, source: source)  // generates and caches the weights
        let routed = warm.routing.reduce(0) { $0 + $1.experts.count }
        let forwardSeconds = try (0..<repeats).map { _ in try time { _ = try forward.run(tokens: tokens, source: source) } }
        let flops = ForwardCost.flops(config: config, batch: batch, seq: seq, routedTokenExperts: routed)

        let (m, n, k) = (batch * seq, config.hiddenSize, config.hiddenSize)
        let sgemmSeconds = sgemm(m: m, n: n, k: k, repeats: max(repeats, 3))
        return Result(tokens: batch * seq, forwardSeconds: forwardSeconds, forwardFLOPs: flops, sgemmShape: (m, n, k),
                      sgemmSeconds: sgemmSeconds, threads: Int(openblas_get_num_threads()), blas: BLASCore.selection.description)
    }

    /// Seconds of each of `repeats` plain `cblas_sgemm` products [m, k] · [n, k]ᵀ, the reference the
    /// benchmarks put the forward pass's GFLOP/s beside.
    public static func sgemm(m: Int, n: Int, k: Int, repeats: Int) -> [Double] {
        let a = [Float](repeating: 0.5, count: m * k), b = [Float](repeating: 0.25, count: n * k)
        var c = [Float](repeating: 0, count: m * n)
        return (0..<repeats).map { _ in
            time {
                a.withUnsafeBufferPointer { ap in b.withUnsafeBufferPointer { bp in c.withUnsafeMutableBufferPointer { cp in
                    Linear.forward(ap.baseAddress!, rows: m, inFeatures: k, weight: bp.baseAddress!, outFeatures: n, into: cp.baseAddress!)
                } } }
            }
        }
    }

    private static func time(_ body: () throws -> Void) rethrows -> Double {
        let start = DispatchTime.now().uptimeNanoseconds
        try body()
        return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    }
}
