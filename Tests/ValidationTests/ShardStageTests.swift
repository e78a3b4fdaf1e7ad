import Conversion
import DeepSeekModel
import Foundation
import SafeTensors
import XCTest
@testable import ReferenceModel
@testable import Validation

final class ShardStageTests: XCTestCase {
    var dir: URL!
    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("dsconvert-shard-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    /// Fixture → devices: 8 where the experts divide (lite 8, v2 and trained 16), 4 for fp8's 4 experts.
    let devices = ["lite": 8, "v2": 8, "fp8": 4, "trained": 8, "trained-wide": 8]

    private func shard(_ input: URL, _ n: Int, once: Bool = false, name: String) throws -> (URL, PlacementManifest) {
        let out = dir.appendingPathComponent(name)
        // Hugging Face's 5 GB limit, so each device has exactly one dense and one expert shard.
        return (out, try ShardStage.run(input: input, output: out, devices: n, denseOnce: once, force: false, shardSize: .limit(5_000_000_000)))
    }

    /// The union of the device checkpoints is the input, tensor for tensor and byte for byte.
    private func assertReassembles(_ input: URL, _ output: URL, devices n: Int, once: Bool, file: StaticString = #filePath, line: UInt = #line) throws {
        let original = try Checkpoint(directory: input)
        let parts = try (0..<n).map { try Checkpoint(directory: output.appendingPathComponent("device-\($0)")) }
        var seen = Set<String>()
        for (d, part) in parts.enumerated() {
            for info in part.tensors {
                seen.insert(info.name)
                XCTAssertTrue(try part.view(info.name).bytes.elementsEqual(try original.view(info.name).bytes), "\(info.name) on device \(d)", file: file, line: line)
                let expert = TensorNames.expertIndex(of: info.name)
                if once && expert == nil { XCTAssertEqual(d, 0, "dense weights only on device-0", file: file, line: line) }
            }
        }
        XCTAssertEqual(seen, Set(original.tensors.map(\.name)), file: file, line: line)
        // Each routed expert lives on exactly one device.
        let expertCount = parts.reduce(0) { $0 + $1.tensors.filter { TensorNames.expertIndex(of: $0.name) != nil }.count }
        XCTAssertEqual(expertCount, original.tensors.filter { TensorNames.expertIndex(of: $0.name) != nil }.count, file: file, line: line)
    }

    func testEveryFixtureReassemblesAndRunsAsExpertParallelism() throws {
        for fixture in fixtureNames {
            let input = fixtures.appendingPathComponent(fixture), n = devices[fixture]!
            let (out, manifest) = try shard(input, n, name: fixture)
            try assertReassembles(input, out, devices: n, once: false)
            XCTAssertLessThan(manifest.expertBytesSpread, 0.01, "expert bytes per device within 1%")
            // Per device: a shard of the non-expert weights, then one of its experts; devices after the
            // first hard-link device-0's dense shard (same inode) instead of writing it again.
            XCTAssertEqual(manifest.files.count, 2 * n)
            let dense0 = try FileManager.default.attributesOfItem(atPath: out.appendingPathComponent("device-0/model-00001-of-00002.safetensors").path)
            for d in 1..<n {
                let dense = try FileManager.default.attributesOfItem(atPath: out.appendingPathComponent("device-\(d)/model-00001-of-00002.safetensors").path)
                XCTAssertEqual(dense[.systemFileNumber] as? Int, dense0[.systemFileNumber] as? Int, "\(fixture): device-\(d) dense shard is a link")
            }
            // Sharded and unsharded forwards agree within 1e-5 (observed ≤ 8.1e-6: only the order of the fp32 expert sums differs).
            let reference = try ModelLoader.open(input), candidate = try ModelLoader.open(out)
            XCTAssertNotNil(candidate.placement)
            let report = try Validator.compare(reference: reference, candidate: candidate, tokens: try TokenFile.load(input.appendingPathComponent("tokens.json")),
                                               tokensLabel: "t", heldout: nil, thresholds: DriftThresholds(maxLogitDelta: 1e-5))
            XCTAssertTrue(report.verdict.passed, "\(fixture): \(report.verdict.failures)")
            XCTAssertEqual(report.routing?.agreement, 1)
            let fanOut = try XCTUnwrap(report.fanOut)
            XCTAssertLessThanOrEqual(fanOut.max, manifest.placement.deviceBoundM, fixture)
            if reference.config.topkMethod == .groupLimitedGreedy {
                XCTAssertEqual(reference.config.nGroup, n)
                XCTAssertLessThanOrEqual(fanOut.max, reference.config.topkGroup!, "\(fixture): fan-out never exceeds topk_group")
            }
        }
    }

    func testDenseOnceAndConvertedInputs() throws {
        let trained = fixtures.appendingPathComponent("trained")
        let (once, _) = try shard(trained, 8, once: true, name: "once")
        try assertReassembles(trained, once, devices: 8, once: true)
        let device3 = try DeepSeekConfig.load(directory: once.appendingPathComponent("device-3"))
        XCTAssertEqual(device3.placement?.denseLocation, "../device-0")
        XCTAssertEqual(try Checkpoint(directory: once.appendingPathComponent("device-3")).tensors.count, 3 * 2 * 3, "3 MoE layers x 2 experts x 3 projections")

        // FP8 (scales travel with their weights) and absorbed inputs shard and run the same way.
        let fp8 = dir.appendingPathComponent("fp8")
        _ = try QuantizeStage.quantize(input: trained, output: fp8, options: .init(), force: false)
        let absorbed = dir.appendingPathComponent("absorbed")
        _ = try AbsorbStage.run(input: trained, output: absorbed, options: AbsorbOptions(mode: .fold), dtype: .bf16, force: false)
        let kv6 = dir.appendingPathComponent("kv6")
        _ = try QuantizeStage.run(input: trained, output: kv6, fp8: nil,
                                  kv6: .init(calibration: try TokenFile.load(trained.appendingPathComponent("calibration.json")), calibrationSource: "calibration.json"), force: false)
        for input in [fp8, absorbed, kv6] {
            let (out, _) = try shard(input, 8, name: "sharded-\(input.lastPathComponent)")
            try assertReassembles(input, out, devices: 8, once: false)
            if input == fp8 { XCTAssertNotNil(try Checkpoint(directory: out.appendingPathComponent("device-5")).info("model.layers.2.mlp.experts.10.down_proj.weight_scale_inv")) }
            let report = try Validator.compare(reference: try ModelLoader.open(input), candidate: try ModelLoader.open(out),
                                               tokens: try TokenFile.load(trained.appendingPathComponent("tokens.json")), tokensLabel: "t",
                                               heldout: nil, thresholds: DriftThresholds(maxLogitDelta: 1e-5))
            XCTAssertTrue(report.verdict.passed, "\(report.verdict.failures)")
        }
    }

    func testPlacementRules() throws {
        var config = try DeepSeekConfig.load(directory: fixtures.appendingPathComponent("configs/DeepSeek-V2"))
        let eight = try ExpertPlacement.plan(config: config, devices: 8)
        XCTAssertEqual(eight.range(device: 7), 140..<160)
        XCTAssertEqual(eight.deviceBoundM, 3)
        XCTAssertEqual(try ExpertPlacement.plan(config: config, devices: 4).deviceBoundM, 3, "two whole groups per device")
        XCTAssertEqual(try ExpertPlacement.plan(config: config, devices: 16).deviceBoundM, 6, "each group over two devices")
        XCTAssertThrowsError(try ExpertPlacement.plan(config: config, devices: 3)) { XCTAssertTrue("\($0.localizedDescription)".contains("do not split evenly")) }
        config.nRoutedExperts = 24
        XCTAssertThrowsError(try ExpertPlacement.plan(config: config, devices: 3)) { XCTAssertTrue("\($0.localizedDescription)".contains("routing groups unevenly")) }
        let lite = try DeepSeekConfig.load(directory: fixtures.appendingPathComponent("configs/DeepSeek-V2-Lite"))
        XCTAssertEqual(try ExpertPlacement.plan(config: lite, devices: 8).deviceBoundM, 6, "greedy routing: up to k devices")
    }

    /// The V2-shaped real config: bytes per device for the expert part are equal (contiguous equal ranges of equal shapes).
    func testRealV2ExpertBytesBalance() throws {
        let config = try DeepSeekConfig.load(directory: fixtures.appendingPathComponent("configs/DeepSeek-V2"))
        let placement = try ExpertPlacement.plan(config: config, devices: 8)
        var bytes = [Int](repeating: 0, count: 8)
        for t in config.expectedTensors() { if let e = t.expert { bytes[placement.device(ofExpert: e)] += 2 * (try t.elementCount()) } }
        XCTAssertEqual(Set(bytes).count, 1)
        XCTAssertEqual(bytes[0], 59 * 20 * 3 * 5120 * 1536 * 2)
    }
}
