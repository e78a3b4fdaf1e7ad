import Numerics

/// The one mapping between FP8 element formats and their safetensors dtypes.
extension FP8Format {
    /// The format of an FP8 safetensors dtype (E4M3FN or E5M2); nil for any other dtype, the FNUZ
    /// variants included (no DeepSeek checkpoint uses them).
    public init?(dtype: DType) {
        switch dtype {
        case .f8E4M3: self = .e4m3
        case .f8E5M2: self = .e5m2
        default: return nil
        }
    }

    /// The safetensors dtype of codes in this format.
    public var dtype: DType {
        switch self {
        case .e4m3: return .f8E4M3
        case .e5m2: return .f8E5M2
        }
    }
}

extension DType {
    /// F8_E4M3 or F8_E5M2: block-scaled weight codes.
    public var isBlockFP8: Bool { FP8Format(dtype: self) != nil }
}
