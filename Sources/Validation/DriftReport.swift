import ReferenceModel
import DeepSeekModel
import Foundation
import Numerics
import SafeTensors

/// Limits a candidate must stay within. A nil limit is not checked.
public struct DriftThresholds: Codable, Equatable, Sendable {
    public var maxLogitDelta: Double?
    public var maxKLMean: Double?
    public var maxKLMax: Double?
    public var minTop1Agreement: Double?
    public var minRoutingAgreement: Double?
    public var maxPerplexityRatio: Double?

    enum CodingKeys: String, CodingKey {
        case maxLogitDelta = "max_logit_delta"
        case maxKLMean = "max_kl_mean"
        case maxKLMax = "max_kl_max"
        case minTop1Agreement = "min_top1_agreement"
        case minRoutingAgreement = "min_routing_agreement"
        case maxPerplexityRatio = "max_perplexity_ratio"
    }

    public init(maxLogitDelta: Double? = nil, maxKLMean: Double? = nil, maxKLMax: Double? = nil, minTop1Agreement: Double? = nil,
                minRoutingAgreement: Double? = nil, maxPerplexityRatio: Double? = nil) {
        self.maxLogitDelta = maxLogitDelta
        self.maxKLMean = maxKLMean
        self.maxKLMax = maxKLMax
        self.minTop1Agreement = minTop1Agreement
        self.minRoutingAgreement = minRoutingAgreement
        self.maxPerplexityRatio = maxPerplexityRatio
    }

    /// Defaults for `validate` without threshold options: loose enough for a sound lossy conversion
    /// (FP8 weights on the trained fixture), tight enough that a broken fold or a lost scale fails.
    public static let defaults = DriftThresholds(maxKLMean: 0.01, maxKLMax: 0.5, minTop1Agreement: 0.9, minRoutingAgreement: 0.8,
                                                 maxPerplexityRatio: 1.05)
}

/// `dsconvert validate`'s findings (Schemas/validate.schema.json).
public struct DriftReport: Codable, Sendable {
    public struct Layer: Codable, Sendable {
        public var index: Int
        public var relativeError: Double
        public var cosineMean: Double
        public var cosineMin: Double

        enum CodingKeys: String, CodingKey {
            case index
            case relativeError = "relative_error"
            case cosineMean = "cosine_mean"
            case cosineMin = "cosine_min"
        }
    }

    public struct Logits: Codable, Sendable {
        public var maxAbsDelta: Double
        public var klMean: Double
        public var klMax: Double
        /// The 99th percentile of the per-token KL (nearest rank), as `llama-perplexity --kl-divergence` reports it.
        public var klP99: Double
        public var top1Agreement: Double

        enum CodingKeys: String, CodingKey {
            case maxAbsDelta = "max_abs_delta"
            case klMean = "kl_mean"
            case klMax = "kl_max"
            case klP99 = "kl_p99"
            case top1Agreement = "top1_agreement"
        }
    }

    public struct Routing: Codable, Sendable {
        public var agreement: Double
        public var perLayer: [String: Double]

        enum CodingKeys: String, CodingKey {
            case agreement
            case perLayer = "per_layer"
        }
    }

    public struct Perplexity: Codable, Sendable {
        public var source: String
        public var tokens: Int
        public var reference: Double
        public var candidate: Double
        public var ratio: Double
    }

    /// How many devices each token's routed experts touch in the candidate's placement.
    public struct FanOut: Codable, Sendable {
        public struct Layer: Codable, Sendable {
            public var layer: Int
            public var max: Int
            public var mean: Double
        }
        public var devices: Int
        public var deviceBoundM: Int
        public var max: Int
        public var mean: Double
        public var perLayer: [Layer]

        enum CodingKeys: String, CodingKey {
            case devices
            case deviceBoundM = "device_bound_m"
            case max, mean
            case perLayer = "per_layer"
        }
    }

    public struct Verdict: Codable, Sendable {
        public var passed: Bool
        /// One line per exceeded threshold, worst (by how far past its limit) first.
        public var failures: [String]
    }

    public var reference: String
    public var candidate: String
    public var tokens: String
    /// The KV-cache format the candidate ran with ("none": fp32 cache).
    public var candidateKVCache: String
    public var batch: Int
    public var sequenceLength: Int
    /// hidden_states indices as transformers numbers them: 0 = embedding output, i = output of layer i-1.
    public var hiddenStates: [Layer]
    public var logits: Logits
    public var routing: Routing?
    public var perplexity: Perplexity?
    public var fanOut: FanOut?
    public var thresholds: DriftThresholds
    public var verdict: Verdict

    enum CodingKeys: String, CodingKey {
        case reference, candidate, tokens
        case candidateKVCache = "candidate_kv_cache"
        case batch
        case sequenceLength = "sequence_length"
        case hiddenStates = "hidden_states"
        case logits, routing, perplexity
        case fanOut = "fan_out"
        case thresholds, verdict
    }

    public func encoded() throws -> Data {
        try PrettyJSON.encode(self)
    }

    /// The drift table printed by `validate`.
    public func table() -> String {
        var lines = ["reference  \(reference)", "candidate  \(candidate) (KV cache: \(candidateKVCache))", "tokens     \(tokens) (\(batch) x \(sequenceLength))", ""]
        lines.append("hidden state  rel. error   cosine mean  cosine min")
        for l in hiddenStates {
            lines.append(String(format: "%12d  %10.3e  %11.8f  %10.8f", l.index, l.relativeError, l.cosineMean, l.cosineMin))
        }
        lines.append("")
        lines.append(String(format: "logits       max |Δ| %.3e   KL mean %.3e nats   KL max %.3e nats   KL 99%% %.3e nats   top-1 %.4f",
                            logits.maxAbsDelta, logits.klMean, logits.klMax, logits.klP99, logits.top1Agreement))
        if let routing {
            let layers = routing.perLayer.sorted { Int($0.key)! < Int($1.key)! }.map { String(format: "%@: %.4f", $0.key, $0.value) }.joined(separator: ", ")
            lines.append(String(format: "routing      agreement %.4f  (per layer %@)", routing.agreement, layers))
        }
        if let p = perplexity {
            lines.append(String(format: "perplexity   reference %.4f   candidate %.4f   ratio %.5f   (%d tokens of %@)", p.reference, p.candidate, p.ratio, p.tokens, p.source))
        }
        if let f = fanOut {
            let layers = f.perLayer.map { String(format: "%d: max %d mean %.2f", $0.layer, $0.max, $0.mean) }.joined(separator: ", ")
            lines.append(String(format: "fan-out      devices per token max %d mean %.3f of %d (bound M = %d)  (%@)", f.max, f.mean, f.devices, f.deviceBoundM, layers))
        }
        lines.append("")
        lines.append(verdict.passed ? "PASS: within thresholds" : "FAIL: " + verdict.failures.joined(separator: "; "))
        return lines.joined(separator: "\n")
    }
}

/// Runs reference and candidate side by side and measures the drift.
public enum Validator {
    public static func compare(reference: LoadedModel, candidate: LoadedModel, tokens: [[Int]], tokensLabel: String,
                               heldout: (tokens: [[Int]], label: String)?, thresholds: DriftThresholds,
                               perplexityOnTokens: Bool = false, progress: ((String) -> Void)? = nil) throws -> DriftReport {
        let rc = reference.config, cc = candidate.config
        guard rc.vocabSize == cc.vocabSize, rc.hiddenSize == cc.hiddenSize, rc.numHiddenLayers == cc.numHiddenLayers else {
            throw ValidationError.incompatibleModels(reason: "vocab, hidden size or layer count differ")
        }
        let r = try reference.forward().run(tokens: tokens, source: tokensLabel, recordHiddenStates: true) { progress?("reference \($0)") }
        let c = try candidate.forward().run(tokens: tokens, source: tokensLabel, recordHiddenStates: true) { progress?("candidate \($0)") }

        let layers = zip(r.hiddenStates, c.hiddenStates).enumerated().map { i, pair in
            let cos = DriftMetrics.rowCosines(reference: pair.0, candidate: pair.1, width: rc.hiddenSize)
            return DriftReport.Layer(index: i, relativeError: DriftMetrics.relativeError(reference: pair.0, candidate: pair.1),
                                     cosineMean: cos.mean, cosineMin: cos.min)
        }
        let (kl, top1) = DriftMetrics.klAndTop1(reference: r.logits, candidate: c.logits, vocab: rc.vocabSize)
        let logits = DriftReport.Logits(maxAbsDelta: DriftMetrics.maxAbsDifference(r.logits, c.logits),
                                        klMean: kl.reduce(0, +) / Double(kl.count), klMax: kl.max() ?? 0,
                                        klP99: DriftMetrics.percentile(kl, 0.99),
                                        top1Agreement: Double(top1.filter { $0 }.count) / Double(top1.count))
        var routing: DriftReport.Routing?
        if !r.routing.isEmpty, r.routing.count == c.routing.count {
            var perLayer: [String: Double] = [:]
            var kept = 0.0, total = 0.0
            for (a, b) in zip(r.routing, c.routing) {
                let agreement = DriftMetrics.routingAgreement(reference: a, candidate: b)
                perLayer[String(a.layer)] = agreement
                kept += agreement * Double(a.experts.count)
                total += Double(a.experts.count)
            }
            routing = DriftReport.Routing(agreement: total == 0 ? 1 : kept / total, perLayer: perLayer)
        }
        var perplexity: DriftReport.Perplexity?
        if perplexityOnTokens, tokens[0].count > 1 {
            // A text: its own next-token perplexity, from the logits already computed.
            let rp = DriftMetrics.perplexity(logits: r.logits, tokens: tokens, vocab: rc.vocabSize)
            let cp = DriftMetrics.perplexity(logits: c.logits, tokens: tokens, vocab: cc.vocabSize)
            perplexity = DriftReport.Perplexity(source: tokensLabel, tokens: tokens.count * (tokens[0].count - 1),
                                                reference: rp, candidate: cp, ratio: cp / rp)
        } else if let heldout {
            progress?("perplexity on \(heldout.label)")
            let rp = DriftMetrics.perplexity(logits: try reference.forward().run(tokens: heldout.tokens, source: heldout.label).logits,
                                             tokens: heldout.tokens, vocab: rc.vocabSize)
            let cp = DriftMetrics.perplexity(logits: try candidate.forward().run(tokens: heldout.tokens, source: heldout.label).logits,
                                             tokens: heldout.tokens, vocab: cc.vocabSize)
            perplexity = DriftReport.Perplexity(source: heldout.label, tokens: heldout.tokens.count * (heldout.tokens[0].count - 1),
                                                reference: rp, candidate: cp, ratio: cp / rp)
        }

        var fanOut: DriftReport.FanOut?
        if let placement = candidate.placement {
            let layers = c.routing.map { record -> DriftReport.FanOut.Layer in
                let tokens = record.experts.count / max(record.k, 1)
                let counts = (0..<tokens).map { i in Set(record.experts[(i * record.k)..<((i + 1) * record.k)].map { placement.device(ofExpert: Int($0)) }).count }
                return .init(layer: record.layer, max: counts.max() ?? 0, mean: Double(counts.reduce(0, +)) / Double(max(tokens, 1)))
            }
            fanOut = .init(devices: placement.devices, deviceBoundM: placement.deviceBoundM, max: layers.map(\.max).max() ?? 0,
                           mean: layers.isEmpty ? 0 : layers.map(\.mean).reduce(0, +) / Double(layers.count), perLayer: layers)
        }

        // Each failure with how far past its limit it is, so the worst can be named first.
        var failures: [(Double, String)] = []
        func over(_ value: Double, _ limit: Double?, _ text: String) {
            if let limit, !(value <= limit) { failures.append((limit == 0 ? .infinity : value / limit, String(format: "%@ %.4g > %.4g", text, value, limit))) }
        }
        func under(_ value: Double, _ limit: Double?, _ text: String) {
            if let limit, !(value >= limit) { failures.append(((1 - value) / max(1 - limit, 1e-12), String(format: "%@ %.4g < %.4g", text, value, limit))) }
        }
        over(logits.maxAbsDelta, thresholds.maxLogitDelta, "logits max |Δ|")
        over(logits.klMean, thresholds.maxKLMean, "KL mean")
        over(logits.klMax, thresholds.maxKLMax, "KL max")
        under(logits.top1Agreement, thresholds.minTop1Agreement, "top-1 agreement")
        if let routing { under(routing.agreement, thresholds.minRoutingAgreement, "routing agreement") }
        if let perplexity { over(perplexity.ratio, thresholds.maxPerplexityRatio, "perplexity ratio") }
        failures.sort { $0.0 > $1.0 }

        return DriftReport(reference: reference.label, candidate: candidate.label, tokens: tokensLabel,
                           candidateKVCache: candidate.kvCache?.rawValue ?? "none", batch: tokens.count,
                           sequenceLength: tokens[0].count, hiddenStates: layers, logits: logits, routing: routing,
                           perplexity: perplexity, fanOut: fanOut, thresholds: thresholds,
                           verdict: .init(passed: failures.isEmpty, failures: failures.map(\.1)))
    }
}
