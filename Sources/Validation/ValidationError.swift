import Foundation

/// Errors of comparing two models (the forward passes' own errors are `ReferenceModelError`s).
public enum ValidationError: LocalizedError, Equatable, Sendable {
    case incompatibleModels(reference: String, candidate: String, reason: String)
    /// An expert run on the probe rows gave an output whose drift has no finite measure.
    case expertDriftNotFinite(model: String, layer: Int, expert: Int, problem: ExpertOutputProblem)
    /// The reference's hidden state `index` is all zero and the candidate's is not: the drift
    /// relative to it has no finite measure (and JSON no number for it).
    case hiddenDriftNotFinite(model: String, index: Int)

    public var errorDescription: String? {
        switch self {
        case let .incompatibleModels(reference, candidate, reason):
            return "\(reference) and \(candidate) cannot be compared: \(reason)"
        case let .expertDriftNotFinite(model, layer, expert, problem):
            let what: String
            switch problem {
            case .notFinite: what = "gives an output that is not finite (NaN or Inf)"
            case .zeroInReference: what = "gives an all-zero output here while the candidate's is not: its drift has no finite measure"
            }
            return "\(model): routed expert \(expert) of layer \(layer), run on the probe rows, \(what)"
        case let .hiddenDriftNotFinite(model, index):
            return "\(model): hidden state \(index) is all zero while the candidate's is not: its drift has no finite measure"
        }
    }
}

/// Why an expert's drift on the probe rows could not be measured.
public enum ExpertOutputProblem: Equatable, Sendable {
    /// The named model's output holds a NaN or an infinity.
    case notFinite
    /// The reference's output is all zero (and the candidate's is not).
    case zeroInReference
}
