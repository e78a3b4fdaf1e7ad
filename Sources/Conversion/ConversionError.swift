import Foundation
import SafeTensors

/// Failures of a conversion stage that are not about the input's format.
public enum ConversionError: LocalizedError, Equatable, Sendable {
    case sideFileOutsideInput(file: String, target: String)
    case invalidManifest(path: String, reason: String)
    case cannotCopy(file: String, reason: String)
    case invalidSize(text: String)
    /// A `--skip` pattern the matcher gave up on (its own fault, not the input's).
    case skipPatternRefused(pattern: String, reason: String)
    case unsupportedInput(path: String, reason: String)
    /// A computed tensor overflowed its storage dtype (finite inputs whose products do not fit).
    case nonFiniteResult(path: String, tensor: String, dtype: String)
    /// An FP8 weight whose finite codes times finite scales overflow: its cast back cannot be written.
    case dequantizedOverflow(path: String, tensor: String, dtype: String)

    public var errorDescription: String? {
        switch self {
        case let .sideFileOutsideInput(file, target):
            return "\(file): side file links outside the input (to \(target)); copy the file in or remove the link"
        case let .invalidManifest(path, reason):
            return "\(path): invalid dsconvert manifest: \(reason)"
        case let .cannotCopy(file, reason):
            return "\(file): cannot copy: \(reason)"
        case let .unsupportedInput(path, reason):
            return "\(path): cannot convert: \(reason)"
        case let .nonFiniteResult(path, tensor, dtype):
            return "\(path): absorbing gives tensor '\(tensor)' values beyond \(dtype)'s finite range (NaN or Inf); the input weights are too large to fold"
        case let .dequantizedOverflow(path, tensor, dtype):
            return "\(path): dequantizing tensor '\(tensor)' gives values beyond \(dtype)'s finite range (a code times its block's scale overflows); its scales are too large"
        case let .skipPatternRefused(pattern, reason):
            return "--skip \(CompactJSON.quoted(pattern)) \(reason); refused rather than left to run"
        case let .invalidSize(text):
            return "invalid size '\(text)' (examples: 5GB, 500MB, 5G, 2GiB, 1000000)"
        }
    }
}
