import CKernels
import Foundation
import XCTest
@testable import GGUF

let ggufFixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Fixtures/ggml-quants")

final class GGUFTests: XCTestCase {
    /// Every block type against ggml's own reference quantizers (Fixtures/generate_ggml_quants.py: llama.cpp from
    /// llama-cpp-python 0.3.36, built for the x86-64 baseline), byte for byte, on 20 rows of 2048 values: four
    /// distributions at four scales, a spike, a constant, zeros, holes, bf16-exact values.
    func testQuantizersMatchGGMLByteForByte() throws {
        try compareWithGoldens()
    }

    /// The same with the SIMD searches turned off (`DSCONVERT_NO_SIMD`: scalar), and with AVX-512's two-super-block
    /// q4_K search turned off (`DSCONVERT_NO_AVX512`: AVX2): every path gives ggml's bytes.
    func testScalarQuantizersMatchGGMLByteForByte() throws {
        setenv("DSCONVERT_NO_SIMD", "1", 1)
        defer { unsetenv("DSCONVERT_NO_SIMD") }
        try compareWithGoldens()
    }

    func testAVX2QuantizersMatchGGMLByteForByte() throws {
        setenv("DSCONVERT_NO_AVX512", "1", 1)
        defer { unsetenv("DSCONVERT_NO_AVX512") }
        try compareWithGoldens()
    }

    /// Beyond the goldens: each SIMD path against the scalar one (itself ggml's bytes, above) on 4,096 random
    /// super-blocks of varied shapes (Gaussian, heavy-tailed, one-signed, spiky, coarse-grid, tiny and flat
    /// sub-blocks), so a lane or mask slip that the 20 golden rows happen to miss still shows.
    func testSIMDPathsEqualScalarOnRandomBlocks() {
        var state: UInt64 = 0x9E3779B97F4A7C15
        func uniform() -> Float {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Float(state >> 40) / Float(1 << 24)
        }
        var values: [Float] = []
        for block in 0..<4096 {
            let scale = Float(pow(10.0, Double(block % 9) - 4))
            for i in 0..<256 {
                let u = uniform(), g = (uniform() + uniform() + uniform() - 1.5) * 2
                switch block % 7 {
                case 0: values.append(g * scale)
                case 1: values.append(g * g * g * scale)
                case 2: values.append(u * scale)
                case 3: values.append(i % 37 == 0 ? 50 * scale : g * scale * 0.01)
                case 4: values.append((u * 8).rounded() * scale)
                case 5: values.append(i / 32 % 2 == 0 ? 0.25 * scale : g * scale)
                // Flat sub-blocks (all 32 values equal and ≤ 0: max == min), zeros and negative, beside normal ones.
                case 6 where block % 2 == 0: values.append(i / 32 % 3 == 0 ? 0 : (i / 32 % 3 == 1 ? -scale : g * scale))
                default: values.append(-u * scale)
                }
            }
        }
        // The widest path is the one the CPU has: AVX-512 where /proc/cpuinfo lists avx512f.
        unsetenv("DSCONVERT_NO_SIMD")
        unsetenv("DSCONVERT_NO_AVX512")
        let cpu = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        XCTAssertEqual(dsconvert_ggml_simd_level(), cpu.contains(" avx512f") ? 2 : (cpu.contains(" avx2") ? 1 : 0))
        for type in [GGMLType.q4K, .q6K] {
            setenv("DSCONVERT_NO_SIMD", "1", 1)
            let scalar = type.encode(values)
            unsetenv("DSCONVERT_NO_SIMD")
            setenv("DSCONVERT_NO_AVX512", "1", 1)
            XCTAssertLessThanOrEqual(dsconvert_ggml_simd_level(), 1)
            let avx2 = type.encode(values)
            unsetenv("DSCONVERT_NO_AVX512")
            let best = type.encode(values)
            XCTAssertEqual(avx2, scalar, "\(type) AVX2")
            XCTAssertEqual(best, scalar, "\(type) widest SIMD")
        }
    }

    private func compareWithGoldens() throws {
        let input = try Data(contentsOf: ggufFixtures.appendingPathComponent("input.f32"))
        let rows = input.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        XCTAssertEqual(rows.count, 20 * 2048)
        for (type, file) in [(GGMLType.q8_0, "q8_0"), (.q5_0, "q5_0"), (.q4K, "q4_K"), (.q6K, "q6_K")] {
            let expected = [UInt8](try Data(contentsOf: ggufFixtures.appendingPathComponent("\(file).bin")))
            let perRow = type.bytes(elements: 2048)
            XCTAssertEqual(expected.count, 20 * perRow, file)
            for row in 0..<20 {
                let got = type.encode(Array(rows[(row * 2048)..<((row + 1) * 2048)]))
                XCTAssertEqual(got, Array(expected[(row * perRow)..<((row + 1) * perRow)]), "\(file) row \(row)")
                // An odd number of blocks (7 of 256, or 63 of 32): the last one is searched alone.
                let part = type.bytes(elements: 1792)
                XCTAssertEqual(type.encode(Array(rows[(row * 2048)..<(row * 2048 + 1792)])), Array(expected[(row * perRow)..<(row * perRow + part)]),
                               "\(file) row \(row), first 1792 values")
            }
        }
    }

    /// f16 and bf16 round to nearest even, with ggml's NaN and overflow rules.
    func testHalfPrecisionEncodings() {
        let values: [Float] = [0, -0.0, 1, 65504, 65520, 1e-8, 6e-8, -2.5e-5, .infinity, .nan, 3.14159]
        let f16 = GGMLType.f16.encode(values)
        let expectedF16: [UInt16] = values.map { $0.isNaN ? 0x7E00 : Float16($0).bitPattern }
        XCTAssertEqual((0..<values.count).map { UInt16(f16[2 * $0]) | UInt16(f16[2 * $0 + 1]) << 8 }, expectedF16)
        let bf16 = GGMLType.bf16.encode([1.00390625, 1.01171875, -3.0e38])
        XCTAssertEqual(bf16, [0x80, 0x3F, 0x82, 0x3F, 0x62, 0xFF], "ties to even; rounding up a large value")
    }

    /// The container round-trips through the checked reader, with the layout llama.cpp requires.
    func testHeaderRoundTripAndLayout() throws {
        let metadata = [GGUFMetadata("general.architecture", .string("deepseek2")), GGUFMetadata("deepseek2.block_count", .uint32(4)),
                        GGUFMetadata("deepseek2.rope.scaling.factor", .float32(40)), GGUFMetadata("deepseek2.expert_weights_norm", .bool(true)),
                        GGUFMetadata("tokenizer.ggml.tokens", .strings(["a", "é", ""])), GGUFMetadata("tokenizer.ggml.token_type", .int32s([1, 3, 5]))]
        let tensors = GGUFEncoder.layout([GGUFTensorInfo(name: "token_embd.weight", dimensions: [64, 3], type: .f16),
                                          GGUFTensorInfo(name: "blk.0.attn_q.weight", dimensions: [256, 2], type: .q4K),
                                          GGUFTensorInfo(name: "output_norm.weight", dimensions: [5], type: .f32)])
        XCTAssertEqual(tensors.map(\.offset), [0, 384, 672], "each tensor padded to 32 bytes")
        var file = GGUFEncoder.header(metadata: metadata, tensors: tensors)
        XCTAssertEqual(file.count % 32, 0)
        XCTAssertEqual(Array(file[0..<8]), [0x47, 0x47, 0x55, 0x46, 3, 0, 0, 0])
        for t in tensors { file += [UInt8](repeating: 7, count: t.byteCount) + [UInt8](repeating: 0, count: GGUFEncoder.padded(t.byteCount) - t.byteCount) }
        let parsed = try file.withUnsafeBytes { try GGUFFile(bytes: $0) }
        XCTAssertEqual(parsed.metadata, metadata)
        XCTAssertEqual(parsed.tensors, tensors)
        XCTAssertEqual(parsed.dataOffset, GGUFEncoder.header(metadata: metadata, tensors: tensors).count)
    }

    /// One typed error per rule.
    func testReaderRefusesBadFiles() throws {
        let tensors = GGUFEncoder.layout([GGUFTensorInfo(name: "a", dimensions: [32], type: .q8_0)])
        let good = GGUFEncoder.header(metadata: [GGUFMetadata("k", .uint32(1))], tensors: tensors) + [UInt8](repeating: 0, count: 64)
        func error(_ bytes: [UInt8]) -> GGUFError? {
            do { _ = try bytes.withUnsafeBytes { try GGUFFile(bytes: $0) }; return nil } catch { return error as? GGUFError }
        }
        XCTAssertNil(error(good))
        XCTAssertEqual(error(Array(good.prefix(20))).map { if case .truncated = $0 { true } else { false } }, true)
        var bad = good; bad[0] = 0x48
        XCTAssertEqual(error(bad), .badMagic)
        bad = good; bad[4] = 2
        XCTAssertEqual(error(bad), .unsupportedVersion(2))
        XCTAssertEqual(error(Array(good.prefix(good.count - 64))), .dataBeyondFile(tensor: "a", end: good.count - 64 + 34, fileSize: good.count - 64))
        let twice = GGUFEncoder.header(metadata: [GGUFMetadata("k", .uint32(1)), GGUFMetadata("k", .uint32(2))], tensors: [])
        XCTAssertEqual(error(twice), .duplicateKey("k"))
        let misplaced = GGUFEncoder.header(metadata: [], tensors: [GGUFTensorInfo(name: "a", dimensions: [32], type: .q8_0, offset: 32)]) + [UInt8](repeating: 0, count: 128)
        XCTAssertEqual(error(misplaced), .misplacedTensor(tensor: "a", expected: 0, actual: 32))
        let ragged = GGUFEncoder.header(metadata: [], tensors: [GGUFTensorInfo(name: "a", dimensions: [33], type: .q8_0)]) + [UInt8](repeating: 0, count: 128)
        XCTAssertEqual(error(ragged), .badDimensions(tensor: "a", dimensions: [33]))
        // Dimensions whose product overflows 64 bits are refused, not multiplied.
        let huge = GGUFEncoder.header(metadata: [], tensors: [GGUFTensorInfo(name: "a", dimensions: [1 << 32, 1 << 32], type: .f32)])
        XCTAssertEqual(error(huge), .badDimensions(tensor: "a", dimensions: [1 << 32, 1 << 32]))
        // general.alignment replaces 32 (llama.cpp reads it); one that is not a power of two is refused.
        let aligned = GGUFEncoder.header(metadata: [GGUFMetadata("general.alignment", .uint32(64))], tensors: [])
        XCTAssertNil(error(aligned + [UInt8](repeating: 0, count: 64 - aligned.count % 64)))
        XCTAssertEqual(error(GGUFEncoder.header(metadata: [GGUFMetadata("general.alignment", .uint32(48))], tensors: [])), .badAlignment)
        // Metadata arrays hold at most 2^24 elements in all (found by an audit: 50 MB of u8 elements
        // took 1.6 GB). Two arrays of u8, 2^23 + 1 elements each: the second passes the bound.
        func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
        let half = UInt64(GGUFFile.arrayElementLimit / 2 + 1)
        var arrays = GGUFEncoder.magic + le(GGUFEncoder.version) + le(UInt64(0)) + le(UInt64(2))
        for key in ["a", "b"] {
            arrays += le(UInt64(1)) + Array(key.utf8) + le(GGUFValueType.array.rawValue) + le(GGUFValueType.uint8.rawValue) + le(half)
            arrays += [UInt8](repeating: 0, count: Int(half))
        }
        XCTAssertEqual(error(arrays), .tooManyArrayElements(key: "b", total: 2 * half))
        XCTAssertEqual(GGUFError.tooManyArrayElements(key: "b", total: 2 * half).description,
                       "metadata arrays up to 'b' hold 16777218 elements, more than the 16777216 this reader keeps in memory")
    }
}
