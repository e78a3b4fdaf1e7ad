import Foundation

/// Errors of comparing two models (the forward passes' own errors are `ReferenceModelError`s).
public enum ValidationError: LocalizedError, Equatable, Sendable {
    case incompatibleModels(reference: String, candidate: String, reason: String)

    public var errorDescription: String? {
        switch self {
        case let .incompatibleModels(reference, candidate, reason):
            return "\(reference) and \(candidate) cannot be compared: \(reason)"
        }
    }
}
