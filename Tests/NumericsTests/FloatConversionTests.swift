import CKernels
import XCTest
@testable import Numerics

final class FloatConversionTests: XCTestCase {
    func testEveryBF16PatternWidensExactlyAndRoundTrips() {
        let all = (0...0xFFFF).map { UInt16($0) }
        var widened = [Float](repeating: 0, count: all.count)
        all.withUnsafeBufferPointer { src in widened.withUnsafeMutableBufferPointer { FloatConversion.bf16ToFloat(src.baseAddress!, $0.baseAddress!, count: all.count) } }
        var narrowed = [UInt16](repeating: 0, count: all.count)
        widened.withUnsafeBufferPointer { src in narrowed.withUnsafeMutableBufferPointer { FloatConversion.floatToBF16(src.baseAddress!, $0.baseAddress!, count: all.count) } }
        for bits in all {
            let f = widened[Int(bits)]
            XCTAssertEqual(f.bitPattern, UInt32(bits) << 16)
            if f.isNaN {
                XCTAssertTrue(FloatConversion.bf16ToFloat(narrowed[Int(bits)]).isNaN)
            } else {
                XCTAssertEqual(narrowed[Int(bits)], bits)
            }
        }
    }

    /// The streaming widener at every instruction-set level: every bf16 pattern, destinations at
    /// every float offset from a 64-byte line (ordinary stores up to it, streamed after), a tail.
    func testStreamingWideningIsExactAtEveryLevel() {
        let count = 65_536 + 29
        let bits = (0..<count).map { UInt16(truncatingIfNeeded: $0 &* 40503) }
        let expected = bits.map { UInt32($0) << 16 }
        for level in FP8BlockQuantizer.availableKernelLevels {
            for offset in 0..<16 {
                let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: count + 16)
                defer { buffer.deallocate() }
                bits.withUnsafeBufferPointer { dsconvert_bf16_to_f32_streaming(level, $0.baseAddress, buffer.baseAddress! + offset, count) }
                XCTAssertEqual(buffer[offset..<(offset + count)].map(\.bitPattern), expected, "level \(level) offset \(offset)")
            }
        }
    }

    func testNarrowingRoundsToNearestEven() {
        // 1 + 2^-8 is exactly halfway between bf16 1.0 and 1.0078125: ties go to the even mantissa (1.0).
        XCTAssertEqual(FloatConversion.floatToBF16(1 + 0x1p-8), 0x3F80)
        // 1.0078125 + 2^-8 is halfway between 1.0078125 (odd) and 1.015625 (even): rounds up.
        XCTAssertEqual(FloatConversion.floatToBF16(1.0078125 + 0x1p-8), 0x3F82)
        XCTAssertEqual(FloatConversion.floatToBF16(1 + 0x1p-8 + 0x1p-20), 0x3F81)
        XCTAssertEqual(FloatConversion.floatToBF16(Float.greatestFiniteMagnitude), 0x7F80, "rounds up to +inf like torch")
        XCTAssertEqual(FloatConversion.floatToBF16(-0.0), 0x8000)
        XCTAssertEqual(FloatConversion.floatToBF16(Float.infinity), 0x7F80)
    }

    func testVectorAndScalarPathsAgreeOnRandomFloats() {
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        let values: [Float] = (0..<100_003).map { _ in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Float(bitPattern: UInt32(truncatingIfNeeded: state >> 32))
        }
        var out = [UInt16](repeating: 0, count: values.count)
        values.withUnsafeBufferPointer { src in out.withUnsafeMutableBufferPointer { FloatConversion.floatToBF16(src.baseAddress!, $0.baseAddress!, count: values.count) } }
        for (v, o) in zip(values, out) {
            let s = FloatConversion.floatToBF16(v)
            if v.isNaN { XCTAssertTrue(FloatConversion.bf16ToFloat(o).isNaN) } else { XCTAssertEqual(o, s) }
        }
    }

    func testF16Widening() {
        let samples: [UInt16] = [0x0000, 0x3C00, 0xC000, 0x7BFF, 0x0001, 0x7C00, 0xFC00, 0x3555]
        var out = [Float](repeating: 0, count: samples.count)
        samples.withUnsafeBufferPointer { src in out.withUnsafeMutableBufferPointer { FloatConversion.f16ToFloat(src.baseAddress!, $0.baseAddress!, count: samples.count) } }
        XCTAssertEqual(out, [0, 1, -2, 65504, 0x1p-24, .infinity, -.infinity, Float(Float16(bitPattern: 0x3555))])
    }
}

final class DoubleToBF16Tests: XCTestCase {
    func testRoundsOnceNotTwice() {
        // 1 + 2^-8 + 2^-30 rounds to Float as exactly 1 + 2^-8 (a bf16 tie, which would then go to even 1.0);
        // rounded once it is above the tie and goes up to 1 + 2^-7.
        let x = 1 + 0x1p-8 + 0x1p-30
        XCTAssertEqual(FloatConversion.floatToBF16(Float(x)), 0x3F80, "the double-rounding trap")
        XCTAssertEqual(FloatConversion.doubleToBF16(x), 0x3F81)
        XCTAssertEqual(FloatConversion.doubleToBF16(1 + 0x1p-8), 0x3F80, "an exact tie goes to even")
        XCTAssertEqual(FloatConversion.doubleToBF16(-2.5), FloatConversion.floatToBF16(-2.5))
        XCTAssertEqual(FloatConversion.doubleToBF16(1e39), 0x7F80)
        XCTAssertEqual(FloatConversion.doubleToBF16(-1e39), 0xFF80)
        XCTAssertEqual(FloatConversion.doubleToBF16(0x1p-133), 0x0001, "smallest bf16 subnormal")
        XCTAssertEqual(FloatConversion.doubleToBF16(0x1p-135), 0x0000, "below half of it: zero")
    }

    func testAgreesWithFloatPathWhereFloatIsExact() {
        var state: UInt64 = 42
        for _ in 0..<200_000 {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            let f = Float(bitPattern: UInt32(truncatingIfNeeded: state >> 32))
            if f.isNaN { continue }
            XCTAssertEqual(FloatConversion.doubleToBF16(Double(f)), FloatConversion.floatToBF16(f), "\(f)")
        }
    }

    /// The previous implementation (scale by the bf16 ulp, round the Double, scale back): slow but
    /// plainly correct, kept as the reference for the round-to-odd one.
    private func referenceDoubleToBF16(_ value: Double) -> UInt16 {
        if value.isNaN { return 0x7FC0 }
        if value == 0 || value.isInfinite { return FloatConversion.floatToBF16(Float(value)) }
        let exponent = max(Int(value.exponent), -126)
        let ulp = Double(sign: .plus, exponent: exponent - 7, significand: 1)
        let rounded = (value / ulp).rounded(.toNearestOrEven) * ulp
        if abs(rounded) > 0x1.FEp127 { return value > 0 ? 0x7F80 : 0xFF80 }
        return UInt16(truncatingIfNeeded: Float(rounded).bitPattern >> 16)
    }

    func testRoundToOddMatchesDirectRounding() {
        var state: UInt64 = 0xD1B5_4A32_D192_ED03
        func next() -> UInt64 {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return state
        }
        var values: [Double] = [0x1.FEp127, 0x1.FFp127, 0x1.FFp127.nextDown, 0x1.FFp127.nextUp, 0x1.FFFFFEp127, 0x1p128,
                                0x1p-126, 0x1p-133, 0x1p-134, 0x1p-134.nextUp, 0x1p-134.nextDown, 0x3p-134, 0x1p-149, 0x1p-150, 0x1p-151,
                                .leastNonzeroMagnitude, .greatestFiniteMagnitude, .infinity, 0, -0.0]
        for _ in 0..<200_000 {
            // Any sign and mantissa, exponents over bf16's whole range and past both ends.
            let exponent = UInt64(1023 - 160 + Int(next() % 300))
            values.append(Double(bitPattern: (next() & 0x8000_0000_0000_0000) | (exponent << 52) | (next() & 0xF_FFFF_FFFF_FFFF)))
            // Near ties: a bf16 value plus half its ulp, nudged by a few Double ulps either way.
            let b = Double(Float(bitPattern: UInt32(truncatingIfNeeded: next() >> 32) & 0xFFFF_0000))
            guard b.isFinite, b != 0 else { continue }
            let half = Double(sign: .plus, exponent: max(Int(b.exponent), -126) - 8, significand: 1)
            let tie = b + (b < 0 ? -half : half)
            values += [tie, tie.nextUp, tie.nextDown, tie.nextUp.nextUp, tie.nextDown.nextDown]
        }
        for v in values + values.map({ -$0 }) {
            XCTAssertEqual(FloatConversion.doubleToBF16(v), referenceDoubleToBF16(v), "\(v)")
        }
    }
}
