import CKernels

/// The two OCP FP8 formats of DeepSeek-V3-style checkpoints.
public enum FP8Format: String, Sendable, CaseIterable {
    /// E4M3FN: bias 7, largest finite ±448, no infinities, NaN only 0x7F/0xFF, subnormals to 2^-9.
    case e4m3 = "e4m3"
    /// E5M2: bias 15, largest finite ±57344, has infinities.
    case e5m2 = "e5m2"

    public var maxFinite: Float { self == .e4m3 ? 448 : 57344 }
    /// safetensors dtype name.
    public var safetensorsDType: String { self == .e4m3 ? "F8_E4M3" : "F8_E5M2" }

    // Layout parameters: mantissa bits, smallest normal, exponent bias offset from f32.
    var mantissaBits: UInt32 { self == .e4m3 ? 3 : 2 }
    var minNormal: Float { self == .e4m3 ? 0x1p-6 : 0x1p-14 }
    /// 2^(mantissa bits − exponent of the smallest subnormal): scales a subnormal to its integer code.
    var subnormalScale: Float { self == .e4m3 ? 0x1p9 : 0x1p16 }
    /// (127 − bias) << mantissa bits: rebiases the f32 exponent field.
    var rebias: UInt32 { self == .e4m3 ? 120 << 3 : 112 << 2 }
}

/// FP8 encoding and decoding: round to nearest even, saturating finite values to ±max (never NaN
/// from a finite input, README "FP8 weights"). E4M3FN also saturates ±inf (as torch's cast does); E5M2 keeps
/// ±inf. NaN encodes as 0x7F with the input's sign.
public enum FP8Codec {
    @inline(__always)
    public static func encode(_ x: Float, _ format: FP8Format) -> UInt8 {
        let bits = x.bitPattern
        let sign = UInt8(truncatingIfNeeded: (bits >> 24) & 0x80)
        if x.isNaN { return sign | 0x7F }
        if x.isInfinite, format == .e5m2 { return sign | 0x7C }
        let a = min(abs(x), format.maxFinite)
        if a < format.minNormal {
            // Adding 2^23 makes the f32 unit in the last place 1, so the FPU rounds to an integer, ties to even.
            let q = (a * format.subnormalScale + 0x1p23).bitPattern &- 0x4B00_0000
            return sign | UInt8(truncatingIfNeeded: q)
        }
        let drop = 23 - format.mantissaBits
        let n = a.bitPattern
        let rounded = n &+ ((1 << (drop - 1)) - 1) &+ ((n >> drop) & 1)
        return sign | UInt8(truncatingIfNeeded: (rounded >> drop) &- format.rebias)
    }

    /// Encodes 16 values at a time; bit-identical to `encode(_:_:)`.
    @inline(__always)
    public static func encode(_ x: SIMD16<Float>, _ format: FP8Format) -> SIMD16<UInt8> {
        var out = SIMD16<UInt8>()
        switch format {
        case .e4m3: for i in 0..<16 { out[i] = encodeE4M3(x[i]) }
        case .e5m2: for i in 0..<16 { out[i] = encodeE5M2(x[i]) }
        }
        return out
    }

    /// E4M3FN without branches (integer selects only), so loops over it vectorize: the C encoder
    /// the block kernel uses, inlined here, so the rounding is written once.
    @inline(__always)
    public static func encodeE4M3(_ x: Float) -> UInt8 { dsconvert_fp8_encode_e4m3(x) }

    /// E5M2 without branches: finite values saturate at ±57344, ±inf stays inf (the kernel's C encoder).
    @inline(__always)
    public static func encodeE5M2(_ x: Float) -> UInt8 { dsconvert_fp8_encode_e5m2(x) }

    /// The value of every code, for table decoding.
    public static func decodeTable(_ format: FP8Format) -> [Float] {
        (0..<256).map { decode(UInt8($0), format) }
    }

    public static func decode(_ code: UInt8, _ format: FP8Format) -> Float {
        let negative = code & 0x80 != 0
        let m = Int(code) & (format == .e4m3 ? 0x07 : 0x03)
        let e = (Int(code) & 0x7F) >> (format == .e4m3 ? 3 : 2)
        let mBits = format == .e4m3 ? 3 : 2, bias = format == .e4m3 ? 7 : 15
        let value: Float
        switch format {
        case .e4m3 where code & 0x7F == 0x7F: return .nan
        case .e5m2 where e == 31: return m == 0 ? (negative ? -.infinity : .infinity) : .nan
        default:
            if e == 0 {
                value = Float(m) * Float(sign: .plus, exponent: 1 - bias - mBits, significand: 1)
            } else {
                value = (1 + Float(m) / Float(1 << mBits)) * Float(sign: .plus, exponent: e - bias, significand: 1)
            }
        }
        return negative ? -value : value
    }
}
