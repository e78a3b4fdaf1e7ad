import COpenBLAS
import DeepSeekModel
import Foundation
import Numerics
import SafeTensors
import Synchronization

/// Weights held in memory, generated deterministically from each tensor's name: for benchmarks and
/// tests that need a model of real width without a checkpoint on disk.
///
/// Matrices are kept in the dtype a published checkpoint stores them in (`Storage`) and widened on
/// every use into the forward pass's buffers, as `validate` widens a mapped checkpoint's weights: the
/// benchmark times that work too, not only the products.
public final class SyntheticWeights: WeightProvider {
    /// How matrices are stored: fp32, bf16 (DeepSeek-V2's files) or FP8 E4M3 with 128 x 128 block
    /// scales (DeepSeek-V3's). Vectors (norm gains, the router bias) are fp32.
    public enum Storage: Sendable { case f32, bf16, fp8 }

    private enum Stored {
        case f32([Float])
        case bf16([UInt16])
        case fp8(codes: [UInt8], scales: [Float])
    }

    /// Generated once per name and kept, so timed runs measure the forward pass, not generation.
    private let cache = Mutex<[String: Stored]>([:])
    /// With a pool of P, routed expert j of every layer uses the values of expert j % P: the same
    /// products (shapes and FLOPs) as distinct experts, in the memory of P (V3's 256 experts of
    /// 2048 x 7168 would take 11 GB per layer even in FP8).
    private let expertPool: Int?
    private let storage: Storage
    private static let quantizer = FP8BlockQuantizer(format: .e4m3, block: 128)
    public var label: String { "synthetic" }
    /// - Parameters:
    ///   - expertPool: routed expert j uses expert j % pool's values (nil: every expert its own).
    ///   - storage: the dtype matrices are kept in and widened from on every use.
    public init(expertPool: Int? = nil, storage: Storage = .f32) {
        self.expertPool = expertPool
        self.storage = storage
    }

    public func floats(_ name: String, shape: [Int]) throws -> [Float] {
        let count = shape.reduce(1, *)
        var out = [Float](repeating: 0, count: count)
        try out.withUnsafeMutableBufferPointer { try floats(name, shape: shape, into: $0) }
        return out
    }

    public func floats(_ name: String, shape: [Int], into destination: UnsafeMutableBufferPointer<Float>) throws {
        let count = shape.reduce(1, *)
        precondition(destination.count >= count, "destination smaller than \(name)")
        switch storedForm(name, shape: shape) {
        case let .f32(values):
            _ = destination.initialize(from: values)
        case let .bf16(bits):
            // On every core, as a checkpoint's bf16 weights are widened (`TensorView.widen`).
            _ = bits.withUnsafeBytes { TensorView.widen($0, dtype: .bf16, count: count, into: destination) }
        case let .fp8(codes, scales):
            _ = codes.withUnsafeBufferPointer { cp in scales.withUnsafeBufferPointer { sp in
                Self.quantizer.dequantize(codes: cp.baseAddress!, scales: sp.baseAddress!, rows: shape[0], cols: count / shape[0],
                                          into: destination.baseAddress!, streaming: count >= FloatConversion.streamingMinimumCount)
            } }
        }
    }

    /// Matrices as stored, so the routed experts multiply them as they do a checkpoint's.
    public func stored(_ name: String, shape: [Int]) throws -> StoredWeight? {
        guard shape.count == 2 else { return nil }
        let rows = shape[0], cols = shape[1]
        // The quantizer never writes a NaN code nor a scale that overflows, so a flag here is a defect of this class.
        let flagged: () throws -> Never = {
            throw ReferenceModelError.unreadableTensor(file: "synthetic", tensor: name, reason: "a NaN code or a product that overflows f32")
        }
        switch storedForm(name, shape: shape) {
        case .f32: return nil
        case let .bf16(bits):
            return StoredWeight(rows: rows, cols: cols, elements: .bf16, lend: { body in
                bits.withUnsafeBytes { body($0.baseAddress!, nil) }
            }, flagged: flagged)
        case let .fp8(codes, scales):
            return StoredWeight(rows: rows, cols: cols, elements: .fp8(Self.quantizer.format), block: Self.quantizer.block, lend: { body in
                codes.withUnsafeBytes { cp in scales.withUnsafeBufferPointer { body(cp.baseAddress!, $0.baseAddress!) } }
            }, flagged: flagged)
        }
    }

    /// Rows of the embedding or the head: only those rows are widened (both are bf16 under FP8
    /// storage, as in DeepSeek-V3's files).
    public func rows(_ name: String, shape: [Int], range: Range<Int>, into destination: UnsafeMutableBufferPointer<Float>) throws {
        let width = shape[1], count = range.count * width
        precondition(destination.count >= count, "destination smaller than rows of \(name)")
        switch storedForm(name, shape: shape) {
        case let .f32(values):
            _ = destination.initialize(from: values[(range.lowerBound * width)..<(range.upperBound * width)])
        case let .bf16(bits):
            bits.withUnsafeBufferPointer { FloatConversion.bf16ToFloat($0.baseAddress! + range.lowerBound * width, destination.baseAddress!, count: count) }
        case .fp8:
            let whole = try floats(name, shape: shape)
            _ = destination.initialize(from: whole[(range.lowerBound * width)..<(range.upperBound * width)])
        }
    }

    public func rows(_ name: String, shape: [Int], range: Range<Int>) throws -> [Float] {
        var out = [Float](repeating: 0, count: range.count * shape[1])
        try out.withUnsafeMutableBufferPointer { try rows(name, shape: shape, range: range, into: $0) }
        return out
    }

    private func storedForm(_ name: String, shape: [Int]) -> Stored {
        var key = name
        if let pool = expertPool, case let .expert(_, j, projection)? = TensorNames.parse(name) {
            key = "pooled expert \(j % pool) \(projection.rawValue)"
        }
        if let hit = cache.withLock({ $0[key] }) { return hit }
        var values = Self.generate(key, shape: shape)
        // V3's e_score_correction_bias is trained to balance the experts' load. Generated like a gain
        // (0.5-1.5, against sigmoid scores below 1) it sent 512 tokens to ~60 of 256 experts, 67 rows
        // each, not the ~16 of a trained model; zero leaves the random router's own, near-even load.
        if case .layer(_, .routerBias)? = TensorNames.parse(name) { values = [Float](repeating: 0, count: values.count) }
        let stored: Stored
        // DeepSeek-V3's FP8 files keep the embedding and the head in bf16.
        let vocabularySized = name == TensorNames.embedding || name == TensorNames.lmHead
        switch (shape.count, storage) {
        case (2, .bf16),
             (2, .fp8) where vocabularySized:
            var bits = [UInt16](repeating: 0, count: values.count)
            values.withUnsafeBufferPointer { vp in bits.withUnsafeMutableBufferPointer { FloatConversion.floatToBF16(vp.baseAddress!, $0.baseAddress!, count: values.count) } }
            stored = .bf16(bits)
        case (2, .fp8):
            let (codes, scales) = values.withUnsafeBufferPointer { Self.quantizer.quantize($0.baseAddress!, rows: shape[0], cols: shape[1]) }
            stored = .fp8(codes: codes, scales: scales)
        default:
            stored = .f32(values)
        }
        cache.withLock { $0[key] = stored }
        return stored
    }

    /// Uniform with the variance of N(0, 1/fan_in) for matrices; gains around 1 for vectors.
    private static func generate(_ key: String, shape: [Int]) -> [Float] {
        var state = key.utf8.reduce(UInt64(1469598103934665603)) { ($0 ^ UInt64($1)) &* 1099511628211 }
        let count = shape.reduce(1, *)
        let scale: Float = shape.count == 2 ? Float(3.0 / Double(max(shape[1], 1))).squareRoot() : 0.5
        let offset: Float = shape.count == 2 ? 0 : 1
        return (0..<count).map { _ -> Float in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            let unit = Float(state >> 40) / Float(1 << 24) * 2 - 1
            return offset + scale * unit
        }
    }

    public func release(_ name: String) {}
}

/// Multiply-adds of one forward pass as `ReferenceForward` executes it (causal attention in query
/// blocks: each block's scores against the keys up to its last query).
public enum ForwardCost {
    /// FLOPs (2 per multiply-add) of one forward pass.
    /// - Parameter routedTokenExperts: (token, expert) selections summed over all MoE layers.
    public static func flops(config c: DeepSeekConfig, batch: Int, seq: Int, routedTokenExperts: Int) -> Double {
        byPhase(config: c, batch: batch, seq: seq, routedTokenExperts: routedTokenExperts).values.reduce(0, +)
    }

    /// FLOPs of the first MTP layer's pass (`ReferenceForward.mtpPass`) over `batch` sequences of `seq`
    /// tokens: eh_proj, its decoder block and its head at seq − 1 positions (0 without an MTP layer).
    /// The block is the difference between the main stack with one more layer and without it.
    public static func mtpFlops(config c: DeepSeekConfig, batch: Int, seq: Int) -> Double {
        guard c.mtpLayerCount > 0, seq >= 2 else { return 0 }
        let positions = seq - 1, t = Double(batch * positions), h = Double(c.hiddenSize)
        var deeper = c
        deeper.numHiddenLayers += 1
        let routed = c.isMoELayer(c.numHiddenLayers) ? (c.numExpertsPerTok ?? 0) * batch * positions : 0
        let block = flops(config: deeper, batch: batch, seq: positions, routedTokenExperts: routed)
            - flops(config: c, batch: batch, seq: positions, routedTokenExperts: 0)
        return block + 2 * t * (2 * h) * h + 2 * t * Double(c.vocabSize) * h
    }

    /// FLOPs of each part of one forward pass (`ReferenceForward.Phase`; the embedding has none).
    public static func byPhase(config c: DeepSeekConfig, batch: Int, seq: Int, routedTokenExperts: Int) -> [ReferenceForward.Phase: Double] {
        let h = Double(c.hiddenSize), heads = Double(c.numAttentionHeads), dq = Double(c.qkHeadDim), dv = Double(c.vHeadDim)
        var macs: [ReferenceForward.Phase: Double] = [:]
        for p in blasProducts(config: c, batch: batch, seq: seq) { macs[p.phase, default: 0] += p.flops / 2 }
        // Causal attention: each query block's scores against the keys up to its last query, then
        // as many products with the values.
        let scored = ReferenceForward.causalBlocks(seq: seq).reduce(0) { $0 + $1.queries.count * $1.keys }
        macs[.attention, default: 0] += Double(c.numHiddenLayers) * Double(batch) * heads * Double(scored) * (dq + dv)
        // Every (token, expert) selection over all MoE layers runs one expert MLP.
        macs[.routedExperts] = Double(routedTokenExperts) * 3 * h * Double(c.moeIntermediateSize)
        return macs.mapValues { 2 * $0 }
    }

    /// One kind of `cblas_sgemm` product of the pass, [m, k] · [n, k]ᵀ with the weight widened to
    /// fp32, run `count` times.
    public struct Product: Sendable, Equatable {
        /// The part of the pass it belongs to.
        public let phase: ReferenceForward.Phase
        /// Rows of x (tokens), outputs (the weight's rows), inputs (its columns), and how many times.
        public let m: Int, n: Int, k: Int, count: Int
        /// FLOPs of all `count` products (2 per multiply-add).
        public var flops: Double { 2 * Double(count) * Double(m) * Double(n) * Double(k) }
    }

    /// The pass's products through `cblas_sgemm`, as `ReferenceForward` runs them in the original
    /// attention form: everything but the causal attention (its own kernel) and the routed experts
    /// (multiplied as stored); the head in its vocabulary chunks (`ReferenceForward.vocabularyChunk`
    /// rows each).
    public static func blasProducts(config c: DeepSeekConfig, batch: Int, seq: Int) -> [Product] {
        let t = batch * seq, h = c.hiddenSize, heads = c.numAttentionHeads, kvl = c.kvLoraRank
        var products: [Product] = []
        func add(_ phase: ReferenceForward.Phase, n: Int, k: Int, count: Int = 1) {
            if let i = products.firstIndex(where: { $0.phase == phase && $0.n == n && $0.k == k }) {
                let p = products[i]
                products[i] = Product(phase: phase, m: t, n: n, k: k, count: p.count + count)
            } else {
                products.append(Product(phase: phase, m: t, n: n, k: k, count: count))
            }
        }
        for layer in 0..<c.numHiddenLayers {
            if let ql = c.qLoraRank {
                add(.attention, n: ql, k: h)
                add(.attention, n: heads * c.qkHeadDim, k: ql)
            } else {
                add(.attention, n: heads * c.qkHeadDim, k: h)
            }
            add(.attention, n: kvl + c.qkRopeHeadDim, k: h)
            add(.attention, n: heads * (c.qkNopeHeadDim + c.vHeadDim), k: kvl)
            add(.attention, n: h, k: heads * c.vHeadDim)
            if c.isMoELayer(layer) {
                add(.router, n: c.nRoutedExperts ?? 0, k: h)
                let shared = c.moeIntermediateSize * (c.nSharedExperts ?? 0)
                if shared > 0 {
                    add(.sharedExperts, n: shared, k: h, count: 2)
                    add(.sharedExperts, n: h, k: shared)
                }
            } else {
                add(.denseMLP, n: c.intermediateSize, k: h, count: 2)
                add(.denseMLP, n: h, k: c.intermediateSize)
            }
        }
        for start in stride(from: 0, to: c.vocabSize, by: ReferenceForward.vocabularyChunk) {
            add(.head, n: min(c.vocabSize - start, ReferenceForward.vocabularyChunk), k: h)
        }
        return products
    }
}

/// The forward pass's throughput next to plain `cblas_sgemm` in the same process.
public enum ForwardBenchmark {
    /// Every timed run, so the caller reports the median and spread (a best-of-N hides the spread).
    public struct Result: Sendable {
        public var tokens: Int
        /// Seconds of each timed forward pass.
        public var forwardSeconds: [Double]
        /// Of each, the seconds spent widening stored weights (bf16 or FP8) to fp32.
        public var wideningSeconds: [Double]
        /// Of each, the seconds of every part of the pass (`ReferenceForward.Timing.phaseSeconds`).
        public var phaseSeconds: [[ReferenceForward.Phase: Double]]
        /// FLOPs of each part of one forward pass, as executed.
        public var phaseFLOPs: [ReferenceForward.Phase: Double]
        /// FLOPs of one forward pass, as executed.
        public var forwardFLOPs: Double
        public var sgemmShape: (m: Int, n: Int, k: Int)
        /// Seconds of each timed sgemm of `sgemmShape`, by round: round i just before forward pass i,
        /// the last one after the last pass.
        public var sgemmRounds: [[Double]]
        /// Every timed sgemm of `sgemmShape`.
        public var sgemmSeconds: [Double] { sgemmRounds.flatMap { $0 } }
        /// A routed expert's product (its average tokens x moe_intermediate x hidden) and the seconds
        /// of each timed sgemm of it with weights read from memory, not cache: the ceiling the
        /// products of experts that see few tokens run against.
        public var expertShape: (m: Int, n: Int, k: Int)
        public var expertSgemmSeconds: [Double]
        /// Seconds per product of the same shape multiplied as stored (`StoredWeight.product`, the
        /// storage of the shape's experts), two at a time, one per core, as the forward pass runs
        /// them; weights from memory.
        public var expertStoredSeconds: [Double]
        /// Seconds of one run of every `ForwardCost.blasProducts` product as plain `cblas_sgemm` from
        /// fp32 weights (no widening, nothing else), by run; `sgemmShape`'s products timed in rounds
        /// around them (round i just before run i, one more after the last). What the pass's own
        /// products reach on this machine: the rest of the gap to sgemm is in the widening, the
        /// causal attention, the routed experts and the element-wise work.
        public var productsSeconds: [Double]
        /// Seconds of each sgemm of `sgemmShape` timed around the runs of `productsSeconds`, by round.
        public var productsSgemmRounds: [[Double]]
        /// FLOPs of one run of `productsSeconds`.
        public var productsFLOPs: Double
        /// Rows (tokens) each routed expert multiplied, over every MoE layer, experts no token chose
        /// included: how even the synthetic router's load is.
        public var expertRows: [Int]
        public var threads: Int
        /// OpenBLAS's build and the kernels it runs (`BLASCore`).
        public var blas: String

        public var sgemmFLOPs: Double { 2 * Double(sgemmShape.m * sgemmShape.n * sgemmShape.k) }
    }

    /// A V2-Lite-width model of one dense and one MoE layer (64 experts, top-6, 2 shared), vocabulary
    /// 2048 so the lm_head does not dominate the count.
    public static func liteWidthConfig() throws -> DeepSeekConfig {
        try DeepSeekConfig.decode(Data(liteWidthConfigJSON().utf8), path: "synthetic V2-Lite-width config")
    }

    /// `liteWidthConfig`'s config.json text.
    static func liteWidthConfigJSON() -> String {
        """
        {"architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2", "vocab_size": 2048, "hidden_size": 2048,
         "intermediate_size": 10944, "moe_intermediate_size": 1408, "num_hidden_layers": 2, "num_attention_heads": 16,
         "q_lora_rank": null, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
         "n_routed_experts": 64, "n_shared_experts": 2, "num_experts_per_tok": 6, "first_k_dense_replace": 1,
         "topk_method": "greedy", "n_group": 1, "topk_group": 1, "routed_scaling_factor": 1.0, "rope_theta": 10000,
         "rope_scaling": {"type": "yarn", "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
                          "original_max_position_embeddings": 4096, "beta_fast": 32, "beta_slow": 1}}
        """
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
    public enum Shape: String, Sendable, CaseIterable { case v2Lite = "v2-lite", v3 }

    public static func run(batch: Int, seq: Int, repeats: Int, shape: Shape = .v2Lite) throws -> Result {
        let config: DeepSeekConfig
        let weights: SyntheticWeights
        switch shape {
        case .v2Lite: (config, weights) = (try liteWidthConfig(), SyntheticWeights(storage: .bf16))
        case .v3: (config, weights) = (try v3WidthConfig(), SyntheticWeights(expertPool: 8, storage: .fp8))
        }
        let forward = ReferenceForward(config: config, weights: weights)
        let tokens = TokenFile.deterministicSample(vocabSize: config.vocabSize, batch: batch, length: seq)
        // The synthetic tokens' label: what the token checks name if --batch/--seq ask too much.
        let source = "benchmark tokens (--batch \(batch) --seq \(seq))"
        let warm = try forward.run(tokens: tokens, source: source)  // generates and caches the weights
        let routed = warm.routing.reduce(0) { $0 + $1.experts.count }
        let expertRows = warm.routing.flatMap { record in
            record.experts.reduce(into: [Int](repeating: 0, count: config.nRoutedExperts ?? 0)) { $0[Int($1)] += 1 }
        }
        // sgemm is timed before, between and after the forward passes, not after them all, so both see
        // the same machine (a shared one's speed drifts over minutes); each round times it for about a
        // third of a second.
        let (m, n, k) = (batch * seq, config.hiddenSize, config.hiddenSize)
        let sgemmRounds = sgemmRepeats(m: m, n: n, k: k, lasting: 0.3, within: 2...20)
        var rounds: [[Double]] = []
        var widening: [Double] = [], phases: [[ReferenceForward.Phase: Double]] = []
        let forwardSeconds = try (0..<repeats).map { _ in
            rounds.append(sgemm(m: m, n: n, k: k, repeats: sgemmRounds))
            let before = forward.timing
            defer {
                widening.append(forward.timing.weightSeconds - before.weightSeconds)
                phases.append(forward.timing.phaseSeconds.merging(before.phaseSeconds) { after, earlier in after - earlier })
            }
            return try time { _ = try forward.run(tokens: tokens, source: source) }
        }
        rounds.append(sgemm(m: m, n: n, k: k, repeats: sgemmRounds))
        let phaseFLOPs = ForwardCost.byPhase(config: config, batch: batch, seq: seq, routedTokenExperts: routed)
        let flops = phaseFLOPs.values.reduce(0, +)
        let products = ForwardCost.blasProducts(config: config, batch: batch, seq: seq)
        var operands = ProductOperands(products)
        var productRounds: [[Double]] = []
        let productSeconds = (0..<max(3, min(repeats, 5))).map { _ in
            productRounds.append(sgemm(m: m, n: n, k: k, repeats: sgemmRounds))
            return operands.timeOnce(products)
        }
        productRounds.append(sgemm(m: m, n: n, k: k, repeats: sgemmRounds))
        let productFLOPs = products.reduce(0) { $0 + $1.flops }

        // A routed expert's product at the tokens it sees on average, its weight fresh from memory.
        let averageRows = max(1, routed / max(1, config.moeLayerCount * (config.nRoutedExperts ?? 1)))
        let expert = (m: averageRows, n: config.moeIntermediateSize, k: config.hiddenSize)
        let expertSeconds = sgemmFromMemory(m: expert.m, n: expert.n, k: expert.k, repeats: max(repeats, 3))
        let storedSeconds = try storedFromMemory(m: expert.m, n: expert.n, k: expert.k, storage: shape == .v3 ? .fp8 : .bf16, repeats: max(repeats, 3))
        return Result(tokens: batch * seq, forwardSeconds: forwardSeconds, wideningSeconds: widening, phaseSeconds: phases, phaseFLOPs: phaseFLOPs,
                      forwardFLOPs: flops, sgemmShape: (m, n, k),
                      sgemmRounds: rounds, expertShape: expert, expertSgemmSeconds: expertSeconds, expertStoredSeconds: storedSeconds,
                      productsSeconds: productSeconds, productsSgemmRounds: productRounds, productsFLOPs: productFLOPs, expertRows: expertRows,
                      threads: Int(openblas_get_num_threads()), blas: BLASCore.selection.description)
    }

    /// How many plain sgemm products of this shape take about `seconds` (one timed first), within
    /// `bounds`: a reference timed for long enough that one slow run does not decide it.
    public static func sgemmRepeats(m: Int, n: Int, k: Int, lasting seconds: Double, within bounds: ClosedRange<Int>) -> Int {
        let once = sgemm(m: m, n: n, k: k, repeats: 1)[0]
        return min(bounds.upperBound, max(bounds.lowerBound, Int(seconds / max(once, 1e-6))))
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

    /// Buffers for timing a pass's products as plain `cblas_sgemm`: two fp32 weights as large as the
    /// largest one, each product taking the other (at V3 width the large ones come from memory; small
    /// ones such as kv_a may stay in the last-level cache), x and y. At V3 width about 1.1 GB, made
    /// once after the forward passes.
    struct ProductOperands {
        let weights: [[Float]], x: [Float]
        var y: [Float]

        init(_ products: [ForwardCost.Product]) {
            let largest = products.map { $0.n * $0.k }.max() ?? 0, rows = products.map { $0.m * max($0.k, $0.n) }.max() ?? 0
            weights = [[Float](repeating: 0.25, count: largest), [Float](repeating: 0.125, count: largest)]
            (x, y) = ([Float](repeating: 0.5, count: rows), [Float](repeating: 0, count: rows))
        }

        /// Seconds of one run of `products`.
        mutating func timeOnce(_ products: [ForwardCost.Product]) -> Double {
            var seconds = 0.0, which = 0
            for p in products {
                for _ in 0..<p.count {
                    which ^= 1
                    seconds += ForwardBenchmark.time {
                        x.withUnsafeBufferPointer { xp in weights[which].withUnsafeBufferPointer { wp in y.withUnsafeMutableBufferPointer { yp in
                            Linear.forward(xp.baseAddress!, rows: p.m, inFeatures: p.k, weight: wp.baseAddress!, outFeatures: p.n, into: yp.baseAddress!)
                        } } }
                    }
                }
            }
            return seconds
        }
    }

    /// Seconds of each of `repeats` rounds of plain `cblas_sgemm` [m, k] · [n, k]ᵀ, each round cycling
    /// through enough distinct weights (at least 512 MB) that every one comes from memory, as a
    /// routed expert's weight does in the forward pass; one round is 8 products or more.
    public static func sgemmFromMemory(m: Int, n: Int, k: Int, repeats: Int) -> [Double] {
        let count = fromMemoryCount(bytesEach: n * k * 4)
        let a = [Float](repeating: 0.5, count: m * k)
        let weights = (0..<count).map { [Float](repeating: 0.25 + Float($0) / 1024, count: n * k) }
        var c = [Float](repeating: 0, count: m * n)
        return (0..<repeats).map { _ in
            time {
                for b in weights {
                    a.withUnsafeBufferPointer { ap in b.withUnsafeBufferPointer { bp in c.withUnsafeMutableBufferPointer { cp in
                        Linear.forward(ap.baseAddress!, rows: m, inFeatures: k, weight: bp.baseAddress!, outFeatures: n, into: cp.baseAddress!)
                    } } }
                }
            } / Double(count)
        }
    }

    /// Seconds per product of [m, k] · [n, k]ᵀ with the weight stored (bf16 or FP8), over rounds of
    /// distinct weights (at least 512 MB of them, so each comes from memory) multiplied one per core.
    public static func storedFromMemory(m: Int, n: Int, k: Int, storage: SyntheticWeights.Storage, repeats: Int) throws -> [Double] {
        let provider = SyntheticWeights(storage: storage)
        let bytes = storage == .fp8 ? 1 : 2
        let count = fromMemoryCount(bytesEach: n * k * bytes)
        let weights = try (0..<count).map { try provider.stored(TensorNames.expert(0, $0, .up), shape: [n, k])! }
        let x = [Float](repeating: 0.5, count: m * k)
        return try (0..<repeats).map { _ in
            // The lowest index's error, whichever thread met its error first.
            let failure = Mutex<(index: Int, error: Error)?>(nil)
            let seconds = time {
                BLASThreads.withSingleThread {
                    Parallel.forEach(count) { i in
                        do { _ = try Linear.forward(x, rows: m, stored: weights[i], inFeatures: k, outFeatures: n) } catch {
                            failure.withLock { if $0 == nil || i < $0!.index { $0 = (i, error) } }
                        }
                    }
                }
            }
            if let failed = failure.withLock({ $0 }) { throw failed.error }
            return seconds / Double(count)
        }
    }

    /// Distinct weights a round cycles through so each comes from memory, not cache: at least 512 MB
    /// of them, and at least 8.
    private static func fromMemoryCount(bytesEach: Int) -> Int { max(8, (512 << 20) / max(1, bytesEach)) }

    private static func time(_ body: () throws -> Void) rethrows -> Double {
        let start = DispatchTime.now().uptimeNanoseconds
        try body()
        return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    }
}
