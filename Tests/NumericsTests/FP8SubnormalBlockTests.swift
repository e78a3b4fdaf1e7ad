import XCTest
@testable import Numerics

/// Blocks so small that amax / max_finite rounds to 0 in f32 must not become 0/0 NaN codes with a
/// zero scale: they are flushed to zero blocks with the all-zero block's scale 1, in the Swift f32
/// path and the C kernel alike.
final class FP8SubnormalBlockTests: XCTestCase {
    /// 1e-44 as f32 (7 x 2^-149, a subnormal), written as its bits: the literal warns of its rounding.
    private let tiny = Float(bitPattern: 7)

    /// A 2 x 2-block matrix: block (0, 0) all ±1e-44 (f32 subnormals), the others ordinary values.
    private func matrix(rows: Int = 256, cols: Int = 256) -> [Float] {
        (0..<(rows * cols)).map { i in
            let r = i / cols, c = i % cols
            if r < 128, c < 128 { return i % 2 == 0 ? tiny : -tiny }
            return Float(i % 97) / 97 - 0.5
        }
    }

    func testF32SubnormalBlockGetsUnitScaleAndZeroCodes() {
        let x = matrix()
        for format in FP8Format.allCases {
            let quantizer = FP8BlockQuantizer(format: format, block: 128)
            let (codes, scales) = x.withUnsafeBufferPointer { quantizer.quantize($0.baseAddress!, rows: 256, cols: 256) }
            XCTAssertEqual(scales[0], 1, "\(format): the flushed block gets the all-zero block's scale")
            XCTAssertTrue(scales.allSatisfy { $0 > 0 && $0.isFinite }, "\(format): \(scales)")
            for r in 0..<128 { for c in 0..<128 {
                XCTAssertEqual(codes[r * 256 + c] & 0x7F, 0, "\(format): element (\(r), \(c)) is a signed zero")
            } }
            // The other blocks are untouched by the rule: scale = amax / max_finite as before.
            let amax = (0..<(256 * 256)).filter { $0 / 256 < 128 && $0 % 256 >= 128 }.map { abs(x[$0]) }.max()!
            XCTAssertEqual(scales[1], amax / format.maxFinite)
            var back = [Float](repeating: .nan, count: 256 * 256)
            _ = codes.withUnsafeBufferPointer { cp in scales.withUnsafeBufferPointer { sp in
                quantizer.dequantize(codes: cp.baseAddress!, scales: sp.baseAddress!, rows: 256, cols: 256, into: &back)
            } }
            XCTAssertTrue(back.allSatisfy(\.isFinite), "\(format): dequantizes to finite values")
        }
    }

    func testBlockScaleRule() {
        XCTAssertEqual(FP8BlockQuantizer.blockScale(amax: 0, maxFinite: 448), 1)
        XCTAssertEqual(FP8BlockQuantizer.blockScale(amax: tiny, maxFinite: 448), 1, "rounds to 0: flushed")
        XCTAssertEqual(FP8BlockQuantizer.blockScale(amax: 448, maxFinite: 448), 1)
        let subnormal = Float(bitPattern: 71362)  // 1e-40 as f32
        XCTAssertEqual(FP8BlockQuantizer.blockScale(amax: subnormal, maxFinite: 448), subnormal / 448, "subnormal but positive: kept, as torch computes it")
    }

    /// bf16's smallest magnitudes (subnormals down to 2^-133) still give positive scales in every
    /// kernel level, equal to the Swift f32 path on the same values widened.
    func testSmallestBF16BlocksAgreeAcrossLevels() {
        let rows = 128, cols = 256
        let bf16: [UInt16] = (0..<(rows * cols)).map { i in i % cols < 128 ? UInt16(i % 2 == 0 ? 0x0001 : 0x8001) : UInt16(0x0000 | (i % 3)) }
        let widened = bf16.map { Float(bitPattern: UInt32($0) << 16) }
        for format in FP8Format.allCases {
            let quantizer = FP8BlockQuantizer(format: format, block: 128)
            let (swiftCodes, swiftScales) = widened.withUnsafeBufferPointer { quantizer.quantize($0.baseAddress!, rows: rows, cols: cols) }
            XCTAssertTrue(swiftScales.allSatisfy { $0 > 0 && $0.isFinite }, "\(format): \(swiftScales)")
            for level in FP8BlockQuantizer.availableKernelLevels {
                var codes = [UInt8](repeating: 0, count: rows * cols), scales = [Float](repeating: 0, count: 2)
                let finite = bf16.withUnsafeBufferPointer { quantizer.quantize(bf16: $0.baseAddress!, rows: rows, cols: cols, codes: &codes, scales: &scales, level: level) }
                XCTAssertTrue(finite)
                XCTAssertEqual(scales, swiftScales, "\(format) level \(level)")
                XCTAssertEqual(codes, swiftCodes, "\(format) level \(level)")
            }
        }
    }
}

/// fp8_ds_mla's per-tile power-of-two scale had the same hole: a tile of f32 subnormals (amax / 448
/// rounding to 0) got scale 0, and its zeros became 0/0 NaN codes.
final class KVCacheSubnormalTileTests: XCTestCase {
    func testSubnormalLatentTileRoundTripsToFiniteValues() {
        var latent = [Float](repeating: 0, count: 128), rope = [Float](repeating: 0.5, count: 8)
        latent[0] = Float(bitPattern: 7)  // ±1e-44 as f32: 7 x 2^-149
        latent[1] = -Float(bitPattern: 7)
        KVCacheCodec.roundTrip(.fp8DSMLA, latent: &latent, rope: &rope, tokens: 1)
        XCTAssertTrue(latent.allSatisfy { $0 == 0 }, "flushed to zeros, no NaN: \(latent.prefix(4))")
        XCTAssertEqual(rope, [Float](repeating: 0.5, count: 8))
    }
}
