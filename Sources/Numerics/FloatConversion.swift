import CKernels

/// Conversions between the checkpoint element types and Float32.
///
/// bf16 is the top half of an IEEE binary32, so widening is a shift; narrowing rounds to nearest
/// even exactly as torch's `.to(torch.bfloat16)` does, keeping NaN quiet.
public enum FloatConversion {
    @inline(__always)
    public static func bf16ToFloat(_ bits: UInt16) -> Float { Float(bitPattern: UInt32(bits) << 16) }

    @inline(__always)
    public static func floatToBF16(_ value: Float) -> UInt16 {
        let bits = value.bitPattern
        if value.isNaN { return UInt16(truncatingIfNeeded: (bits >> 16) | 0x0040) }
        let rounding = UInt32(0x7FFF) + ((bits >> 16) & 1)
        return UInt16(truncatingIfNeeded: (bits &+ rounding) >> 16)
    }

    @inline(__always)
    public static func f16ToFloat(_ bits: UInt16) -> Float { Float(Float16(bitPattern: bits)) }

    /// Rounds a Double to bf16 once, to nearest even (going through Float by plain rounding would
    /// round twice). The Double is first narrowed to Float with round-to-odd, which keeps enough
    /// information (Float has 16 more bits than bf16, at least 2 are needed) for the final
    /// round-to-nearest-even to equal a direct one (Boldo and Melquiond, "When double rounding is
    /// odd", 2005). Finite values at or past the midpoint above bf16's largest finite round to
    /// infinity, as torch does.
    @inline(__always)
    public static func doubleToBF16(_ value: Double) -> UInt16 {
        if value.isNaN { return 0x7FC0 }
        let nearest = Float(value)
        var bits = nearest.bitPattern
        let inexact = Double(nearest) != value
        // Truncate toward zero (one step back when rounding went away from zero), then set the
        // last bit when anything was dropped: round-to-odd.
        if inexact && abs(Double(nearest)) > abs(value) { bits &-= 1 }
        if inexact { bits |= 1 }
        return floatToBF16(Float(bitPattern: bits))
    }

    /// Widens `count` bf16 values to Float32, 16 lanes at a time.
    public static func bf16ToFloat(_ source: UnsafePointer<UInt16>, _ destination: UnsafeMutablePointer<Float>, count: Int) {
        var i = 0
        let raw = UnsafeRawPointer(source)
        let out = UnsafeMutableRawPointer(destination)
        while i + 16 <= count {
            let halves = raw.loadUnaligned(fromByteOffset: i * 2, as: SIMD16<UInt16>.self)
            let words = SIMD16<UInt32>(truncatingIfNeeded: halves) &<< 16
            out.storeBytes(of: words, toByteOffset: i * 4, as: SIMD16<UInt32>.self)
            i += 16
        }
        while i < count {
            destination[i] = bf16ToFloat(source[i])
            i += 1
        }
    }

    /// Values from which a widened weight is written with streaming stores (4 MB of f32): larger than
    /// the second-level cache, so the product after it reads it from memory either way.
    public static let streamingMinimumCount = 1 << 20

    /// `bf16ToFloat` for a destination larger than the caches keep (a large weight widened for the
    /// product that reads it next): streaming stores, which do not first read each destination line
    /// from memory (`dsconvert_bf16_to_f32_streaming`). The same values.
    public static func bf16ToFloatStreaming(_ source: UnsafePointer<UInt16>, _ destination: UnsafeMutablePointer<Float>, count: Int) {
        dsconvert_bf16_to_f32_streaming(FP8BlockQuantizer.kernelLevel, source, destination, count)
    }

    /// Widens `count` f16 values to Float32.
    public static func f16ToFloat(_ source: UnsafePointer<UInt16>, _ destination: UnsafeMutablePointer<Float>, count: Int) {
        var i = 0
        let raw = UnsafeRawPointer(source)
        while i + 8 <= count {
            let halves = raw.loadUnaligned(fromByteOffset: i * 2, as: SIMD8<Float16>.self)
            for lane in 0..<8 { destination[i + lane] = Float(halves[lane]) }
            i += 8
        }
        while i < count {
            destination[i] = f16ToFloat(source[i])
            i += 1
        }
    }

    /// Narrows `count` Float32 values to bf16 with round-to-nearest-even.
    public static func floatToBF16(_ source: UnsafePointer<Float>, _ destination: UnsafeMutablePointer<UInt16>, count: Int) {
        var i = 0
        let raw = UnsafeRawPointer(source)
        let out = UnsafeMutableRawPointer(destination)
        while i + 16 <= count {
            let bits = raw.loadUnaligned(fromByteOffset: i * 4, as: SIMD16<UInt32>.self)
            let isNaN = (bits & 0x7FFF_FFFF) .> 0x7F80_0000
            let rounded = (bits &+ (0x7FFF &+ ((bits &>> 16) & 1))) &>> 16
            let quiet = (bits &>> 16) | 0x0040
            let result = rounded.replacing(with: quiet, where: isNaN)
            out.storeBytes(of: SIMD16<UInt16>(truncatingIfNeeded: result), toByteOffset: i * 2, as: SIMD16<UInt16>.self)
            i += 16
        }
        while i < count {
            destination[i] = floatToBF16(source[i])
            i += 1
        }
    }
}
