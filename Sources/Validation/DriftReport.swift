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
    /// The largest relative error allowed for an expert no token chose, run on the same rows in both models.
    public var maxExpertRelativeError: Double?

    enum CodingKeys: String, CodingKey {
        case maxLogitDelta = "max_logit_delta"
        case maxKLMean = "max_kl_mean"
        case maxKLMax = "max_kl_max"
        case minTop1Agreement = "min_top1_agreement"
        case minRoutingAgreement = "min_routing_agreement"
        case maxPerplexityRatio = "max_perplexity_ratio"
        case maxExpertRelativeError = "max_expert_relative_error"
    }

    public init(maxLogitDelta: Double? = nil, maxKLMean: Double? = nil, maxKLMax: Double? = nil, minTop1Agreement: Double? = nil,
                minRoutingAgreement: Double? = nil, maxPerplexityRatio: Double? = nil, maxExpertRelativeError: Double? = nil) {
        self.maxLogitDelta = maxLogitDelta
        self.maxKLMean = maxKLMean
        self.maxKLMax = maxKLMax
        self.minTop1Agreement = minTop1Agreement
        self.minRoutingAgreement = minRoutingAgreement
        self.maxPerplexityRatio = maxPerplexityRatio
        self.maxExpertRelativeError = maxExpertRelativeError
    }

    /// Defaults for `validate` without threshold options: loose enough for a sound lossy conversion
    /// (FP8 weights on the trained fixture), tight enough that a broken fold or a lost scale fails.
    /// An unchosen expert's relative error is 0.006-0.055 after FP8 (E4M3 keeps 3 mantissa bits:
    /// ~3.6% rms per weight, three products in a row) on every fixture; 0.25 is over four times that,
    /// and an expert whose scale was lost, whose weights were swapped with another's or zeroed is at
    /// about 1 or more.
    public static let defaults = DriftThresholds(maxKLMean: 0.01, maxKLMax: 0.5, minTop1Agreement: 0.9, minRoutingAgreement: 0.8,
                                                 maxPerplexityRatio: 1.05, maxExpertRelativeError: 0.25)
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

    public struct Logits: Codable, Sendable, Equatable {
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

        /// The figures as the table prints them.
        var summary: String {
            String(format: "max |Δ| %.3e   KL mean %.3e nats   KL max %.3e nats   KL 99%% %.3e nats   top-1 %.4f",
                   maxAbsDelta, klMean, klMax, klP99, top1Agreement)
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

    /// Where the side-by-side forward passes' time went (both models together): reading weights
    /// (page faults, widening and FP8 dequantization included) and computing, and what the prefetch
    /// thread read meanwhile. Measurements of this run: not part of the verdict, never printed on stdout.
    public struct Timing: Codable, Sendable {
        public var wallSeconds: Double
        public var weightSeconds: Double
        public var computeSeconds: Double
        public var prefetchedBytes: Int
        public var prefetchSeconds: Double
        /// The prefetch thread's page faults that waited for the disk (its reads map pages): part of
        /// the process's count, not waits of the forward passes.
        public var prefetchDiskFaults: Int

        enum CodingKeys: String, CodingKey {
            case wallSeconds = "wall_seconds"
            case weightSeconds = "weight_seconds"
            case computeSeconds = "compute_seconds"
            case prefetchedBytes = "prefetched_bytes"
            case prefetchSeconds = "prefetch_seconds"
            case prefetchDiskFaults = "prefetch_disk_faults"
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
    /// Routed experts exercised, and the drift of those no token chose (nil: no MoE layer).
    public var experts: Experts?
    /// The first MTP layer's drift (nil: a model without one, or sequences of one token).
    public var mtp: MTP?
    /// What the comparison left out and why, in plain words (nil: nothing).
    public var notes: [String]?
    public var thresholds: DriftThresholds
    public var verdict: Verdict
    public var timing: Timing?

    enum CodingKeys: String, CodingKey {
        case reference, candidate, tokens
        case candidateKVCache = "candidate_kv_cache"
        case batch
        case sequenceLength = "sequence_length"
        case hiddenStates = "hidden_states"
        case logits, routing, perplexity
        case fanOut = "fan_out"
        case experts, mtp, notes
        case thresholds, verdict, timing
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
        lines.append("logits       " + logits.summary)
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
        if let experts { lines.append(experts.line) }
        if let mtp { lines.append(mtp.line) }
        for note in notes ?? [] { lines.append("note         " + note) }
        lines.append("")
        lines.append(verdict.passed ? "PASS: within thresholds" : "FAIL: " + verdict.failures.joined(separator: "; "))
        return lines.joined(separator: "\n")
    }
}

/// Runs reference and candidate side by side and measures the drift.
public enum Validator {
    /// The two forward passes, stepped layer by layer together: each hidden state is compared as soon
    /// as both models have produced it, so memory holds two residual streams, not every layer's.
    struct SideBySide {
        var logits: DriftReport.Logits
        /// Each model's perplexity on the tokens themselves, when asked for (from the logits as computed).
        var ownPerplexity: (reference: Double, candidate: Double)?
        var referenceRouting: [RoutingRecord]
        var candidateRouting: [RoutingRecord]
        var experts: DriftReport.Experts?
        var mtp: DriftReport.MTP?
        var layers: [DriftReport.Layer]
        var timing: DriftReport.Timing
    }

    public static func compare(reference: LoadedModel, candidate: LoadedModel, tokens: [[Int]], tokensLabel: String,
                               heldout: (tokens: [[Int]], label: String)?, thresholds: DriftThresholds,
                               perplexityOnTokens: Bool = false, progress: ((String) -> Void)? = nil) throws -> DriftReport {
        try checkComparable(reference, candidate)
        let rc = reference.config, cc = candidate.config
        let run = try sideBySide(reference, candidate, tokens: tokens, label: tokensLabel, perplexityOnTokens: perplexityOnTokens,
                                 progress: progress)
        let logits = run.logits
        let routing = routingDrift(run.referenceRouting, run.candidateRouting)
        var perplexity: DriftReport.Perplexity?
        if let (rp, cp) = run.ownPerplexity {
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
        return DriftReport(reference: reference.label, candidate: candidate.label, tokens: tokensLabel,
                           candidateKVCache: candidate.kvCache?.format.rawValue ?? "none", batch: tokens.count,
                           sequenceLength: tokens[0].count, hiddenStates: run.layers, logits: logits, routing: routing,
                           perplexity: perplexity, fanOut: candidate.placement.map { fanOut($0, run.candidateRouting) }, experts: run.experts,
                           mtp: run.mtp, notes: MTPDrift.notCompared(reference: reference, candidate: candidate, tokens: tokens).map { [$0] },
                           thresholds: thresholds, verdict: verdict(thresholds, logits: logits, routing: routing, perplexity: perplexity, experts: run.experts),
                           timing: run.timing)
    }

    /// The models must have the same shape where the comparison pairs their parts: the vocabulary,
    /// the width, the layers, and which layers are MoE with how many experts of which width (the
    /// routing, the probes and the MTP layer are compared layer by layer, expert by expert).
    static func checkComparable(_ reference: LoadedModel, _ candidate: LoadedModel) throws {
        let rc = reference.config, cc = candidate.config
        let fields: [(String, Int, Int)] = [
            ("vocab_size", rc.vocabSize, cc.vocabSize), ("hidden_size", rc.hiddenSize, cc.hiddenSize),
            ("num_hidden_layers", rc.numHiddenLayers, cc.numHiddenLayers), ("n_routed_experts", rc.nRoutedExperts ?? 0, cc.nRoutedExperts ?? 0),
            ("num_experts_per_tok", rc.numExpertsPerTok ?? 0, cc.numExpertsPerTok ?? 0),
            ("moe_intermediate_size", rc.moeIntermediateSize, cc.moeIntermediateSize),
            ("first_k_dense_replace", rc.firstKDenseReplace, cc.firstKDenseReplace), ("moe_layer_freq", rc.moeLayerFreq, cc.moeLayerFreq),
        ]
        let differing = fields.filter { $0.1 != $0.2 }
        guard differing.isEmpty else {
            throw ValidationError.incompatibleModels(reference: reference.label, candidate: candidate.label,
                                                     reason: differing.map { "\($0.0) \($0.1) and \($0.2)" }.joined(separator: ", "))
        }
    }

    /// Both forward passes, layer by layer in lockstep; hidden state i compared when both have it
    /// (the last one after the final norm, as transformers reports it).
    static func sideBySide(_ reference: LoadedModel, _ candidate: LoadedModel, tokens: [[Int]], label: String,
                           perplexityOnTokens: Bool = false, progress: ((String) -> Void)?) throws -> SideBySide {
        let width = reference.config.hiddenSize, count = reference.config.numHiddenLayers
        func drift(_ index: Int, _ a: [Float], _ b: [Float]) throws -> DriftReport.Layer {
            let cos = DriftMetrics.rowCosines(reference: a, candidate: b, width: width)
            // Both passes' outputs are finite (they refuse NaN and Inf), so this is infinite only
            // where the reference's state is all zero and the candidate's is not.
            let relative = DriftMetrics.relativeError(reference: a, candidate: b)
            guard relative.isFinite else { throw ValidationError.hiddenDriftNotFinite(model: reference.label, index: index) }
            return DriftReport.Layer(index: index, relativeError: relative, cosineMean: cos.mean, cosineMin: cos.min)
        }
        let began = DispatchTime.now()
        let rf = reference.forward(), cf = candidate.forward()
        var r = try rf.start(tokens: tokens, source: label), c = try cf.start(tokens: tokens, source: label)
        var layers = [try drift(0, r.hidden, c.hidden)]
        var probes = ExpertProbes(referenceLabel: reference.label, candidateLabel: candidate.label)
        rf.prefetch(layer: 0)
        for layer in 0..<count {
            // Each model's next weights are read while the other computes.
            cf.prefetch(layer: layer)
            progress?("validate: layer \(layer + 1)/\(count) (reference)")
            try rf.runLayer(&r, keepingExpertInputRows: ExpertProbes.rows)
            rf.prefetch(layer: layer + 1)
            progress?("validate: layer \(layer + 1)/\(count) (candidate)")
            try cf.runLayer(&c)
            if reference.config.isMoELayer(layer), let input = r.expertInput, let rr = r.routing.last, let cr = c.routing.last {
                // checkComparable made the two models' MoE layers the same.
                precondition(input.layer == layer && rr.layer == layer && cr.layer == layer, "layer \(layer)'s routing paired")
                progress?("validate: layer \(layer + 1)/\(count) (experts no token chose)")
                try probes.probe(input, reference: rf, candidate: cf, referenceRouting: rr, candidateRouting: cr)
            }
            if layer < count - 1 { layers.append(try drift(layer + 1, r.hidden, c.hidden)) }
        }
        cf.prefetch(layer: count)
        // The MTP layers are read while the heads compute.
        if MTPDrift.applies(rf, cf, tokens: tokens) { rf.prefetchMTP(); cf.prefetchMTP() }
        let ends = try finishBoth(rf, r, cf, c, tokens: tokens, perplexityOnTokens: perplexityOnTokens)
        layers.append(try drift(count, ends.referenceFinal, ends.candidateFinal))
        let mtp = try MTPDrift.measure(rf, cf, tokens: tokens, referenceFinal: ends.referenceFinal, candidateFinal: ends.candidateFinal,
                                       probes: &probes, progress: progress)
        let prefetched = reference.weights.prefetchTotals() + candidate.weights.prefetchTotals()
        ReferenceForward.releaseBuffers()
        let timing = DriftReport.Timing(wallSeconds: Double(DispatchTime.now().uptimeNanoseconds - began.uptimeNanoseconds) / 1e9,
                                        weightSeconds: rf.timing.weightSeconds + cf.timing.weightSeconds,
                                        computeSeconds: rf.timing.computeSeconds + cf.timing.computeSeconds,
                                        prefetchedBytes: prefetched.bytes, prefetchSeconds: prefetched.seconds, prefetchDiskFaults: prefetched.diskFaults)
        return SideBySide(logits: ends.logits, ownPerplexity: ends.perplexity, referenceRouting: r.routing, candidateRouting: c.routing,
                          experts: r.routing.isEmpty ? nil : probes.report, mtp: mtp, layers: layers, timing: timing)
    }

    /// Both models' final norm and logits, measured at once: the logits ([tokens, vocab] each, 265 MB at
    /// V3's vocabulary and 512 tokens) are freed before the MTP layers run.
    private static func finishBoth(_ rf: ReferenceForward, _ r: ReferenceForward.State, _ cf: ReferenceForward, _ c: ReferenceForward.State,
                                   tokens: [[Int]], perplexityOnTokens: Bool)
        throws -> (referenceFinal: [Float], candidateFinal: [Float], logits: DriftReport.Logits, perplexity: (Double, Double)?) {
        let (rFinal, rLogits) = try rf.finish(r), (cFinal, cLogits) = try cf.finish(c)
        let vocab = rf.config.vocabSize
        // A text: its own next-token perplexity, from the logits just computed.
        let perplexity = perplexityOnTokens && tokens[0].count > 1
            ? (DriftMetrics.perplexity(logits: rLogits, tokens: tokens, vocab: vocab), DriftMetrics.perplexity(logits: cLogits, tokens: tokens, vocab: vocab))
            : nil
        return (rFinal, cFinal, logitDrift(rLogits, cLogits, vocab: vocab), perplexity)
    }

    static func logitDrift(_ reference: [Float], _ candidate: [Float], vocab: Int) -> DriftReport.Logits {
        let (kl, top1) = DriftMetrics.klAndTop1(reference: reference, candidate: candidate, vocab: vocab)
        return DriftReport.Logits(maxAbsDelta: DriftMetrics.maxAbsDifference(reference, candidate),
                                  klMean: kl.reduce(0, +) / Double(kl.count), klMax: kl.max() ?? 0,
                                  klP99: DriftMetrics.percentile(kl, 0.99),
                                  top1Agreement: Double(top1.filter { $0 }.count) / Double(top1.count))
    }

    /// The share of (token, expert) selections kept, overall and per MoE layer.
    static func routingDrift(_ reference: [RoutingRecord], _ candidate: [RoutingRecord]) -> DriftReport.Routing? {
        guard !reference.isEmpty, reference.count == candidate.count else { return nil }
        var perLayer: [String: Double] = [:]
        var kept = 0.0, total = 0.0
        for (a, b) in zip(reference, candidate) {
            precondition(a.layer == b.layer, "routing of layer \(a.layer) paired with layer \(b.layer)")
            let agreement = DriftMetrics.routingAgreement(reference: a, candidate: b)
            perLayer[String(a.layer)] = agreement
            kept += agreement * Double(a.experts.count)
            total += Double(a.experts.count)
        }
        return DriftReport.Routing(agreement: total == 0 ? 1 : kept / total, perLayer: perLayer)
    }

    /// How many devices each token's experts sit on, for a sharded candidate.
    static func fanOut(_ placement: ExpertPlacement, _ routing: [RoutingRecord]) -> DriftReport.FanOut {
        let layers = routing.map { record -> DriftReport.FanOut.Layer in
            let tokens = record.experts.count / max(record.k, 1)
            let counts = (0..<tokens).map { i in Set(record.experts[(i * record.k)..<((i + 1) * record.k)].map { placement.device(ofExpert: Int($0)) }).count }
            return .init(layer: record.layer, max: counts.max() ?? 0, mean: Double(counts.reduce(0, +)) / Double(max(tokens, 1)))
        }
        return .init(devices: placement.devices, deviceBoundM: placement.deviceBoundM, max: layers.map(\.max).max() ?? 0,
                     mean: layers.isEmpty ? 0 : layers.map(\.mean).reduce(0, +) / Double(layers.count), perLayer: layers)
    }

    /// Each failure with how far past its limit it is, the worst named first.
    static func verdict(_ thresholds: DriftThresholds, logits: DriftReport.Logits, routing: DriftReport.Routing?,
                        perplexity: DriftReport.Perplexity?, experts: DriftReport.Experts?) -> DriftReport.Verdict {
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
        if let experts, let largest = experts.relativeErrorMax, let worst = experts.worst.first {
            over(largest, thresholds.maxExpertRelativeError, "unchosen expert's relative error (layer \(worst.layer) expert \(worst.expert))")
        }
        failures.sort { $0.0 > $1.0 }
        return .init(passed: failures.isEmpty, failures: failures.map(\.1))
    }
}
