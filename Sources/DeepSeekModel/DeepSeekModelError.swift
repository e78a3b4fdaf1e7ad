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
    /// An FP8 weight in another format than `quantization_config.fmt` declares (codes would be read in the wrong format).
    case fp8FormatMismatch(file: String, tensor: String, dtype: String, fmt: String)
    /// A key appears twice in one JSON object (JSON leaves the meaning open; we refuse to guess).
    case duplicateKey(path: String, key: String)
    /// A number literal too large for a double (e.g. 1e999), which would read as infinity.
    case nonFiniteNumber(path: String, key: String)
    /// A value that must be a positive finite number (rope_theta, rms_norm_eps, YaRN factors, …).
    case notPositive(path: String, key: String, value: Double)
    /// A size formula (parameters, KV bytes, absorb costs) does not fit in 64 bits.
    case sizeOverflow(path: String, quantity: String)
    /// `quantization_config.weight_block_size` is not [b, b] with b in 1...limit.
    case invalidBlockSize(path: String, value: String, limit: Int)
    /// A `dsconvert_placement` record that contradicts itself or the config.
    case inconsistentPlacement(path: String, reason: String)
    /// An FP8 code that is not a finite number (E4M3FN NaN 0x7F/0xFF; E5M2 Inf or NaN, exponent 31).
    case nonFiniteCode(file: String, tensor: String, index: Int, code: UInt8)
    /// A tensor whose bytes could not be read (the reader's reason).
    case unreadableTensor(file: String, tensor: String, reason: String)
    /// A block scale that is zero, negative, NaN or infinite: w = q · scale cannot be trusted.
    case invalidScale(file: String, tensor: String, index: Int, value: Float)

    public var errorDescription: String? {
        switch self {
        case let .missingConfig(path):
            return "\(path): missing or unreadable config.json"
        case let .invalidConfig(path, reason):
            return "\(path): invalid config: \(reason)"
        case let .unsupportedArchitecture(path, name):
            return "\(path): unsupported architecture \(name) (supported: DeepseekV2ForCausalLM, DeepseekV3ForCausalLM)"
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
        case let .fp8FormatMismatch(file, tensor, dtype, fmt):
            return "\(file): FP8 tensor '\(tensor)' is \(dtype), but quantization_config declares fmt \(fmt)"
        case let .duplicateKey(path, key):
            return "\(path): duplicate key '\(key)'"
        case let .nonFiniteNumber(path, key):
            return "\(path): '\(key)' is not a finite number"
        case let .notPositive(path, key, value):
            return "\(path): '\(key)' must be a positive finite number, is \(value)"
        case let .sizeOverflow(path, quantity):
            return "\(path): sizes overflow: \(quantity) does not fit in 64 bits"
        case let .invalidBlockSize(path, value, limit):
            return "\(path): quantization_config weight_block_size must be [b, b] with b in 1...\(limit), is \(value)"
        case let .inconsistentPlacement(path, reason):
            return "\(path): inconsistent dsconvert_placement: \(reason)"
        case let .nonFiniteCode(file, tensor, index, code):
            return "\(file): FP8 tensor '\(tensor)' holds a NaN or Inf code 0x\(String(code, radix: 16, uppercase: true)) at element \(index)"
        case let .unreadableTensor(file, tensor, reason):
            return "\(file): tensor '\(tensor)' cannot be read: \(reason)"
        case let .invalidScale(file, tensor, index, value):
            return "\(file): scale '\(tensor)' element \(index) is \(value); block scales must be positive and finite"
        }
    }
}
