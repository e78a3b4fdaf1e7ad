import Conversion
import DeepSeekModel
import Foundation
import Numerics
import SafeTensors
import Tokenizer
import XCTest
@testable import ReferenceModel
@testable import Validation

final class FP8StageTests: XCTestCase {
    var dir: URL!
    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("dsconvert-fp8-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    private func quantize(_ fixture: String, _ options: QuantizeStage.FP8Options = .init()) throws -> URL {
        let out = dir.appendingPathComponent("\(fixture)-fp8")
        _ = try QuantizeStage.quantize(input: fixtures.appendingPathComponent(fixture), output: out, options: options, force: true)
        return out
    }

    /// Codes and scales bit-identical to torch's (Fixtures/*/fp8-golden.safetensors, DeepSeek's weight_quant logic),
    /// on the fixtures Fixtures/generate_fp8_goldens.py covers (trained-wide, added for the KV cache, repeats
    /// trained's shapes at twice the width and has no FP8 golden, to keep the repository small).
    func testEveryFixtureTensorMatchesTorchBitForBit() throws {
        for fixture in fixtureNames where fixture != "trained-wide" {
            let out = try Checkpoint(directory: try quantize(fixture))
            let golden = try SafeTensorsFile(path: fixtures.appendingPathComponent("\(fixture)/fp8-golden.safetensors").path)
            XCTAssertEqual(out.tensors.filter { $0.dtype == .f8E4M3 }.count, golden.tensors.count / 2, fixture)
            for info in golden.tensors {
                let ours = try out.view(info.name)
                XCTAssertEqual(ours.dtype, info.dtype, info.name)
                XCTAssertEqual(ours.shape, info.shape, info.name)
                XCTAssertTrue(ours.bytes.elementsEqual(try golden.view(info.name).bytes), "\(fixture) \(info.name)")
            }
        }
    }

    /// quantize → dequantize gives exactly bf16(q · scale) of every block, and copies the rest.
    func testRoundTripEqualsBlockDequantizedValues() throws {
        let fp8 = try quantize("fp8")
        let back = dir.appendingPathComponent("back")
        _ = try QuantizeStage.dequantize(input: fp8, output: back, force: false)
        let q = try Checkpoint(directory: fp8), b = try Checkpoint(directory: back), original = try Checkpoint(directory: fixtures.appendingPathComponent("fp8"))
        XCTAssertEqual(Set(b.tensors.map(\.name)), Set(original.tensors.map(\.name)))
        let table = FP8Codec.decodeTable(.e4m3)
        for info in q.tensors where info.dtype == .f8E4M3 {
            let codes = try q.view(info.name).bytes, scales = try q.view(info.name + "_scale_inv").floats()
            let rows = info.shape[0], cols = info.shape[1], perRow = (cols + 127) / 128
            let restored = try b.view(info.name)
            XCTAssertEqual(restored.dtype, .bf16)
            for r in 0..<rows { for c in 0..<cols {
                let expected = FloatConversion.floatToBF16(table[Int(codes[r * cols + c])] * scales[(r / 128) * perRow + c / 128])
                XCTAssertEqual(restored.bytes.loadUnaligned(fromByteOffset: 2 * (r * cols + c), as: UInt16.self), expected)
            } }
        }
        XCTAssertTrue(try b.view("model.embed_tokens.weight").bytes.elementsEqual(try original.view("model.embed_tokens.weight").bytes))
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: back.appendingPathComponent("config.json"))) as! [String: Any]
        XCTAssertNil(config["quantization_config"])
    }

    /// The trained fixture's drift under FP8 weights, pinned. Measured: KL mean 8.6e-4, KL max 2.8e-2 nats,
    /// top-1 0.984, routing 0.9915, perplexity ratio 1.0018. Thresholds sit ~2x above so that real
    /// regressions (a lost scale, a wrong block) fail while reorderings of fp32 sums do not.
    func testTrainedFixtureDriftWithinPinnedThresholds() throws {
        let reference = fixtures.appendingPathComponent("trained")
        let heldout = try TokenFile.load(reference.appendingPathComponent("heldout.json"))
        let report = try Validator.compare(reference: try ModelLoader.open(reference), candidate: try ModelLoader.open(try quantize("trained")),
                                           tokens: try TokenFile.load(reference.appendingPathComponent("tokens.json")), tokensLabel: "tokens.json",
                                           heldout: (heldout, "heldout.json"), thresholds: FP8StageTests.pinned)
        XCTAssertTrue(report.verdict.passed, "\(report.verdict.failures)")
        XCTAssertGreaterThan(report.logits.klMean, 0, "FP8 is lossy: a zero would mean the weights were not quantized")
    }

    static let pinned = DriftThresholds(maxKLMean: 2e-3, maxKLMax: 0.06, minTop1Agreement: 0.97, minRoutingAgreement: 0.98, maxPerplexityRatio: 1.005)

    func testAbsorbedInputKeepsWUKInBF16UnlessAsked() throws {
        let absorbed = dir.appendingPathComponent("absorbed")
        _ = try AbsorbStage.run(input: fixtures.appendingPathComponent("trained"), output: absorbed, options: AbsorbOptions(mode: .split), dtype: .bf16, force: false)
        let defaultOut = dir.appendingPathComponent("default"), perHead = dir.appendingPathComponent("per-head")
        _ = try QuantizeStage.quantize(input: absorbed, output: defaultOut, options: .init(), force: false)
        _ = try QuantizeStage.quantize(input: absorbed, output: perHead, options: .init(policy: FP8Policy(quantizeAbsorbed: true)), force: false)
        let a = try Checkpoint(directory: defaultOut), b = try Checkpoint(directory: perHead)
        XCTAssertEqual(a.info("model.layers.1.self_attn.w_uk.weight")?.dtype, .bf16)
        XCTAssertEqual(b.info("model.layers.1.self_attn.w_uk.weight")?.dtype, .f8E4M3)
        XCTAssertEqual(b.info("model.layers.1.self_attn.w_uk.weight_scale_inv")?.shape, [4, 1, 1])
        // Both run through the forward and stay close to the original.
        for out in [defaultOut, perHead] {
            let reference = fixtures.appendingPathComponent("trained")
            let report = try Validator.compare(reference: try ModelLoader.open(reference), candidate: try ModelLoader.open(out),
                                               tokens: try TokenFile.load(reference.appendingPathComponent("tokens.json")), tokensLabel: "t",
                                               heldout: nil, thresholds: FP8StageTests.pinned)
            XCTAssertTrue(report.verdict.passed, "\(out.lastPathComponent): \(report.verdict.failures)")
        }
    }

    func testTensorParallelDegreesOnRealConfigs() throws {
        for (name, split, ep) in [("DeepSeek-V2", [1, 2, 4], [1, 2, 4, 8]), ("DeepSeek-V2-Lite", [1], [1])] {
            let config = try DeepSeekConfig.load(directory: fixtures.appendingPathComponent("configs/\(name)"))
            let policy = FP8Policy()
            let tensors = try config.expectedTensors().filter { try policy.shouldQuantize(name: $0.name, shape: $0.shape) }.map { (name: $0.name, shape: $0.shape) }
            XCTAssertEqual(FP8Partitioning.supportedDegrees(fp8Tensors: tensors, block: 128, expertParallel: false), split, name)
            XCTAssertEqual(FP8Partitioning.supportedDegrees(fp8Tensors: tensors, block: 128, expertParallel: true), ep, name)
        }
        // V2-Lite's dense intermediate_size 10944 is not a multiple of 128: keeping layer 0's MLP in bf16 opens TP 2 under EP.
        let lite = try DeepSeekConfig.load(directory: fixtures.appendingPathComponent("configs/DeepSeek-V2-Lite"))
        let skipDense = FP8Policy(skip: [try NamePattern(#"^model\.layers\.0\.mlp\."#)])
        let tensors = try lite.expectedTensors().filter { try skipDense.shouldQuantize(name: $0.name, shape: $0.shape) }.map { (name: $0.name, shape: $0.shape) }
        XCTAssertEqual(FP8Partitioning.supportedDegrees(fp8Tensors: tensors, block: 128, expertParallel: true), [1, 2])
    }
}

final class PercentileTests: XCTestCase {
    /// Nearest rank, as llama-perplexity's "99.0%" KL: the smallest value with at least 99% at or below it.
    func testNearestRank() {
        let values = (1...200).map(Double.init).shuffled()
        XCTAssertEqual(DriftMetrics.percentile(values, 0.99), 198)
        XCTAssertEqual(DriftMetrics.percentile([5], 0.99), 5)
        XCTAssertEqual(DriftMetrics.percentile([], 0.99), 0)
        XCTAssertEqual(DriftMetrics.percentile([3, 1, 2], 0.5), 2)
    }
}
