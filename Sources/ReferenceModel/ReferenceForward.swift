import CKernels
import DeepSeekModel
import Foundation
import Numerics
import Synchronization

/// Each MoE layer's routing decisions for every token.
public struct RoutingRecord: Sendable {
    public let layer: Int
    /// Experts per token.
    public let k: Int
    /// [tokens, k] selected experts, ascending within each token.
    public let experts: [Int32]
    /// [tokens, k] their weights (after normalization or routed_scaling_factor), in the same order.
    public let weights: [Float]
}

/// The outputs of one reference forward pass.
public struct ForwardResult: Sendable {
    public let batch: Int
    public let sequenceLength: Int
    public let vocabSize: Int
    public let hiddenSize: Int
    /// [batch, seq, vocab]
    public let logits: [Float]
    /// transformers' `output_hidden_states`: [0] the embedding output, [i] the output of layer i-1,
    /// the last one after the final norm; each [batch, seq, hidden]. Empty unless requested.
    public let hiddenStates: [[Float]]
    public let routing: [RoutingRecord]
    /// The first MTP layer's pass, when asked for.
    public let mtp: MTPResult?
}

/// The DeepSeek-V2 forward pass (README "The reference forward pass") in fp32 on OpenBLAS, for batches of equal-length
/// sequences with a causal mask, matching transformers' native `DeepseekV2ForCausalLM`.
///
/// Memory is bounded by one layer: a layer's weights are converted to fp32, used and released
/// before the next is touched, and routed experts are converted one at a time, only when a token
/// chose them.
public final class ReferenceForward {
    public let config: DeepSeekConfig
    public let weights: WeightProvider
    /// With a placement, each MoE layer runs as expert parallelism: every device sums its own
    /// experts' outputs and the partial sums are added in device order.
    public let placement: ExpertPlacement?
    /// The KV cache: every token's [latent | k_pe] is encoded when written and decoded when read, as an
    /// engine with that cache would see it; nil keeps fp32.
    public let kvCache: KVCacheSetting?
    /// Called once per layer with what the layer caches and its queries in latent space (the calibration
    /// of `quantize --kv6`); the forward pass then runs on, its values unchanged.
    private let cacheObserver: ((KVCacheObservation) throws -> Void)?
    private let rope: RotaryEmbedding
    /// The buffers weights are widened into, reused from weight to weight (and model to model).
    private let arena = WeightArena.shared

    public init(config: DeepSeekConfig, weights: WeightProvider, placement: ExpertPlacement? = nil,
                kvCache: KVCacheSetting? = nil, cacheObserver: ((KVCacheObservation) throws -> Void)? = nil) {
        self.config = config
        self.weights = weights
        self.placement = placement
        self.kvCache = kvCache
        self.cacheObserver = cacheObserver
        rope = RotaryEmbedding(config: config)
        _ = ActivationMemory.reused
    }

    /// Where the forward pass's time went: reading and widening (or dequantizing) weights, and the
    /// whole pass; the difference is compute.
    public struct Timing: Sendable, Equatable {
        public var weightSeconds = 0.0
        public var totalSeconds = 0.0
        public var computeSeconds: Double { totalSeconds - weightSeconds }
        /// Wall seconds of each part, weight reading included (norms and residual adds are in none).
        public var phaseSeconds: [Phase: Double] = [:]
    }
    public internal(set) var timing = Timing()

    /// The parts of a forward pass whose time `Timing` keeps apart, so a benchmark can say where it goes.
    public enum Phase: String, CaseIterable, Sendable {
        case embedding, attention, denseMLP = "dense MLP", router, routedExperts = "routed experts", sharedExperts = "shared experts", head
    }

    func phase<T>(_ part: Phase, _ body: () throws -> T) rethrows -> T {
        let (value, seconds) = try timed(body)
        timing.phaseSeconds[part, default: 0] += seconds
        return value
    }

    /// Adds the wall time since `began` to the whole pass's (`timing.totalSeconds`): each public step's `defer`.
    func countTotal(since began: DispatchTime) {
        timing.totalSeconds += Double(DispatchTime.now().uptimeNanoseconds - began.uptimeNanoseconds) / 1e9
    }

    private func timed<T>(_ body: () throws -> T) rethrows -> (T, Double) {
        let start = DispatchTime.now()
        let value = try body()
        return (value, Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9)
    }

    func load(_ name: String, _ shape: [Int]) throws -> [Float] {
        let (values, seconds) = try timed { try weights.floats(name, shape: shape) }
        timing.weightSeconds += seconds
        weights.release(name)
        return values
    }

    /// A matrix weight widened into a buffer of the arena (released from the checkpoint at once).
    func matrix(_ name: String, _ shape: [Int]) throws -> WeightMatrix {
        let (m, seconds) = try timedMatrix(name, shape)
        timing.weightSeconds += seconds
        return m
    }

    /// `matrix` with its reading time returned rather than counted: safe to call from concurrent
    /// tasks (the providers, the arena and the prefetcher take their own locks).
    private func timedMatrix(_ name: String, _ shape: [Int]) throws -> (WeightMatrix, Double) {
        let m = WeightMatrix(count: shape.reduce(1, *), arena: arena)
        let ((), seconds) = try timed { try weights.floats(name, shape: shape, into: m.destination) }
        weights.release(name)
        return (m, seconds)
    }

    func loadRows(_ name: String, _ shape: [Int], _ range: Range<Int>) throws -> WeightMatrix {
        let m = WeightMatrix(count: range.count * shape[1], arena: arena)
        let ((), seconds) = try timed { try weights.rows(name, shape: shape, range: range, into: m.destination) }
        timing.weightSeconds += seconds
        return m
    }

    /// Frees the buffers forward passes keep for widening weights (up to ~1 GB at V3), once no pass
    /// is running: what `validate` and `quantize --kv6`'s calibration call when they are done.
    public static func releaseBuffers() { WeightArena.shared.trim() }

    /// Starts reading the weights of layer `layer` (`numHiddenLayers`: the final norm and the head)
    /// in the order they will be used, while the current layer computes.
    public func prefetch(layer: Int) {
        if layer < config.numHiddenLayers {
            weights.prefetch(config.layerTensors(layer).map(\.name))
        } else if layer == config.numHiddenLayers {
            weights.prefetch([TensorNames.finalNorm, config.tieWordEmbeddings ? TensorNames.embedding : TensorNames.lmHead])
        }
    }

    /// A forward pass in progress: the residual stream after the layers run so far, and the routing
    /// decisions taken. `start`, then `runLayer` for each layer in order, then `finish`; `run` does all
    /// three, and `validate` steps two models side by side so it never keeps every layer's states.
    public struct State: Sendable {
        public let batch: Int
        public let sequenceLength: Int
        /// [batch · seq, hidden]: the embedding output, then the output of each layer run.
        public fileprivate(set) var hidden: [Float]
        public fileprivate(set) var routing: [RoutingRecord] = []
        /// Layers run so far.
        public fileprivate(set) var layers = 0
        /// The last MoE layer's input rows that `runLayer(_:keepingExpertInputRows:)` was asked to keep.
        public fileprivate(set) var expertInput: ExpertInput?
    }

    /// Rows of an MoE layer's input (the post-attention norm's output, what its router and experts
    /// read): what `validate` runs the experts no token chose on, in both models.
    public struct ExpertInput: Sendable {
        public let layer: Int
        /// The tokens (rows of the batch, flattened) the rows belong to, spread evenly over the batch.
        public let tokens: [Int]
        /// [tokens.count, hidden]
        public let rows: [Float]
    }

    /// Checks `tokens` ([batch][seq], equal lengths; `TokenFile.check`: vocabulary, positions,
    /// memory; its errors name `source`) and looks their embedding rows up.
    public func start(tokens: [[Int]], source: String = "tokens") throws -> State {
        let began = DispatchTime.now()
        defer { countTotal(since: began) }
        try TokenFile.check(tokens, path: source, config: config)
        let hidden = try phase(.embedding) { try embeddingRows(Array(tokens.joined()), table: TensorNames.embedding) }
        return State(batch: tokens.count, sequenceLength: tokens[0].count, hidden: hidden)
    }

    /// The rows of embedding table `table` for `ids`, [ids.count, hidden]: a row lookup, so only the
    /// rows of the distinct ids are read, all requested from the disk before the first is used.
    func embeddingRows(_ ids: [Int], table: String) throws -> [Float] {
        let h = config.hiddenSize, vocab = config.vocabSize
        var rows = [Float](repeating: 0, count: ids.count * h)
        let positions = Dictionary(grouping: ids.enumerated(), by: \.element).mapValues { $0.map(\.offset) }
        let distinct = positions.keys.sorted()
        weights.willNeedRows(table, shape: [vocab, h], rows: distinct)
        for id in distinct {
            let row = try loadRows(table, [vocab, h], id..<(id + 1))
            row.withUnsafeBufferPointer { rp in for i in positions[id]! { rows.replaceSubrange((i * h)..<((i + 1) * h), with: rp) } }
        }
        weights.release(table)
        return rows
    }

    /// Runs the next decoder layer of the main stack on `state`; at an MoE layer, keeps up to
    /// `keepingExpertInputRows` rows of its input in `state.expertInput`.
    public func runLayer(_ state: inout State, keepingExpertInputRows: Int = 0) throws {
        let began = DispatchTime.now()
        defer { countTotal(since: began) }
        let (record, kept) = try decoderLayer(&state.hidden, layer: state.layers, batch: state.batch, seq: state.sequenceLength,
                                              keepingExpertInputRows: keepingExpertInputRows)
        if let record { state.routing.append(record) }
        if let kept { state.expertInput = kept }
        state.layers += 1
    }

    /// The tensors of layer `layer`'s decoder block: all of the layer's but an MTP layer's own weights.
    func decoderTensorNames(_ layer: Int) -> [String] {
        let module = Set(LayerWeight.mtpModule.map { TensorNames.name($0, layer: layer) })
        return config.layerTensors(layer).map(\.name).filter { !module.contains($0) }
    }

    /// Decoder layer `layer` (of the main stack or an MTP layer) on the residual stream `hidden`
    /// ([batch · seq, hidden], updated in place): its routing at an MoE layer, and up to
    /// `keepingExpertInputRows` rows of the MoE input.
    func decoderLayer(_ hidden: inout [Float], layer: Int, batch: Int, seq: Int,
                      keepingExpertInputRows: Int = 0) throws -> (RoutingRecord?, ExpertInput?) {
        let h = config.hiddenSize, t = batch * seq
        // Experts no token chose, and everything of a layer that throws, are not read ahead any more
        // (an MTP layer's own weights, its head among them, are used outside its decoder block).
        defer { weights.retire(decoderTensorNames(layer)) }
        let normed = Elementwise.rmsNorm(hidden, width: h, gamma: try load(TensorNames.name(.inputNorm, layer: layer), [h]), eps: config.rmsNormEps)
        let attention = try phase(.attention) { try attentionBlock(normed, layer: layer, batch: batch, seq: seq) }
        Elementwise.add(attention, into: &hidden)
        let normed2 = Elementwise.rmsNorm(hidden, width: h, gamma: try load(TensorNames.name(.postAttentionNorm, layer: layer), [h]), eps: config.rmsNormEps)
        guard config.isMoELayer(layer) else {
            let mlp = try phase(.denseMLP) { try mlpBlock(normed2, rows: t, layer: layer, block: .dense, intermediate: config.intermediateSize) }
            Elementwise.add(mlp, into: &hidden)
            return (nil, nil)
        }
        var kept: ExpertInput?
        if keepingExpertInputRows > 0 {
            let count = min(keepingExpertInputRows, t)
            let tokens = (0..<count).map { $0 * t / count }
            kept = ExpertInput(layer: layer, tokens: tokens, rows: Self.gather(tokens, of: normed2, width: h))
        }
        let (mlp, record) = try moeBlock(normed2, layer: layer, tokens: t)
        Elementwise.add(mlp, into: &hidden)
        return (record, kept)
    }

    /// The final norm (the last hidden state transformers reports) and the logits, after every layer.
    public func finish(_ state: State) throws -> (final: [Float], logits: [Float]) {
        let began = DispatchTime.now()
        defer { countTotal(since: began) }
        let t = state.batch * state.sequenceLength
        let final = try finalNorm(state)
        let headName = config.tieWordEmbeddings ? TensorNames.embedding : TensorNames.lmHead
        let logits = try phase(.head) { try vocabularyProjection(final, rows: t, head: headName) }
        guard logits.allSatisfy(\.isFinite) else { throw ReferenceModelError.nonFiniteOutput(model: weights.label, what: "logits") }
        return (final, logits)
    }

    /// The final norm of the residual stream after every layer: the last hidden state, the head's input.
    func finalNorm(_ state: State) throws -> [Float] {
        precondition(state.layers == config.numHiddenLayers, "the final norm after every layer")
        return Elementwise.rmsNorm(state.hidden, width: config.hiddenSize, gamma: try load(TensorNames.finalNorm, [config.hiddenSize]), eps: config.rmsNormEps)
    }

    /// Runs every layer of the main stack on `state`, each next layer read ahead while one computes
    /// (after the last, what `afterTheLast` starts reading); `each` sees the state after each layer.
    private func runLayers(_ state: inout State, progress: ((String) -> Void)?, afterTheLast: () -> Void,
                           each: (State) -> Void = { _ in }) throws {
        for layer in 0..<config.numHiddenLayers {
            progress?("forward: layer \(layer + 1)/\(config.numHiddenLayers)")
            if layer + 1 < config.numHiddenLayers { prefetch(layer: layer + 1) } else { afterTheLast() }
            try runLayer(&state)
            each(state)
        }
    }

    /// Runs every layer for the cache observer (`quantize --kv6` calibration), with the first MTP
    /// layer's decoder block when `mtp`, and neither vocabulary head: the observer sees each layer's
    /// cache and queries, and no logits are computed.
    public func observeCaches(tokens: [[Int]], source: String, mtp: Bool, progress: ((String) -> Void)? = nil) throws {
        var state = try start(tokens: tokens, source: source)
        try runLayers(&state, progress: progress) { if mtp { prefetchMTP(head: false) } }
        guard mtp else { return }
        progress?("forward: MTP layer")
        let began = DispatchTime.now()
        defer { countTotal(since: began) }
        _ = try mtpBlock(tokens: tokens, final: try finalNorm(state), head: false)
    }

    /// Runs `tokens` ([batch][seq], equal lengths) through the model, after `TokenFile.check`
    /// (vocabulary, positions, memory); `source` (the tokens file) is what its errors name.
    /// With `mtp`, the first MTP layer then runs too (`mtpPass`).
    public func run(tokens: [[Int]], source: String = "tokens", recordHiddenStates: Bool = false, mtp: Bool = false,
                    progress: ((String) -> Void)? = nil) throws -> ForwardResult {
        var state = try start(tokens: tokens, source: source)
        var hiddenStates: [[Float]] = recordHiddenStates ? [state.hidden] : []
        try runLayers(&state, progress: progress, afterTheLast: { prefetch(layer: config.numHiddenLayers) }) {
            if recordHiddenStates { hiddenStates.append($0.hidden) }
        }
        let (final, logits) = try finish(state)
        // transformers reports the last hidden state after the final norm.
        if recordHiddenStates { hiddenStates[hiddenStates.count - 1] = final }
        if mtp { progress?("forward: MTP layer") }
        let mtpResult = mtp ? try mtpPass(tokens: tokens, final: final) : nil
        return ForwardResult(batch: state.batch, sequenceLength: state.sequenceLength, vocabSize: config.vocabSize, hiddenSize: config.hiddenSize,
                             logits: logits, hiddenStates: hiddenStates, routing: state.routing, mtp: mtpResult)
    }

    /// Rows of the head read per product: 16,384 x hidden fp32 (470 MB at V3's 7,168) at a time.
    static let vocabularyChunk = 16_384

    /// logits = final · headᵀ, the head read in chunks of vocabulary rows (never widened whole).
    func vocabularyProjection(_ x: [Float], rows t: Int, head: String) throws -> [Float] {
        let h = config.hiddenSize, vocab = config.vocabSize
        var logits = [Float](repeating: 0, count: t * vocab)
        for start in stride(from: 0, to: vocab, by: Self.vocabularyChunk) {
            let range = start..<min(vocab, start + Self.vocabularyChunk)
            let w = try loadRows(head, [vocab, h], range)
            x.withUnsafeBufferPointer { xp in w.withUnsafeBufferPointer { wp in logits.withUnsafeMutableBufferPointer { lp in
                Linear.gemm(transposeB: true, m: t, n: range.count, k: h, alpha: 1, a: xp.baseAddress!, lda: h,
                            b: wp.baseAddress!, ldb: h, beta: 0, c: lp.baseAddress! + start, ldc: vocab)
            } } }
        }
        weights.release(head)
        return logits
    }

    // MARK: Attention (MLA in its original, MHA-expanded form)

    /// One layer's attention input, shared by every attention form: the query input (the hidden state or the
    /// normalized compressed query), RoPE tables, and the cache entries (latent, rotated k_pe, k_pe before rotation).
    private struct AttentionInput {
        let layer: Int, batch: Int, seq: Int
        var rows: Int { batch * seq }
        let queryInput: [Float]
        let tables: [(cos: [Float], sin: [Float])]
        let latent: [Float], kpe: [Float], kpeBeforeRotation: [Float]
        let scale: Float
    }

    private func attentionBlock(_ x: [Float], layer: Int, batch: Int, seq: Int) throws -> [Float] {
        let h = config.hiddenSize, t = batch * seq, kvl = config.kvLoraRank
        // absorb folds the norm gains into the weights; RMSNorm then runs with a gain of one.
        let latentGain = config.hasLatentGain ? try load(TensorNames.name(.kvANorm, layer: layer), [kvl]) : [Float](repeating: 1, count: kvl)
        var queryInput = x
        if let ql = config.qLoraRank {
            let qa = Linear.forward(x, rows: t, weight: try matrix(TensorNames.name(.qAProj, layer: layer), [ql, h]), inFeatures: h, outFeatures: ql)
            let gamma = config.attentionForm == .mla ? try load(TensorNames.name(.qANorm, layer: layer), [ql]) : [Float](repeating: 1, count: ql)
            queryInput = Elementwise.rmsNorm(qa, width: ql, gamma: gamma, eps: config.rmsNormEps)
        }
        let tables = (0..<seq).map { rope.table(position: $0) }
        let (latent, kpe, kpeBeforeRotation) = try cacheEntries(x, layer: layer, rows: t, seq: seq, gain: latentGain, tables: tables)
        let input = AttentionInput(layer: layer, batch: batch, seq: seq, queryInput: queryInput, tables: tables, latent: latent, kpe: kpe,
                                   kpeBeforeRotation: kpeBeforeRotation, scale: Float(config.kernelSoftmaxScale))
        switch config.attentionForm {
        case .mla: return try expandedAttention(input)
        case .split, .fold: return try latentAttention(input)
        }
    }

    /// The query projection's output, RoPE applied to each head's rope part: [rows, heads·(nope+rope)].
    private func rotatedQueries(_ input: AttentionInput) throws -> [Float] {
        let heads = config.numAttentionHeads, dq = config.qkHeadDim, inQ = config.qLoraRank ?? config.hiddenSize
        let weight = try matrix(TensorNames.name(config.queryProjection, layer: input.layer), [heads * dq, inQ])
        var q = Linear.forward(input.queryInput, rows: input.rows, weight: weight, inFeatures: inQ, outFeatures: heads * dq)
        Self.rotateQueries(&q, rows: input.rows, seq: input.seq, heads: heads, stride: dq, offset: config.qkNopeHeadDim, tables: input.tables)
        return q
    }

    /// MLA in its original form: per-head keys and values expanded from the latent by kv_b_proj.
    private func expandedAttention(_ input: AttentionInput) throws -> [Float] {
        let h = config.hiddenSize, heads = config.numAttentionHeads, t = input.rows, kvl = config.kvLoraRank
        let nope = config.qkNopeHeadDim, ropeDim = config.qkRopeHeadDim, dq = config.qkHeadDim, dv = config.vHeadDim
        let q = try rotatedQueries(input)
        // kv_b_proj rows are, per head, nope rows then v rows.
        let kvB = try matrix(TensorNames.name(.kvBProj, layer: input.layer), [heads * (nope + dv), kvl])
        if let cacheObserver {
            try cacheObserver(KVCacheObservation(layer: input.layer, batch: input.batch, seq: input.seq, latent: input.latent,
                                                 ropeBeforeRotation: input.kpeBeforeRotation, rope: input.kpe,
                                                 queries: latentQueries(q, rows: t, wUK: kvB, headStride: (nope + dv) * kvl), softmaxScale: input.scale))
        }
        let kv = Linear.forward(input.latent, rows: t, weight: kvB, inFeatures: kvl, outFeatures: heads * (nope + dv))
        // Each head's keys are its nope rows of kv beside the shared rotated k_pe, its values its v rows:
        // read in place, never copied per head.
        let row = heads * (nope + dv)
        let context = Self.causalAttention(queries: HeadRows(q, headStride: dq, rowStride: heads * dq, width: dq),
                                           keys: HeadRows(kv, headStride: nope + dv, rowStride: row, width: nope),
                                           sharedKeys: HeadRows(input.kpe, headStride: 0, rowStride: ropeDim, width: ropeDim),
                                           values: HeadRows(kv, offset: nope, headStride: nope + dv, rowStride: row, width: dv),
                                           batch: input.batch, seq: input.seq, heads: heads, scale: input.scale)
        return Linear.forward(context, rows: t, weight: try matrix(TensorNames.name(.oProj, layer: input.layer), [h, heads * dv]),
                              inFeatures: heads * dv, outFeatures: h)
    }

    /// Latent (MQA-form) attention of the absorbed forms: per head, the query lives in latent space
    /// [kv_lora | rope] and attends over the shared cache [c | k_pe]; the context is a latent vector per head.
    private func latentAttention(_ input: AttentionInput) throws -> [Float] {
        let heads = config.numAttentionHeads, t = input.rows, kvl = config.kvLoraRank, ropeDim = config.qkRopeHeadDim
        let width = kvl + ropeDim
        let queries = try absorbedQueries(input)
        if let cacheObserver {
            try cacheObserver(KVCacheObservation(layer: input.layer, batch: input.batch, seq: input.seq, latent: input.latent,
                                                 ropeBeforeRotation: input.kpeBeforeRotation, rope: input.kpe, queries: queries, softmaxScale: input.scale))
        }
        // Every head attends over the one shared cache [c | k_pe], read in place.
        let context = Self.causalAttention(queries: HeadRows(queries, headStride: width, rowStride: heads * width, width: width),
                                           keys: HeadRows(input.latent, headStride: 0, rowStride: kvl, width: kvl),
                                           sharedKeys: HeadRows(input.kpe, headStride: 0, rowStride: ropeDim, width: ropeDim),
                                           values: HeadRows(input.latent, headStride: 0, rowStride: kvl, width: kvl),
                                           batch: input.batch, seq: input.seq, heads: heads, scale: input.scale)
        return try latentOutput(context, layer: input.layer, rows: t)
    }

    /// Every head's query in latent space [kv_lora | rope]: W_UK[h]ᵀ·q_nope[h] beside the rotated rope part
    /// (split), or the folded products W_UKᵀW_UQ and the rope rows of W_UQ (fold).
    private func absorbedQueries(_ input: AttentionInput) throws -> [Float] {
        let heads = config.numAttentionHeads, t = input.rows, kvl = config.kvLoraRank, ropeDim = config.qkRopeHeadDim
        let nope = config.qkNopeHeadDim, width = kvl + ropeDim, inQ = config.qLoraRank ?? config.hiddenSize
        if config.attentionForm == .split {
            return latentQueries(try rotatedQueries(input), rows: t, wUK: try matrix(TensorNames.name(.wUK, layer: input.layer), [heads, nope, kvl]),
                                 headStride: nope * kvl)
        }
        let qLatent = Linear.forward(input.queryInput, rows: t, weight: try matrix(TensorNames.name(.qAbsorbed, layer: input.layer), [heads * kvl, inQ]),
                                     inFeatures: inQ, outFeatures: heads * kvl)
        var qRope = Linear.forward(input.queryInput, rows: t, weight: try matrix(TensorNames.name(.qRope, layer: input.layer), [heads * ropeDim, inQ]),
                                   inFeatures: inQ, outFeatures: heads * ropeDim)
        Self.rotateQueries(&qRope, rows: t, seq: input.seq, heads: heads, stride: ropeDim, offset: 0, tables: input.tables)
        var queries = [Float](repeating: 0, count: t * heads * width)
        for i in 0..<t { for head in 0..<heads {
            for j in 0..<kvl { queries[(i * heads + head) * width + j] = qLatent[(i * heads + head) * kvl + j] }
            for j in 0..<ropeDim { queries[(i * heads + head) * width + kvl + j] = qRope[(i * heads + head) * ropeDim + j] }
        } }
        return queries
    }

    /// The attention output from each head's latent context: W_O·W_UV folded (fold), or W_UV per head then o_proj (split).
    private func latentOutput(_ context: [Float], layer: Int, rows t: Int) throws -> [Float] {
        let h = config.hiddenSize, heads = config.numAttentionHeads, kvl = config.kvLoraRank, dv = config.vHeadDim
        if config.attentionForm == .fold {
            return Linear.forward(context, rows: t, weight: try matrix(TensorNames.name(.oAbsorbed, layer: layer), [h, heads * kvl]),
                                  inFeatures: heads * kvl, outFeatures: h)
        }
        let wUV = try matrix(TensorNames.name(.wUV, layer: layer), [heads, dv, kvl])
        var perHead = [Float](repeating: 0, count: t * heads * dv)
        context.withUnsafeBufferPointer { cp in wUV.withUnsafeBufferPointer { wp in perHead.withUnsafeMutableBufferPointer { op in
            for head in 0..<heads {
                // v[h] = ctx_lat[h] · W_UV[h]ᵀ  ([t, kv_lora] · [kv_lora, v])
                Linear.gemm(transposeB: true, m: t, n: dv, k: kvl, alpha: 1, a: cp.baseAddress! + head * kvl, lda: heads * kvl,
                            b: wp.baseAddress! + head * dv * kvl, ldb: kvl, beta: 0, c: op.baseAddress! + head * dv, ldc: heads * dv)
            }
        } } }
        return Linear.forward(perHead, rows: t, weight: try matrix(TensorNames.name(.oProj, layer: layer), [h, heads * dv]), inFeatures: heads * dv, outFeatures: h)
    }

    /// What one layer caches per token, through the cache's codec: the latent RMSNorm(c_kv)·gain and the
    /// rotated k_pe. Also returns k_pe before rotation (as cached, when the codec caches it so) when an
    /// observer will read it, else an empty array.
    private func cacheEntries(_ x: [Float], layer: Int, rows t: Int, seq: Int, gain: [Float],
                              tables: [(cos: [Float], sin: [Float])]) throws -> (latent: [Float], rope: [Float], ropeBeforeRotation: [Float]) {
        let h = config.hiddenSize, kvl = config.kvLoraRank, ropeDim = config.qkRopeHeadDim
        let ckv = Linear.forward(x, rows: t, weight: try matrix(TensorNames.name(.kvAProj, layer: layer), [kvl + ropeDim, h]),
                                 inFeatures: h, outFeatures: kvl + ropeDim)
        var latent = [Float](repeating: 0, count: t * kvl)
        var kpe = [Float](repeating: 0, count: t * ropeDim)
        for i in 0..<t {
            for j in 0..<kvl { latent[i * kvl + j] = ckv[i * (kvl + ropeDim) + j] }
            for j in 0..<ropeDim { kpe[i * ropeDim + j] = ckv[i * (kvl + ropeDim) + kvl + j] }
        }
        latent = Elementwise.rmsNorm(latent, width: kvl, gamma: gain, eps: config.rmsNormEps)
        let codec = kvCache?.codec(layer: layer)
        // mla-kv6c caches k_pe before the rotation; the reader rotates what it decodes.
        if let codec, codec.cachesRopeBeforeRotation { KVCacheCodec.roundTrip(codec, latent: &latent, rope: &kpe, tokens: t) }
        let beforeRotation = cacheObserver != nil ? kpe : []
        kpe.withUnsafeMutableBufferPointer { kp in
            for i in 0..<t { let (c, s) = tables[i % seq]; RotaryEmbedding.rotate(kp.baseAddress! + i * ropeDim, cos: c, sin: s) }
        }
        if let codec, !codec.cachesRopeBeforeRotation { KVCacheCodec.roundTrip(codec, latent: &latent, rope: &kpe, tokens: t) }
        return (latent, kpe, beforeRotation)
    }

    /// Queries in the cache's space, [t, heads, kv_lora + rope]: q_lat[h] = q_nope[h] · W_UK[h] and the
    /// rotated q_pe[h]. `q` is [t, heads, qk_head_dim]; W_UK[h] is the [nope, kv_lora] block at
    /// `head · headStride` of `wUK` (the per-head tensor, or kv_b_proj's rows).
    private func latentQueries(_ q: [Float], rows t: Int, wUK: WeightMatrix, headStride: Int) -> [Float] {
        let heads = config.numAttentionHeads, nope = config.qkNopeHeadDim, ropeDim = config.qkRopeHeadDim
        let dq = config.qkHeadDim, kvl = config.kvLoraRank, width = kvl + ropeDim
        var queries = [Float](repeating: 0, count: t * heads * width)
        q.withUnsafeBufferPointer { qp in wUK.withUnsafeBufferPointer { wp in queries.withUnsafeMutableBufferPointer { op in
            for head in 0..<heads {
                // q_lat[h] = q_nope[h] · W_UK[h]  ([t, nope] · [nope, kv_lora])
                Linear.gemm(transposeB: false, m: t, n: kvl, k: nope, alpha: 1, a: qp.baseAddress! + head * dq, lda: heads * dq,
                            b: wp.baseAddress! + head * headStride, ldb: kvl, beta: 0, c: op.baseAddress! + head * width, ldc: heads * width)
                for i in 0..<t { for j in 0..<ropeDim { op[(i * heads + head) * width + kvl + j] = qp[i * heads * dq + head * dq + nope + j] } }
            }
        } } }
        return queries
    }

    /// Rotates the rope part (at `offset`, width rope) of every head's query, row i at position i % seq.
    private static func rotateQueries(_ q: inout [Float], rows: Int, seq: Int, heads: Int, stride: Int, offset: Int,
                                      tables: [(cos: [Float], sin: [Float])]) {
        q.withUnsafeMutableBufferPointer { qp in
            for i in 0..<rows {
                let (c, s) = tables[i % seq]
                for head in 0..<heads { RotaryEmbedding.rotate(qp.baseAddress! + (i * heads + head) * stride + offset, cos: c, sin: s) }
            }
        }
    }

    /// Queries per block of `causalAttention`: scores take block x seq floats, not seq x seq. Each
    /// block's products run over the keys up to its last query, so a smaller block computes less of
    /// the masked triangle (at 512 positions 25% more than the mask leaves at 128, 9% at 48); 48 is
    /// whole tiles of the kernel (12 and 6 rows, 16 keys), and measured fastest of 128, 64, 48 and 32
    /// (8 V3 heads on one core: 12.1, 11.1-11.3, 10.8-11.0, 11.2-11.5 ms). The block changes no finite
    /// output but the sign of a zero one: masked keys add p = +0 terms, and only a sum that is -0 (every
    /// term a negative product too small for f32) can tell how many.
    static let queryBlock = 48

    /// The query blocks of a causal pass over `seq` positions, each with the keys its products run
    /// over (0 through its last query, rounded up to 16 as the kernel's tiles do): the work
    /// `causalAttention` does and `ForwardCost` counts.
    static func causalBlocks(seq: Int) -> [(queries: Range<Int>, keys: Int)] {
        stride(from: 0, to: seq, by: queryBlock).map { q0 in
            let q1 = min(seq, q0 + queryBlock)
            return (q0..<q1, (q1 + 15) / 16 * 16)
        }
    }

    /// Where each head's rows of an attention operand are in an array of [T, ...] rows: head h's row j
    /// starts at offset + h · headStride + j · rowStride and has `width` floats (headStride 0: one
    /// operand shared by every head, as the latent cache is).
    struct HeadRows {
        let values: [Float]
        let offset: Int, headStride: Int, rowStride: Int, width: Int
        init(_ values: [Float], offset: Int = 0, headStride: Int, rowStride: Int, width: Int) {
            (self.values, self.offset, self.headStride, self.rowStride, self.width) = (values, offset, headStride, rowStride, width)
        }
    }

    /// softmax(scale · Q Kᵀ + causal mask) V per (sequence, head), a key being a head's `keys` row then
    /// its `sharedKeys` row; returns [T, H·vDim]. `dsconvert_causal_attention` runs each pair: queries in
    /// blocks of `queryBlock`, each against the keys up to its last query only (rounded up to 16), so
    /// the products of blocks entirely above the diagonal are not computed and a core holds one head's
    /// keys and values and one block's scores (seq · (qk + v) + block · seq floats). The pairs run on
    /// every core; each writes its own columns of the output, so the result does not depend on the
    /// thread count.
    static func causalAttention(queries: HeadRows, keys: HeadRows, sharedKeys: HeadRows, values: HeadRows,
                                batch: Int, seq: Int, heads: Int, scale: Float) -> [Float] {
        precondition(queries.width == keys.width + sharedKeys.width, "queries of \(queries.width) for keys of \(keys.width) + \(sharedKeys.width)")
        let vDim = values.width
        var out = [Float](repeating: 0, count: batch * seq * heads * vDim)
        let failed = Mutex(false)
        BLASThreads.parkWorkers()
        queries.values.withUnsafeBufferPointer { qp in keys.values.withUnsafeBufferPointer { kp in
            sharedKeys.values.withUnsafeBufferPointer { sp in values.values.withUnsafeBufferPointer { vp in
                out.withUnsafeMutableBufferPointer { op in
                    let output = SharedPointer(op.baseAddress!)
                    func rows(_ operand: HeadRows, _ base: UnsafePointer<Float>?, sequence b: Int, head: Int) -> dsconvert_rows {
                        dsconvert_rows(data: base.map { $0 + operand.offset + head * operand.headStride + b * seq * operand.rowStride },
                                       ld: operand.rowStride, width: operand.width)
                    }
                    Parallel.forEach(batch * heads) { pair in
                        let (b, head) = pair.quotientAndRemainder(dividingBy: heads)
                        let status = dsconvert_causal_attention(FP8BlockQuantizer.kernelLevel, seq, queryBlock,
                                                                rows(queries, qp.baseAddress, sequence: b, head: head),
                                                                rows(keys, kp.baseAddress, sequence: b, head: head),
                                                                rows(sharedKeys, sp.baseAddress, sequence: b, head: head),
                                                                rows(values, vp.baseAddress, sequence: b, head: head),
                                                                scale, output.pointer + b * seq * heads * vDim + head * vDim, heads * vDim)
                        if status != 0 { failed.withLock { $0 = true } }
                    }
                }
            } }
        } }
        // As Swift's own allocations fail: the kernel's working memory is a head's keys and values.
        precondition(!failed.withLock { $0 }, "no memory for an attention head's keys, values and scores")
        return out
    }

    // MARK: MLPs

    /// SiLU(gate·x) ⊙ (up·x), then down: the dense MLP, the shared experts or one routed expert.
    private func mlpBlock(_ x: [Float], rows: Int, layer: Int, block: MLPBlock, intermediate: Int) throws -> [Float] {
        let (y, seconds) = try mlpProducts(x, rows: rows, layer: layer, block: block, intermediate: intermediate)
        timing.weightSeconds += seconds
        return y
    }

    /// `mlpBlock` with its weight-reading time returned: what the routed experts run concurrently.
    /// With `asStored`, weights the provider holds as stored are multiplied as stored
    /// (`StoredWeight.product`: for a routed expert's few rows), and the others in the same order.
    private func mlpProducts(_ x: [Float], rows: Int, layer: Int, block: MLPBlock, intermediate: Int, asStored: Bool = false) throws -> ([Float], Double) {
        let h = config.hiddenSize
        var seconds = 0.0
        func product(_ input: [Float], _ projection: MLPProjection, out: Int, in: Int) throws -> [Float] {
            let name = TensorNames.mlp(block, projection, layer: layer)
            if asStored {
                let began = DispatchTime.now().uptimeNanoseconds
                if let stored = try weights.stored(name, shape: [out, `in`]) {
                    seconds += Double(DispatchTime.now().uptimeNanoseconds - began) / 1e9
                    defer { weights.release(name) }
                    return try Linear.forward(input, rows: rows, stored: stored, inFeatures: `in`, outFeatures: out)
                }
            }
            let (m, s) = try timedMatrix(name, [out, `in`])
            seconds += s
            // A routed expert's products are the same bits whether the weight came as stored or as fp32.
            return asStored ? Linear.forwardAsStored(input, rows: rows, weight: m, inFeatures: `in`, outFeatures: out)
                            : Linear.forward(input, rows: rows, weight: m, inFeatures: `in`, outFeatures: out)
        }
        var act = try product(x, .gate, out: intermediate, in: h)
        let up = try product(x, .up, out: intermediate, in: h)
        // A routed expert's products already run one per core.
        Elementwise.siluTimes(&act, up, onEveryCore: !asStored)
        let y = try product(act, .down, out: h, in: intermediate)
        return (y, seconds)
    }

    private func moeBlock(_ x: [Float], layer: Int, tokens t: Int) throws -> ([Float], RoutingRecord) {
        let (record, assigned) = try phase(.router) { try route(x, layer: layer, tokens: t) }
        var out = try phase(.routedExperts) { try routedOutput(x, layer: layer, tokens: t, assigned: assigned) }
        if let shared = config.nSharedExperts {
            let y = try phase(.sharedExperts) { try mlpBlock(x, rows: t, layer: layer, block: .shared, intermediate: config.moeIntermediateSize * shared) }
            Elementwise.add(y, into: &out)
        }
        return (out, record)
    }

    /// The router's choice for every token, and each expert's tokens with their weights, in token order.
    private func route(_ x: [Float], layer: Int, tokens t: Int) throws -> (RoutingRecord, [[(token: Int, weight: Float)]]) {
        let h = config.hiddenSize, e = config.nRoutedExperts ?? 0, k = config.numExpertsPerTok ?? 0
        let routerLogits = Linear.forward(x, rows: t, weight: try matrix(TensorNames.name(.router, layer: layer), [e, h]), inFeatures: h, outFeatures: e)
        let bias = config.hasRouterBias ? try load(TensorNames.name(.routerBias, layer: layer), [e]) : nil
        let router = MoERouter(config: config, bias: bias)
        var experts = [Int32](repeating: 0, count: t * k)
        var routeWeights = [Float](repeating: 0, count: t * k)
        var assigned: [[(token: Int, weight: Float)]] = Array(repeating: [], count: e)
        // Each token's choice on every core (V3: 512 tokens choosing 8 of 256 took as long as the
        // router's product), then the experts' lists filled in token order.
        let choices = Mutex([[(expert: Int, weight: Float)]](repeating: [], count: t))
        Parallel.forEach(t) { i in
            let choice = router.route(logits: Array(routerLogits[(i * e)..<((i + 1) * e)]))
            choices.withLock { $0[i] = choice }
        }
        for (i, choice) in choices.withLock({ $0 }).enumerated() {
            for (slot, (expert, weight)) in choice.enumerated() {
                experts[i * k + slot] = Int32(expert)
                routeWeights[i * k + slot] = weight
                assigned[expert].append((i, weight))
            }
        }
        return (RoutingRecord(layer: layer, k: k, experts: experts, weights: routeWeights), assigned)
    }

    /// The routed experts' weighted outputs summed per token (per device, then devices in order, under a placement).
    private func routedOutput(_ x: [Float], layer: Int, tokens t: Int, assigned: [[(token: Int, weight: Float)]]) throws -> [Float] {
        let h = config.hiddenSize, e = config.nRoutedExperts ?? 0
        var out = [Float](repeating: 0, count: t * h)
        let m = config.moeIntermediateSize
        let groups: [Range<Int>] = placement.map { p in (0..<p.devices).map { p.range(device: $0) } } ?? [0..<e]
        for experts in groups {
            var partial = [Float](repeating: 0, count: t * h)
            let chosen = experts.filter { !assigned[$0].isEmpty }
            // Experts run in batches of consecutive experts (at least 8 and one per core, then up to
            // 4 x tokens rows), largest first, each core taking the next when done, each product in
            // one thread: an expert sees few tokens (V3 at 512 tokens: ~16), so its products are
            // too small to share out across cores. Outputs are added in expert order, so the sums
            // depend neither on the thread count nor on where batches end.
            let fewest = max(8, Parallel.threads)
            var start = 0
            while start < chosen.count {
                var end = start, rows = 0
                while end < chosen.count, end - start < fewest || rows + assigned[chosen[end]].count <= 4 * t {
                    rows += assigned[chosen[end]].count
                    end += 1
                }
                let batch = Array(chosen[start..<end])
                let outputs = try routedExperts(batch, x: x, assigned: assigned, layer: layer, intermediate: m)
                Self.addExpertOutputs(outputs, of: batch, assigned: assigned, width: h, into: &partial)
                start = end
            }
            Elementwise.add(partial, into: &out)
        }
        return out
    }

    /// partial[token] += weight · y[row] for each expert of `batch` in order and each of its rows:
    /// tokens on every core, each token's terms added in expert order. The terms are laid out token
    /// by token in one array (a count per token, then a pass in expert order), not a dictionary of
    /// arrays: at V3's 4,096 terms per batch the dictionary cost as much as the additions.
    private static func addExpertOutputs(_ outputs: [[Float]], of batch: [Int], assigned: [[(token: Int, weight: Float)]], width h: Int,
                                         into partial: inout [Float]) {
        let tokens = partial.count / max(1, h)
        var counted = [Int](repeating: 0, count: tokens + 1)
        for expert in batch { for entry in assigned[expert] { counted[entry.token + 1] += 1 } }
        for i in 0..<tokens { counted[i + 1] += counted[i] }
        let start = counted
        var filled = start
        var terms = [(output: Int, row: Int, weight: Float)](repeating: (0, 0, 0), count: start[tokens])
        for (index, expert) in batch.enumerated() {
            for (row, entry) in assigned[expert].enumerated() {
                terms[filled[entry.token]] = (index, row, entry.weight)
                filled[entry.token] += 1
            }
        }
        partial.withUnsafeMutableBufferPointer { pp in terms.withUnsafeBufferPointer { tp in
            let target = SharedPointer(pp.baseAddress!)
            Parallel.forEach(tokens) { token in
                let destination = target.pointer + token * h
                for term in tp[start[token]..<start[token + 1]] {
                    outputs[term.output].withUnsafeBufferPointer { y in
                        let source = y.baseAddress! + term.row * h, weight = term.weight
                        for j in 0..<h { destination[j] += source[j] * weight }
                    }
                }
            }
        } }
    }

    /// The rows `tokens` of x[.., h], copied row by row into an array not zeroed first.
    static func gather<Tokens: Collection<Int>>(_ tokens: Tokens, of x: [Float], width h: Int) -> [Float] {
        [Float](unsafeUninitializedCapacity: tokens.count * h) { buffer, count in
            x.withUnsafeBufferPointer { xp in
                for (r, token) in tokens.enumerated() {
                    precondition(token >= 0 && (token + 1) * h <= xp.count, "row \(token) of \(xp.count / max(1, h))")
                    (buffer.baseAddress! + r * h).initialize(from: xp.baseAddress! + token * h, count: h)
                }
            }
            count = tokens.count * h
        }
    }

    /// Routed experts `experts` of MoE layer `layer`, each on all `count` rows of `x` [count, hidden]
    /// (computed as a routed expert always is: as stored, one expert per core): [count, hidden] each.
    public func expertOutputs(_ experts: [Int], layer: Int, rows x: [Float], count: Int) throws -> [[Float]] {
        let began = DispatchTime.now()
        defer { countTotal(since: began) }
        let total = config.nRoutedExperts ?? 0
        precondition(config.isMoELayer(layer) && experts.allSatisfy { (0..<total).contains($0) } && x.count == count * config.hiddenSize,
                     "experts \(experts) of layer \(layer) on \(count) rows")
        var assigned = [[(token: Int, weight: Float)]](repeating: [], count: total)
        let rows = (0..<count).map { (token: $0, weight: Float(1)) }
        for expert in experts { assigned[expert] = rows }
        return try routedExperts(experts, x: x, assigned: assigned, layer: layer, intermediate: config.moeIntermediateSize)
    }

    /// Each expert's MLP on the rows routed to it, the experts spread over the cores; the reading
    /// time counted is the tasks' total over the cores used (its share of the wall time).
    private func routedExperts(_ experts: [Int], x: [Float], assigned: [[(token: Int, weight: Float)]], layer: Int, intermediate m: Int) throws -> [[Float]] {
        let h = config.hiddenSize
        let results = Mutex<[Int: Result<([Float], Double), Error>]>([:])
        // Largest first, so the last expert to finish is a small one.
        let order = experts.indices.sorted { (assigned[experts[$0]].count, $1) > (assigned[experts[$1]].count, $0) }
        BLASThreads.withSingleThread {
            Parallel.forEach(experts.count) { n in
                let i = order[n]
                let rows = assigned[experts[i]]
                let gathered = Self.gather(rows.lazy.map(\.token), of: x, width: h)
                let result = Result { try mlpProducts(gathered, rows: rows.count, layer: layer, block: .expert(experts[i]), intermediate: m, asStored: true) }
                results.withLock { $0[i] = result }
            }
        }
        let done = try results.withLock { r in try experts.indices.map { try r[$0]!.get() } }
        timing.weightSeconds += done.reduce(0) { $0 + $1.1 } / Double(min(Parallel.threads, max(1, experts.count)))
        return done.map(\.0)
    }
}
