import Conversion
import DeepSeekModel
import Foundation
import SafeTensors
import XCTest
@testable import ReferenceModel
@testable import Validation

/// The V3 family (Fixtures/generate_v3.py, transformers 5.23.0's DeepseekV3ForCausalLM): `v3` (8 groups
/// of 2 experts, noaux_tc with a non-zero bias, an MTP layer), `v3-fp8` (the same model FP8-native, as
/// DeepSeek publishes V3) and `kimi` (Kimi-K2-style: 24 ungrouped experts, no query compression).
///
/// Tolerances are those of the V2 goldens (ForwardGoldenTests): logits max |Δ| ≤ 1e-3, hidden states
/// ≤ 2e-4 of the layer's max |value|, routing exact, weights within 1e-4 · routed_scaling_factor.
final class V3FamilyTests: XCTestCase {
    static let names = ["v3", "v3-fp8", "kimi"]
    var dir: URL!
    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("dsconvert-v3-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    /// Runs `model` on the fixture's tokens and checks it against the fixture's transformers golden.
    private func assertMatchesGolden(_ fixture: String, _ model: LoadedModel, logitTolerance: Double = 1e-3,
                                     file: StaticString = #filePath, line: UInt = #line) throws {
        let input = fixtures.appendingPathComponent(fixture)
        let result = try model.forward().run(tokens: try TokenFile.load(input.appendingPathComponent("tokens.json")), recordHiddenStates: true)
        let golden = try SafeTensorsFile(path: input.appendingPathComponent("golden.safetensors").path)
        XCTAssertLessThanOrEqual(DriftMetrics.maxAbsDifference(try golden.view("logits").floats(), result.logits), logitTolerance, fixture, file: file, line: line)
        XCTAssertEqual(result.hiddenStates.count, model.config.numHiddenLayers + 1, file: file, line: line)
        for (i, hidden) in result.hiddenStates.enumerated() {
            let expected = try golden.view("hidden_states.\(i)").floats()
            let scale = Double(expected.map { abs($0) }.max()!)
            XCTAssertLessThanOrEqual(DriftMetrics.maxAbsDifference(expected, hidden) / scale, 2e-4, "\(fixture) hidden_states.\(i)", file: file, line: line)
        }
        XCTAssertEqual(result.routing.map(\.layer), (0..<model.config.numHiddenLayers).filter(model.config.isMoELayer), file: file, line: line)
        for record in result.routing {
            let experts = try golden.view("routing.\(record.layer).experts")
            let expected = (0..<(experts.bytes.count / 4)).map { experts.bytes.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self) }
            XCTAssertEqual(record.experts, expected, "\(fixture) layer \(record.layer): routing must match exactly", file: file, line: line)
            let weights = try golden.view("routing.\(record.layer).weights").floats()
            XCTAssertLessThanOrEqual(DriftMetrics.maxAbsDifference(weights, record.weights), 1e-4 * model.config.routedScalingFactor, fixture, file: file, line: line)
        }
    }

    /// bf16, FP8-native (dequantized on the fly) and ungrouped: the forward pass is transformers'.
    func testForwardMatchesTransformers() throws {
        for name in Self.names {
            let model = try ModelLoader.open(fixtures.appendingPathComponent(name))
            XCTAssertEqual(model.config.architecture, .deepseekV3)
            try assertMatchesGolden(name, model)
        }
    }

    /// The bias only chooses: without it the same scores pick other experts (so the goldens test it).
    func testRouterBiasChoosesButDoesNotWeigh() throws {
        let config = try DeepSeekConfig.load(directory: fixtures.appendingPathComponent("v3"))
        let logits: [Float] = (0..<16).map { Float($0 % 5) * 0.3 - 0.6 }
        var bias = [Float](repeating: 0, count: 16)
        bias[15] = 5  // expert 15's group now wins and expert 15 is chosen, weighted by its unbiased score
        let plain = MoERouter(config: config, bias: [Float](repeating: 0, count: 16)).route(logits: logits)
        let biased = MoERouter(config: config, bias: bias).route(logits: logits)
        XCTAssertFalse(plain.contains { $0.expert == 15 })
        let chosen = try XCTUnwrap(biased.first { $0.expert == 15 })
        let scores = biased.map { 1 / (1 + exp(-logits[$0.expert])) }
        XCTAssertEqual(chosen.weight, 1 / (1 + exp(-logits[15])) / scores.reduce(0, +) * 2.5, accuracy: 1e-6)
        XCTAssertEqual(biased.reduce(0) { $0 + $1.weight }, 2.5, accuracy: 1e-5, "normalized, then scaled by routed_scaling_factor")
    }

    /// Dropped groups are masked with −inf (transformers 5): when every biased score is negative, an
    /// expert of a dropped group must still never be chosen (a 0 mask would pick them first). The
    /// fixtures' biases cannot tell the two apart, so this case is built by hand.
    func testDroppedGroupsAreNeverChosen() throws {
        let config = try DeepSeekConfig.load(directory: fixtures.appendingPathComponent("v3"))  // 8 groups of 2, top-4 groups, top-4
        let logits = [Float](repeating: -8, count: 16)
        let bias: [Float] = (0..<16).map { -1 + Float($0 / 2) * 0.01 }  // groups 4...7 score best, every c < 0
        let chosen = MoERouter(config: config, bias: bias).route(logits: logits).map(\.expert)
        XCTAssertEqual(chosen.count, 4)
        XCTAssertTrue(chosen.allSatisfy { $0 >= 8 }, "\(chosen): only experts of the kept groups 4...7")
    }

    /// The router's top-k is the sort it replaces, order included (the chosen weights are summed in
    /// it): values sorted largest first, ties to the lower index, the first `count` kept. Values drawn
    /// from a few levels so ties are common, with ±0 and infinities (V3's masked groups are −inf).
    func testTopIndicesIsTheStableDescendingSort() {
        var generator = SystemRandomNumberGenerator()
        let levels: [Float] = [-.infinity, -1.5, -0.0, 0, 0.25, Float(0.25).nextUp, 3, .infinity]
        for _ in 0..<2000 {
            let n = Int.random(in: 0...40, using: &generator)
            let values = (0..<n).map { _ in levels.randomElement(using: &generator)! }
            let count = Int.random(in: 0...(n + 2), using: &generator)
            let sorted = values.indices.sorted { values[$0] != values[$1] ? values[$0] > values[$1] : $0 < $1 }
            XCTAssertEqual(MoERouter.topIndices(values, count: count), Array(sorted.prefix(count)), "\(values) top \(count)")
        }
    }

    /// `shard --devices 8`: one routing group per device on V3 (M = topk_group = 4), 3 experts per
    /// device on Kimi-style (M = k); the union of the devices is the input byte for byte (FP8 codes and
    /// scales together, the MTP layer's experts placed like any other); forward agrees within 1e-5.
    func testShardEightWays() throws {
        for (name, bound) in [("v3", 4), ("v3-fp8", 4), ("kimi", 6)] {
            let input = fixtures.appendingPathComponent(name), out = dir.appendingPathComponent(name)
            let manifest = try ShardStage.run(input: input, output: out, devices: 8, denseOnce: false, force: false, shardSize: .limit(5_000_000_000))
            XCTAssertEqual(manifest.placement.deviceBoundM, bound, name)
            let config = try DeepSeekConfig.load(directory: input)
            XCTAssertEqual(manifest.layers.map(\.layer), config.allLayers.filter(config.isMoELayer), "\(name): MTP layers placed too")
            let original = try Checkpoint(directory: input)
            var seen = Set<String>()
            for d in 0..<8 {
                let part = try Checkpoint(directory: out.appendingPathComponent("device-\(d)"))
                for info in part.tensors {
                    seen.insert(info.name)
                    XCTAssertTrue(try part.view(info.name).bytes.elementsEqual(try original.view(info.name).bytes), "\(name) \(info.name)")
                    if let e = TensorNames.expertIndex(of: info.name) { XCTAssertTrue(manifest.placement.range(device: d).contains(e)) }
                }
            }
            XCTAssertEqual(seen, Set(original.tensors.map(\.name)), name)
            let report = try Validator.compare(reference: try ModelLoader.open(input), candidate: try ModelLoader.open(out),
                                               tokens: try TokenFile.load(input.appendingPathComponent("tokens.json")), tokensLabel: "t",
                                               heldout: nil, thresholds: DriftThresholds(maxLogitDelta: 1e-5))
            XCTAssertTrue(report.verdict.passed, "\(name): \(report.verdict.failures)")
            XCTAssertLessThanOrEqual(try XCTUnwrap(report.fanOut).max, bound, name)
        }
    }

    /// Kimi-K2's files carry `self_attn.rotary_emb.inv_freq` buffers: accepted, ignored by the forward
    /// pass and left out by stages, as engines do.
    func testRotaryBuffersAreAcceptedAndLeftOut() throws {
        let input = fixtures.appendingPathComponent("kimi"), copy = dir.appendingPathComponent("kimi-inv-freq")
        let source = try Checkpoint(directory: input)
        let buffers = (0..<3).map { "model.layers.\($0).self_attn.rotary_emb.inv_freq" }
        let planned = source.tensors.map { PlannedTensor(name: $0.name, dtype: $0.dtype, shape: $0.shape) } + buffers.map { PlannedTensor(name: $0, dtype: .f32, shape: [4]) }
        try FileManager.default.createDirectory(at: copy, withIntermediateDirectories: true)
        let writer = CheckpointWriter(layout: CheckpointLayout(tensors: planned), directory: copy)
        for t in source.tensors { try writer.write(t.name, bytes: try source.view(t.name).bytes) }
        for name in buffers { try writer.write(name, bytes: [Float](repeating: 0.5, count: 4).withUnsafeBytes { Array($0) }) }
        try writer.finish()
        for file in ["config.json", "tokens.json", "golden.safetensors"] {
            try FileManager.default.copyItem(at: input.appendingPathComponent(file), to: copy.appendingPathComponent(file))
        }
        XCTAssertTrue(CheckpointChecker.check(config: try DeepSeekConfig.load(directory: copy), checkpoint: try Checkpoint(directory: copy)).isValid)
        let model = try ModelLoader.open(copy)
        let result = try model.forward().run(tokens: try TokenFile.load(copy.appendingPathComponent("tokens.json")))
        let golden = try SafeTensorsFile(path: copy.appendingPathComponent("golden.safetensors").path)
        XCTAssertLessThanOrEqual(DriftMetrics.maxAbsDifference(try golden.view("logits").floats(), result.logits), 1e-3)
        let out = dir.appendingPathComponent("kimi-ep8")
        _ = try ShardStage.run(input: copy, output: out, devices: 8, denseOnce: false, force: false, shardSize: .limit(5_000_000_000))
        XCTAssertNil(try Checkpoint(directory: out.appendingPathComponent("device-0")).info(buffers[0]))
    }

    /// Codes in another format than `quantization_config.fmt` declares would be read wrongly: refused.
    func testFP8FormatMustMatchTheConfig() throws {
        let input = fixtures.appendingPathComponent("v3-fp8")
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: input.appendingPathComponent("config.json"))) as! [String: Any]
        var q = config["quantization_config"] as! [String: Any]
        q["fmt"] = "e5m2"
        config["quantization_config"] = q
        let model = try DeepSeekConfig.decode(try JSONSerialization.data(withJSONObject: config), path: "c.json")
        let problems = CheckpointChecker.check(config: model, checkpoint: try Checkpoint(directory: input)).problems
        XCTAssertEqual(problems.count, 176, "every FP8 weight")
        XCTAssertTrue(problems[0].errorDescription!.contains("is F8_E4M3, but quantization_config declares fmt e5m2"), "\(problems[0])")
    }

    /// `quantize --dequantize` of the FP8-native copy is DeepSeek's fp8_cast_bf16.py byte for byte.
    func testDequantizeIsDeepSeeksCast() throws {
        let out = dir.appendingPathComponent("bf16")
        let summary = try QuantizeStage.dequantize(input: fixtures.appendingPathComponent("v3-fp8"), output: out, force: false)
        let golden = try SafeTensorsFile(path: fixtures.appendingPathComponent("v3-fp8/dequantized-golden.safetensors").path)
        XCTAssertEqual(summary.quantized, golden.tensors.count)
        let result = try Checkpoint(directory: out)
        for info in golden.tensors {
            XCTAssertTrue(try result.view(info.name).bytes.elementsEqual(try golden.view(info.name).bytes), info.name)
        }
        XCTAssertFalse(result.tensors.contains { $0.name.hasSuffix(QuantizationConfig.scaleSuffix) })
        XCTAssertNil(try DeepSeekConfig.load(directory: out).quantization)
    }

    /// The dequantize step hands large weights to the writer in pieces of whole block rows: cut into
    /// the smallest pieces (one 128-row block row each), every weight is still DeepSeek's cast.
    func testDequantizePiecesAreWholeBlockRows() throws {
        let step = try DequantizeStep(source: try CheckpointSource(directory: fixtures.appendingPathComponent("v3-fp8")), pieceBytes: 1)
        let golden = try SafeTensorsFile(path: fixtures.appendingPathComponent("v3-fp8/dequantized-golden.safetensors").path)
        var multiPiece = 0
        for info in golden.tensors {
            guard case let .pieces(pieces) = try step.payload(info.name) else { return XCTFail("\(info.name): not in pieces") }
            var bytes = [UInt8](repeating: 0, count: pieces.count)
            try bytes.withUnsafeMutableBytes { raw in
                for offset in stride(from: 0, to: pieces.count, by: pieces.pieceBytes) {
                    try pieces.produce(offset, UnsafeMutableRawBufferPointer(rebasing: raw[offset..<min(pieces.count, offset + pieces.pieceBytes)]))
                }
            }
            if pieces.pieceBytes < pieces.count { multiPiece += 1 }
            XCTAssertTrue(bytes.elementsEqual(try golden.view(info.name).bytes), info.name)
        }
        XCTAssertGreaterThan(multiPiece, 10, "weights of more than 128 rows come in several pieces")
    }

    /// absorb on the FP8-native input folds the exact dequantized values: with f32 storage the result
    /// is the FP8 model's own (its golden within 1e-3); FP8 weights absorb does not touch pass through
    /// with their scales, and the MTP layer is absorbed like the others.
    func testAbsorbFromFP8Input() throws {
        let input = fixtures.appendingPathComponent("v3-fp8")
        for mode in AbsorbMode.allCases {
            let form = mode.form
            let out = dir.appendingPathComponent("absorbed-\(form.rawValue)")
            _ = try AbsorbStage.run(input: input, output: out, options: AbsorbOptions(mode: mode), dtype: .f32, force: false)
            try assertMatchesGolden("v3-fp8", try ModelLoader.open(out))
            let original = try Checkpoint(directory: input), absorbed = try Checkpoint(directory: out)
            for name in ["model.layers.1.mlp.experts.3.down_proj.weight", "model.layers.1.mlp.experts.3.down_proj.weight_scale_inv",
                         "model.layers.3.self_attn.kv_a_proj_with_mqa.weight", "model.layers.3.eh_proj.weight"] {
                XCTAssertTrue(try absorbed.view(name).bytes.elementsEqual(try original.view(name).bytes), name)
            }
            let mtpAbsorbed = form == .split ? "model.layers.3.self_attn.w_uk.weight" : "model.layers.3.self_attn.q_absorbed.weight"
            XCTAssertEqual(absorbed.info(mtpAbsorbed)?.dtype, .f32)
            XCTAssertNil(absorbed.info("model.layers.3.self_attn.kv_b_proj.weight_scale_inv"))
        }
    }

    /// `convert --absorb --fp8` on the FP8-native input: the absorbed weights are quantized again in the
    /// input's blocks, every FP8 weight absorb leaves alone keeps its codes and scales, and the result
    /// runs; `quantize --kv6` calibrates on the FP8 input and keeps it FP8.
    func testConvertAndKV6OnFP8Input() throws {
        let input = fixtures.appendingPathComponent("v3-fp8")
        let out = dir.appendingPathComponent("converted")
        _ = try ConvertPipeline.run(input: input, output: out, options: .init(absorb: AbsorbOptions(mode: .split), fp8: .init()), force: false)
        let converted = try Checkpoint(directory: out), original = try Checkpoint(directory: input)
        XCTAssertEqual(converted.info("model.layers.2.self_attn.q_b_proj.weight")?.dtype, .f8E4M3)
        XCTAssertNotNil(converted.info("model.layers.2.self_attn.q_b_proj.weight_scale_inv"))
        for name in ["model.layers.2.mlp.experts.0.up_proj.weight", "model.layers.2.mlp.experts.0.up_proj.weight_scale_inv"] {
            XCTAssertTrue(try converted.view(name).bytes.elementsEqual(try original.view(name).bytes), name)
        }
        let tokens = try TokenFile.load(input.appendingPathComponent("tokens.json"))
        _ = try ModelLoader.open(out).forward().run(tokens: tokens)

        let kv6 = dir.appendingPathComponent("kv6")
        _ = try QuantizeStage.run(input: input, output: kv6, fp8: nil, kv6: .init(calibration: tokens, calibrationSource: "tokens.json"), force: false)
        let declared = try DeepSeekConfig.load(directory: kv6)
        XCTAssertEqual(declared.kvCache?.format, "mla-kv6c")
        XCTAssertEqual(declared.quantization, try DeepSeekConfig.load(directory: input).quantization)
        let calibrated = try Checkpoint(directory: kv6)
        XCTAssertEqual(calibrated.info("model.layers.0.self_attn.kv_b_proj.weight")?.dtype, .f8E4M3, "an FP8 input stays FP8")
        XCTAssertTrue(try calibrated.view("model.layers.1.mlp.experts.5.gate_proj.weight").bytes.elementsEqual(
            try original.view("model.layers.1.mlp.experts.5.gate_proj.weight").bytes))
        _ = try ModelLoader.open(kv6).forward().run(tokens: tokens)
    }
}
