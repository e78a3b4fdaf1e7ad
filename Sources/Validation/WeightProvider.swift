import DeepSeekModel
import Foundation
import SafeTensors

/// Errors of the reference forward pass and validation.
public enum ValidationError: LocalizedError, Equatable, Sendable {
    case wrongShape(file: String, tensor: String, expected: [Int], actual: [Int])
    case unreadableTensor(file: String, tensor: String, reason: String)
    case invalidTokens(path: String, reason: String)
    case incompatibleModels(reason: String)
    case nonFiniteOutput(model: String, what: String)

    public var errorDescription: String? {
        switch self {
        case let .wrongShape(file, tensor, expected, actual):
            return "\(file): tensor '\(tensor)' has shape \(actual), the forward pass needs \(expected)"
        case let .unreadableTensor(file, tensor, reason):
            return "\(file): tensor '\(tensor)': \(reason)"
        case let .invalidTokens(path, reason):
            return "\(path): invalid tokens: \(reason)"
        case let .incompatibleModels(reason):
            return "reference and candidate cannot be compared: \(reason)"
        case let .nonFiniteOutput(model, what):
            return "\(model): the forward pass produced NaN or Inf in \(what)"
        }
    }
}

/// Where the forward pass gets its weights, as fp32.
///
/// Each conversion stage's output gets its own provider (FP8 dequantizes per block, a sharded
/// output gathers experts from their devices); the forward pass only sees fp32 matrices.
public protocol WeightProvider: AnyObject {
    /// The weight `name` as fp32, row-major, checked to have `shape`.
    func floats(_ name: String, shape: [Int]) throws -> [Float]
    /// Lets go of any memory held for `name` after its last use.
    func release(_ name: String)
    /// A label for messages (the checkpoint directory).
    var label: String { get }
}

/// Weights read from a bf16/f16/f32 checkpoint through its memory mapping.
public final class CheckpointWeights: WeightProvider {
    public let checkpoint: Checkpoint
    public var label: String { checkpoint.directory.path }

    public init(checkpoint: Checkpoint) { self.checkpoint = checkpoint }

    public func floats(_ name: String, shape: [Int]) throws -> [Float] {
        guard let info = checkpoint.info(name) else {
            throw DeepSeekModelError.missingTensor(file: checkpoint.directory.path, tensor: name, expectedShape: shape)
        }
        guard info.shape == shape else {
            throw ValidationError.wrongShape(file: checkpoint.path(of: name), tensor: name, expected: shape, actual: info.shape)
        }
        do {
            return try checkpoint.view(name).floats()
        } catch let error as SafeTensorsError {
            throw ValidationError.unreadableTensor(file: checkpoint.path(of: name), tensor: name, reason: error.errorDescription ?? "\(error)")
        }
    }

    public func release(_ name: String) { checkpoint.release(name) }
}
