import DeepSeekModel
import Foundation
import ReferenceModel

extension DriftReport {
    /// Which routed experts the comparison exercised, and the drift of the others. The forward passes
    /// reach only the experts some token chose: on a short sample many are chosen by none (V3 at
    /// 2 x 64 tokens: 1,024 choices over 256 experts per layer), and an expert the candidate broke
    /// would then pass unseen. So every expert that either model left unchosen is run in both models
    /// on the same rows of the reference's input to that layer, and its outputs compared.
    public struct Experts: Codable, Sendable, Equatable {
        /// One probed expert's drift.
        public struct Probe: Codable, Sendable, Equatable {
            public var layer: Int
            public var expert: Int
            /// ‖candidate − reference‖ / ‖reference‖ over the probe rows' outputs.
            public var relativeError: Double

            enum CodingKeys: String, CodingKey {
                case layer, expert
                case relativeError = "relative_error"
            }
        }

        public struct Layer: Codable, Sendable, Equatable {
            public var layer: Int
            /// Experts chosen by at least one token in both models.
            public var routed: Int
            public var probed: Int
            /// Rows of the layer's input each of its probed experts ran on (the MTP layer has one
            /// position less per sequence than the main stack).
            public var probeRows: Int
            /// The largest relative error of this layer's probed experts (nil: none probed).
            public var relativeErrorMax: Double?

            enum CodingKeys: String, CodingKey {
                case layer, routed, probed
                case probeRows = "probe_rows"
                case relativeErrorMax = "relative_error_max"
            }
        }

        /// Routed experts in the MoE layers run: the main stack's and the first MTP layer's when it ran
        /// (layers × n_routed_experts).
        public var total: Int
        public var routed: Int
        public var probed: Int
        /// The fewest rows of the reference's layer input a probed expert ran on (tokens spread evenly
        /// over the batch; 0: none probed).
        public var probeRows: Int
        /// The largest relative error of any probed expert (nil: none probed).
        public var relativeErrorMax: Double?
        /// The probed experts of largest relative error, worst first (at most `ExpertProbes.listed`).
        public var worst: [Probe]
        public var perLayer: [Layer]

        enum CodingKeys: String, CodingKey {
            case total, routed, probed
            case probeRows = "probe_rows"
            case relativeErrorMax = "relative_error_max"
            case worst
            case perLayer = "per_layer"
        }

        /// The table's line.
        var line: String {
            let fewest = perLayer.map(\.routed).min() ?? 0
            var text = "experts      routed to \(routed) of \(total) (every MoE layer at least \(fewest))"
            guard let largest = relativeErrorMax, let first = worst.first else { return text + "; none left to probe" }
            let most = perLayer.filter { $0.probed > 0 }.map(\.probeRows).max() ?? probeRows
            let rows = most == probeRows ? "\(probeRows)" : "\(probeRows)-\(most)"
            text += String(format: "; the other %d run on %@ rows in both: rel. error max %.3e (layer %d expert %d)",
                           probed, rows, largest, first.layer, first.expert)
            return text
        }
    }
}

/// Runs the experts no token chose, layer by layer as `validate` steps the two models.
struct ExpertProbes {
    /// Rows of the layer's input each probed expert runs on: enough that a broken row of a weight
    /// shows (each row of the output mixes all of them), few enough that probing an expert costs
    /// about what routing 32 tokens to it would.
    static let rows = 32
    /// Experts probed at once (their outputs are held together: 8 x 32 rows x hidden floats).
    static let batch = 8
    /// The worst probes listed in the report.
    static let listed = 8

    private(set) var layers: [DriftReport.Experts.Layer] = []
    private(set) var probes: [DriftReport.Experts.Probe] = []
    private var total = 0
    /// The models' labels, for errors.
    private let referenceLabel: String, candidateLabel: String

    init(referenceLabel: String, candidateLabel: String) {
        self.referenceLabel = referenceLabel
        self.candidateLabel = candidateLabel
    }

    /// Probes the experts of MoE layer `input.layer` that either model's routing left unchosen.
    mutating func probe(_ input: ReferenceForward.ExpertInput, reference: ReferenceForward, candidate: ReferenceForward,
                        referenceRouting: RoutingRecord, candidateRouting: RoutingRecord) throws {
        let experts = reference.config.nRoutedExperts ?? 0
        // A probe's output can only name its expert if the rows it ran on were finite.
        guard input.rows.allSatisfy(\.isFinite) else {
            throw ReferenceModelError.nonFiniteOutput(model: referenceLabel, what: "the input of layer \(input.layer) (an earlier layer's output)")
        }
        let chosen = Set(referenceRouting.experts).intersection(candidateRouting.experts)
        let unchosen = (0..<experts).filter { !chosen.contains(Int32($0)) }
        var largest: Double?
        for start in stride(from: 0, to: unchosen.count, by: Self.batch) {
            let batch = Array(unchosen[start..<min(start + Self.batch, unchosen.count)])
            let r = try reference.expertOutputs(batch, layer: input.layer, rows: input.rows, count: input.tokens.count)
            let c = try candidate.expertOutputs(batch, layer: input.layer, rows: input.rows, count: input.tokens.count)
            for (i, expert) in batch.enumerated() {
                for (label, output) in [(referenceLabel, r[i]), (candidateLabel, c[i])] where !output.allSatisfy(\.isFinite) {
                    throw ValidationError.expertDriftNotFinite(model: label, layer: input.layer, expert: expert, problem: .notFinite)
                }
                let error = DriftMetrics.relativeError(reference: r[i], candidate: c[i])
                guard error.isFinite else {
                    throw ValidationError.expertDriftNotFinite(model: referenceLabel, layer: input.layer, expert: expert, problem: .zeroInReference)
                }
                probes.append(.init(layer: input.layer, expert: expert, relativeError: error))
                largest = max(largest ?? error, error)
            }
        }
        total += experts
        layers.append(.init(layer: input.layer, routed: experts - unchosen.count, probed: unchosen.count, probeRows: input.tokens.count,
                            relativeErrorMax: largest))
    }


    var report: DriftReport.Experts {
        // Worst first; ties in layer and expert order.
        let worst = probes.sorted { ($0.relativeError, $1.layer, $1.expert) > ($1.relativeError, $0.layer, $0.expert) }
        let largest = probes.map(\.relativeError).max()
        return .init(total: total, routed: layers.reduce(0) { $0 + $1.routed }, probed: probes.count,
                     probeRows: layers.filter { $0.probed > 0 }.map(\.probeRows).min() ?? 0,
                     relativeErrorMax: largest, worst: Array(worst.prefix(Self.listed)), perLayer: layers)
    }
}
