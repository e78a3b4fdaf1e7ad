import Foundation

/// Errors of comparing two models (the forward passes' own errors are `ReferenceModelError`s).
public enum ValidationError: LocalizedError, Equatable, Sendable {
    case incompatibleModels(reference: String, candidate: String, reason: String)
    /// An expert run on the probe rows gave an output whose drift has no finite measure (a NaN, or
    /// an all-zero output in the reference against a non-zero one).
    case expertDriftNotFinite(reference: String, candidate: String, layer: Int, expert: Int)

    public var errorDescription: String? {
        switch self {
        case let .incompatibleModels(reference, candidate, reason):
            return "\(reference) and \(candidate) cannot be compared: \(reason)"
        case let .expertDriftNotFinite(reference, candidate, layer, expert):
            return "\(candidate): routed expert \(expert) of layer \(layer), run on the probe rows, has no finite drift against \(reference) (its output is NaN, or the reference's is all zero and the candidate's is not)"
        }
    }
}
