import DeepSeekModel
import Foundation
import ReferenceModel

extension DriftReport {
    /// The first multi-token-prediction layer's drift: every stage converts it (engines load it for
    /// speculative decoding), and the main logits never use it. Reported, not judged: a draft that
    /// drifted changes how many drafts an engine accepts, never what it outputs.
    public struct MTP: Codable, Sendable, Equatable {
        /// The MTP layer's index (`num_hidden_layers`).
        public var layer: Int
        /// Predicted positions: batch × (seq − 1), position i predicting token i + 2.
        public var positions: Int
        /// The drafts' logits against the reference's, measured as the main logits are.
        public var logits: Logits
        /// The share of the layer's (token, expert) selections kept (nil: a dense MTP layer).
        public var routingAgreement: Double?
        /// The KV cache the candidate's MTP layer ran with: its format, or "none" (fp32; also under an
        /// mla-kv6c declaration without the MTP layer's channels).
        public var candidateKVCache: String

        enum CodingKeys: String, CodingKey {
            case layer, positions, logits
            case routingAgreement = "routing_agreement"
            case candidateKVCache = "candidate_kv_cache"
        }

        /// The table's line.
        var line: String {
            var text = "MTP layer \(layer)  " + logits.summary
            if let routingAgreement { text += String(format: "   routing %.4f", routingAgreement) }
            let drafts = positions == 1 ? "1 draft" : "\(positions) drafts"
            let cache = candidateKVCache == "none" ? "none (fp32)" : candidateKVCache
            return text + "  (\(drafts) of token i + 2, KV cache \(cache); reported, not judged)"
        }
    }
}

/// Runs the first MTP layer of both models after their main stacks and measures its drift.
enum MTPDrift {
    /// Whether `measure` will run: both models hold an MTP layer and the sequences have two tokens or more.
    static func applies(_ rf: ReferenceForward, _ cf: ReferenceForward, tokens: [[Int]]) -> Bool {
        rf.config.mtpLayerCount > 0 && cf.config.mtpLayerCount > 0 && tokens[0].count >= 2
    }

    /// Why the MTP layer is not compared when a model holds one: the other holds none (a conversion that
    /// dropped it, or a checkpoint saved without it), or the sequences leave it no position; nil otherwise.
    static func notCompared(reference: LoadedModel, candidate: LoadedModel, tokens: [[Int]]) -> String? {
        let r = reference.config.mtpLayerCount, c = candidate.config.mtpLayerCount
        if (r == 0) != (c == 0) {
            return "the MTP layer is not compared: the reference holds the weights of \(r) MTP layer(s), the candidate of \(c)"
        }
        if r > 0, tokens[0].count < 2 {
            return "the MTP layer is not compared: sequences of one token leave it no position (position i reads token i + 1)"
        }
        return nil
    }

    /// nil unless both models hold an MTP layer and the sequences have two tokens or more. Each model's
    /// MTP layer reads its own final hidden state, as an engine running it would.
    /// The experts of an MoE MTP layer that no token chose are probed as the main stack's (`probes`).
    static func measure(_ rf: ReferenceForward, _ cf: ReferenceForward, tokens: [[Int]], referenceFinal: [Float], candidateFinal: [Float],
                        probes: inout ExpertProbes, progress: ((String) -> Void)?) throws -> DriftReport.MTP? {
        guard applies(rf, cf, tokens: tokens) else { return nil }
        progress?("validate: MTP layer (reference)")
        guard let r = try rf.mtpPass(tokens: tokens, final: referenceFinal, keepingExpertInputRows: ExpertProbes.rows) else { return nil }
        progress?("validate: MTP layer (candidate)")
        guard let c = try cf.mtpPass(tokens: tokens, final: candidateFinal) else { return nil }
        if let input = r.expertInput, let rr = r.routing, let cr = c.routing {
            progress?("validate: MTP layer (experts no token chose)")
            try probes.probe(input, reference: rf, candidate: cf, referenceRouting: rr, candidateRouting: cr)
        }
        let logits = Validator.logitDrift(r.logits, c.logits, vocab: rf.config.vocabSize)
        let routing = r.routing.flatMap { a in c.routing.map { DriftMetrics.routingAgreement(reference: a, candidate: $0) } }
        let cache = cf.kvCache.flatMap { $0.codec(layer: r.layer) == nil ? nil : $0.format.rawValue } ?? "none"
        return .init(layer: r.layer, positions: r.batch * r.sequenceLength, logits: logits, routingAgreement: routing, candidateKVCache: cache)
    }
}
