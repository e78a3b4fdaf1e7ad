import DeepSeekModel
import Foundation
import Numerics

/// What the first multi-token-prediction layer predicts for a batch: at position i of each sequence,
/// from the main model's final hidden state at i and the embedding of token i + 1, the logits of
/// token i + 2 (the draft an engine's speculative decoding proposes).
public struct MTPResult: Sendable {
    /// The MTP layer's index (`num_hidden_layers`).
    public let layer: Int
    public let batch: Int
    /// Positions per sequence: the sequence length less one (the last position has no token i + 1).
    public let sequenceLength: Int
    /// [batch, sequenceLength, vocab]
    public let logits: [Float]
    /// The layer's routing.
    public let routing: RoutingRecord?
    /// Rows of its MoE input, when asked for (`mtpPass(tokens:final:keepingExpertInputRows:)`).
    public let expertInput: ReferenceForward.ExpertInput?
}

extension ReferenceForward {
    /// Starts reading the first MTP layer's weights in the order its pass uses them: its norms and
    /// eh_proj, its decoder block and, with `head`, the head's norm and the head (never its embedding
    /// table, of which only the batch's rows are read). Names already queued stay queued once.
    public func prefetchMTP(head: Bool = true) {
        guard let layer = config.mtpLayers.first else { return }
        func name(_ weight: LayerWeight) -> String { TensorNames.name(weight, layer: layer) }
        weights.prefetch([name(.mtpEmbeddingNorm), name(.mtpHiddenNorm), name(.mtpProjection)] + decoderTensorNames(layer)
                         + (head ? [name(.mtpHeadNorm), name(.mtpHead)] : []))
    }

    /// The first MTP layer's pass over `tokens`, given `final`, the main model's last hidden state
    /// after its final norm ([batch · seq, hidden], `finish`'s): nil when the model has no MTP layer
    /// or the sequences are shorter than two tokens.
    ///
    /// As vLLM's and SGLang's DeepSeek MTP modules compute it (DeepSeek-V3's report, §2.2, with the
    /// halves in the order these engines, which serve the published weights, put them; the report
    /// writes them the other way round): x = eh_proj · [enorm(E[t_{i+1}]);
    /// hnorm(final_i)], with E the layer's own `embed_tokens`; then the layer's decoder block at
    /// positions 0 ..< seq − 1 (RoPE position i, causal over the MTP layer's own cache), its own
    /// `shared_head.norm` and `shared_head.head`. The engines pass the main model's hidden state after
    /// its final norm (what their logits processor reads), and so does this; vLLM also zeroes the
    /// embedding at position 0, which SGLang does not: neither is done here. The KV cache applies to it
    /// as to every layer (under mla-kv6c declared without the MTP layer's channels, its cache is fp32).
    public func mtpPass(tokens: [[Int]], final: [Float], keepingExpertInputRows: Int = 0) throws -> MTPResult? {
        let began = DispatchTime.now()
        defer { countTotal(since: began) }
        guard let block = try mtpBlock(tokens: tokens, final: final, head: true, keepingExpertInputRows: keepingExpertInputRows) else { return nil }
        let h = config.hiddenSize, rows = block.batch * block.positions
        let out = Elementwise.rmsNorm(block.hidden, width: h, gamma: try load(TensorNames.name(.mtpHeadNorm, layer: block.layer), [h]), eps: config.rmsNormEps)
        let logits = try phase(.head) { try vocabularyProjection(out, rows: rows, head: TensorNames.name(.mtpHead, layer: block.layer)) }
        guard logits.allSatisfy(\.isFinite) else { throw ReferenceModelError.nonFiniteOutput(model: weights.label, what: "MTP logits") }
        return MTPResult(layer: block.layer, batch: block.batch, sequenceLength: block.positions, logits: logits, routing: block.routing,
                         expertInput: block.kept)
    }

    /// The first MTP layer up to its head: eh_proj of the two normalized halves and the decoder block,
    /// [batch · (seq − 1), hidden] (nil as for `mtpPass`). `final` must be [batch · seq, hidden]. Its
    /// weights are read ahead once it runs, with the head's when `head` (the caller's next step).
    func mtpBlock(tokens: [[Int]], final: [Float], head: Bool, keepingExpertInputRows: Int = 0) throws
        -> (layer: Int, batch: Int, positions: Int, hidden: [Float], routing: RoutingRecord?, kept: ExpertInput?)? {
        guard let layer = config.mtpLayers.first, let seq = tokens.first?.count, seq >= 2 else { return nil }
        let h = config.hiddenSize, batch = tokens.count, positions = seq - 1, t = batch * positions
        guard final.count == batch * seq * h else {
            throw ReferenceModelError.invalidTokens(path: "MTP layer", reason: "a final hidden state of \(final.count / max(h, 1)) rows for \(batch) x \(seq) tokens")
        }
        prefetchMTP(head: head)
        func name(_ weight: LayerWeight) -> String { TensorNames.name(weight, layer: layer) }
        let embedded = try phase(.embedding) { try embeddingRows(tokens.flatMap { $0.dropFirst() }, table: name(.mtpEmbedding)) }
        let previous = Self.gather((0..<batch).lazy.flatMap { b in (0..<positions).lazy.map { b * seq + $0 } }, of: final, width: h)
        let e = Elementwise.rmsNorm(embedded, width: h, gamma: try load(name(.mtpEmbeddingNorm), [h]), eps: config.rmsNormEps)
        let p = Elementwise.rmsNorm(previous, width: h, gamma: try load(name(.mtpHiddenNorm), [h]), eps: config.rmsNormEps)
        var joined = [Float](repeating: 0, count: t * 2 * h)
        for i in 0..<t {
            joined.replaceSubrange((2 * i * h)..<((2 * i + 1) * h), with: e[(i * h)..<((i + 1) * h)])
            joined.replaceSubrange(((2 * i + 1) * h)..<((2 * i + 2) * h), with: p[(i * h)..<((i + 1) * h)])
        }
        var hidden = Linear.forward(joined, rows: t, weight: try matrix(name(.mtpProjection), [h, 2 * h]), inFeatures: 2 * h, outFeatures: h)
        let (routing, kept) = try decoderLayer(&hidden, layer: layer, batch: batch, seq: positions, keepingExpertInputRows: keepingExpertInputRows)
        return (layer, batch, positions, hidden, routing, kept)
    }
}
