import XCTest
@testable import Numerics

final class KVCacheCodecTests: XCTestCase {
    private func encode(_ format: KVCacheCodec.Codec, _ latent: [Float], _ rope: [Float]) -> [UInt8] {
        var out = [UInt8](repeating: 0xAA, count: format.entryBytes(latent: latent.count, rope: rope.count))
        latent.withUnsafeBufferPointer { l in rope.withUnsafeBufferPointer { r in out.withUnsafeMutableBytes { KVCacheCodec.encode(format, latent: l, rope: r, into: $0) } } }
        return out
    }

    private func decode(_ format: KVCacheCodec.Codec, _ bytes: [UInt8], latent: Int, rope: Int) -> ([Float], [Float]) {
        var l = [Float](repeating: .nan, count: latent), r = [Float](repeating: .nan, count: rope)
        bytes.withUnsafeBytes { b in l.withUnsafeMutableBufferPointer { lp in r.withUnsafeMutableBufferPointer { KVCacheCodec.decode(format, b, latent: lp, rope: $0) } } }
        return (l, r)
    }

    func testSizesForDeepSeekV2Dims() {
        XCTAssertEqual(KVCacheCodec.bytes(.bf16, latent: 512, rope: 64), 1152)
        XCTAssertEqual(KVCacheCodec.bytes(.fp8DSMLA, latent: 512, rope: 64), 656)
        XCTAssertEqual(KVCacheCodec.bytes(.mlaKV6, latent: 512, rope: 64), 432)
        XCTAssertEqual(KVCacheCodec.bytes(.mlaKV6, latent: 500, rope: 64), 416, "partial last group of 32")
        XCTAssertEqual(KVCacheCodec.bytes(.mlaKV6C, latent: 512, rope: 64), 432, "6.000 bits/element, no padding")
        XCTAssertEqual(KVCacheCodec.bytes(.mlaKV6C, latent: 128, rope: 16), 108)
    }

    /// Hand-computed bytes: a 8-channel latent group, its scale and 5-bit packing, and the int8 rope.
    func testKV6BytesByHand() {
        // absmax 15 → scale 1.0 (fp16 0x3C00); codes = the values themselves.
        let latent: [Float] = [1, -1, 15, -15, 0, 2, -3, 7]
        let rope: [Float] = [127, -63.5, 0, 1]   // absmax 127 → scale 1; -63.5 rounds to even -64
        let bytes = encode(.mlaKV6, latent, rope)
        XCTAssertEqual(bytes.count, 16)
        // codes as 5-bit two's complement: 1, 31, 15, 17, 0, 2, 29, 7 → bits 5i little-endian.
        var word: UInt64 = 0
        for (i, c) in [1, 31, 15, 17, 0, 2, 29, 7].enumerated() { word |= UInt64(c) << (5 * UInt64(i)) }
        XCTAssertEqual(Array(bytes[0..<5]), (0..<5).map { UInt8(truncatingIfNeeded: word >> (8 * UInt64($0))) })
        XCTAssertEqual(Array(bytes[5..<7]), [0x00, 0x3C], "fp16 1.0")
        XCTAssertEqual(Array(bytes[7..<11]), [127, UInt8(bitPattern: -64), 0, 1])
        XCTAssertEqual(Array(bytes[11..<13]), [0x00, 0x3C])
        XCTAssertEqual(Array(bytes[13..<16]), [0, 0, 0], "zero padding")
        let (l, r) = decode(.mlaKV6, bytes, latent: 8, rope: 4)
        XCTAssertEqual(l, latent)
        XCTAssertEqual(r, [127, -64, 0, 1])
    }

    func testKV6RoundTripErrorBoundAndEdgeCases() {
        var state: UInt64 = 7
        func next() -> Float { state = state &* 6364136223846793005 &+ 1442695040888963407; return Float(Int64(bitPattern: state) >> 40) / Float(1 << 23) }
        for l in [512, 500, 37, 8, 1] {
            let latent = (0..<l).map { _ in next() * 3 }, rope = (0..<64).map { _ in next() * 50 }
            let (dl, dr) = decode(.mlaKV6, encode(.mlaKV6, latent, rope), latent: l, rope: 64)
            for g in stride(from: 0, to: l, by: 32) {
                let range = g..<min(l, g + 32)
                let scale = range.map { abs(latent[$0]) }.max()! / 15
                for i in range { XCTAssertLessThanOrEqual(abs(dl[i] - latent[i]), scale * 0.5 * 1.002 + 1e-6, "l=\(l) i=\(i)") }
            }
            let ropeScale = rope.map(abs).max()! / 127
            for i in 0..<64 { XCTAssertLessThanOrEqual(abs(dr[i] - rope[i]), ropeScale * 0.5 * 1.002) }
        }
        // Zero and constant vectors.
        let (zl, zr) = decode(.mlaKV6, encode(.mlaKV6, [Float](repeating: 0, count: 40), [0, 0]), latent: 40, rope: 2)
        XCTAssertEqual(zl, [Float](repeating: 0, count: 40))
        XCTAssertEqual(zr, [0, 0])
        let (cl, _) = decode(.mlaKV6, encode(.mlaKV6, [Float](repeating: -0.3, count: 32), [1]), latent: 32, rope: 1)
        XCTAssertEqual(cl, [Float](repeating: -0.3, count: 32).map { _ in -15 * Float(KVCacheCodec.fp16Scale(0.3 / 15)) })
        XCTAssertEqual(cl[0], -0.3, accuracy: 0.3 * 1e-3, "a constant group is its own absmax")
    }

    func testFP8DSMLALayoutAndPowerOfTwoScales() {
        let latent = (0..<200).map { Float($0 % 17) - 8 }   // two tiles: 128 and a partial 72
        let rope: [Float] = [1.5, -2.25, 3, 0.1]
        let bytes = encode(.fp8DSMLA, latent, rope)
        XCTAssertEqual(bytes.count, 200 + 8 + 8)
        let s0 = bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 200, as: Float.self) }
        XCTAssertEqual(s0, 1.0 / 32, "2^ceil(log2(8/448)) = 2^-5")
        for i in 0..<200 { XCTAssertEqual(bytes[i], FP8Codec.encode(latent[i] / s0, .e4m3)) }
        let (l, r) = decode(.fp8DSMLA, bytes, latent: 200, rope: 4)
        XCTAssertEqual(l, latent, "small integers are exact in E4M3 at this scale")
        XCTAssertEqual(r, rope.map { FloatConversion.bf16ToFloat(FloatConversion.floatToBF16($0)) })
    }

    func testBF16Layout() {
        let bytes = encode(.bf16, [1, -2], [0.5])
        XCTAssertEqual(bytes, [0x80, 0x3F, 0x00, 0xC0, 0x00, 0x3F])
    }

    // MARK: mla-kv6c (KVChannelCodec)

    /// Five channels (3 latent, 2 k_pe) of widths 3, 5, 0, 8, 2, packed by hand:
    /// c0 2.6/1 → 3 = 011; c1 −3.3/0.5 = −6.6 → −7 = 11001 (5-bit); c2 width 0, nothing stored;
    /// c3 −1.1/0.25 = −4.4 → −4 = 0xFC; c4 3.0/2 = 1.5 → 2 (half to even) clamped to 1 = 01.
    /// Bits from bit 0 of byte 0: 011 then 11001 → byte 0 = 0b11001_011 = 0xCB; byte 1 = 0xFC; byte 2 = 0b01.
    func testChannelwiseBytesByHand() throws {
        let codec = try KVChannelCodec(bits: [3, 5, 0, 8, 2], steps: [1, 0.5, 1, 0.25, 2])
        XCTAssertEqual(codec.totalBits, 18)
        XCTAssertEqual(codec.byteCount, 3)
        let bytes = encode(.channelwise(codec), [2.6, -3.3, 9], [-1.1, 3.0])
        XCTAssertEqual(bytes, [0xCB, 0xFC, 0x01])
        let (l, r) = decode(.channelwise(codec), bytes, latent: 3, rope: 2)
        XCTAssertEqual(l, [3, -3.5, 0])
        XCTAssertEqual(r, [-1, 1 * 2])
        XCTAssertTrue(KVCacheCodec.Codec.channelwise(codec).cachesRopeBeforeRotation)
        XCTAssertFalse(KVCacheCodec.Codec.mlaKV6.cachesRopeBeforeRotation)
    }

    /// Every width 2…16 round-trips within half a step inside its range and clamps outside it; NaN, a zero
    /// step and width 0 give 0; the unused bits of the last byte are zero.
    func testChannelwiseRoundTripAndEdgeCases() throws {
        var generator = SystemRandomNumberGenerator()
        for bits in 2...16 {
            let limit = Float((1 << (bits - 1)) - 1)
            let steps: [Float] = [0.01, 0.37, 3]
            let codec = try KVChannelCodec(bits: [UInt8](repeating: UInt8(bits), count: 7), steps: steps + [0.5, 0.5, 0, 1])
            for _ in 0..<50 {
                let latent = steps.map { Float.random(in: -limit...limit, using: &generator) * $0 }
                let rope: [Float] = [(Bool.random(using: &generator) ? 1 : -1) * 1e6, .nan, 5, .infinity]
                let bytes = encode(.channelwise(codec), latent, rope)
                XCTAssertEqual(bytes.count, (7 * bits + 7) / 8)
                let (dl, dr) = decode(.channelwise(codec), bytes, latent: 3, rope: 4)
                // Half a step, plus the rounding of x / step and code · step in f32 (a few ulps of x).
                for c in 0..<3 { XCTAssertLessThanOrEqual(abs(dl[c] - latent[c]), steps[c] / 2 + 4 * latent[c].ulp, "bits \(bits) channel \(c)") }
                XCTAssertEqual(abs(dr[0]), limit * 0.5, "clamped to the range")
                XCTAssertEqual(dr[1], 0, "NaN codes as 0")
                XCTAssertEqual(dr[2], 0, "zero step")
                XCTAssertEqual(dr[3], limit, "+inf clamps")
                if (7 * bits) % 8 != 0 { XCTAssertEqual(bytes.last! >> UInt8((7 * bits) % 8), 0, "unused bits are zero") }
            }
        }
        XCTAssertThrowsError(try KVChannelCodec(bits: [1], steps: [1]))
        XCTAssertThrowsError(try KVChannelCodec(bits: [17], steps: [1]))
        XCTAssertThrowsError(try KVChannelCodec(bits: [4], steps: [-1]))
        XCTAssertThrowsError(try KVChannelCodec(bits: [4], steps: [.nan]))
        XCTAssertThrowsError(try KVChannelCodec(bits: [4, 4], steps: [1]))
    }
}
