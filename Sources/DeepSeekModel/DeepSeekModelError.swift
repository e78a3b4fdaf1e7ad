import Foundation

/// What can be wrong with a DeepSeek checkpoint's description or its agreement with its tensors.
public enum DeepSeekModelError: LocalizedError, Equatable, Sendable {
    case missingConfig(path: String)
    case invalidConfig(path: String, reason: String)
    case unsupportedArchitecture(path: String, name: String)
    case missingTensor(file: String, tensor: String, expectedShape: [Int])
    case unexpectedTensor(file: String, tensor: String)
    case wrongShape(file: String, tensor: String, expected: [Int], actual: [Int])
    case wrongDType(file: String, tensor: String, dtype: String)
    case missingScale(file: String, tensor: String, expectedShape: [Int])
    case wrongScale(file: String, tensor: String, expected: [Int], actual: [Int], dtype: String)
    case fp8WithoutQuantizationConfig(file: String, tensor: String)

    public var errorDescription: String? {
        switch self {
        case let .missingConfig(path):
            return "\(path): missing or unreadable config.json"
        case let .invalidConfig(path, reason):
            return "\(path): invalid config: \(reason)"
        case let .unsupportedArchitecture(path, name):
            return "\(path): unsupported architecture \(name) (expected DeepseekV2ForCausalLM / deepseek_v2)"
        case let .missingTensor(file, tensor, shape):
            return "\(file): missing tensor '\(tensor)' (config implies shape \(shape))"
        case let .unexpectedTensor(file, tensor):
            return "\(file): unexpected tensor '\(tensor)' (not implied by config.json)"
        case let .wrongShape(file, tensor, expected, actual):
            return "\(file): tensor '\(tensor)' has shape \(actual), config.json implies \(expected)"
        case let .wrongDType(file, tensor, dtype):
            return "\(file): tensor '\(tensor)' has dtype \(dtype), expected a floating-point weight"
        case let .missingScale(file, tensor, shape):
            return "\(file): FP8 tensor '\(tensor)' has no scale '\(tensor)_scale_inv' (F32 \(shape)); it cannot be dequantized"
        case let .wrongScale(file, tensor, expected, actual, dtype):
            return "\(file): scale '\(tensor)' is \(dtype) \(actual), the block size implies F32 \(expected)"
        case let .fp8WithoutQuantizationConfig(file, tensor):
            return "\(file): tensor '\(tensor)' is FP8 but config.json has no quantization_config (block size unknown)"
        }
    }
}
