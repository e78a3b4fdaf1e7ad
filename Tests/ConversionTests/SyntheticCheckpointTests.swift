import DeepSeekModel
import SafeTensors
import XCTest
@testable import Conversion

/// The benchmark's synthetic V3 slice stores what the published files store, MTP layer included.
final class SyntheticCheckpointTests: XCTestCase {
    func testV3SliceWithAnMTPLayerIsLaidOutAsPublished() throws {
        let plan = try SyntheticCheckpoint.plan(.v3(dense: 1, moe: 1, mtp: 1))
        let byName = Dictionary(uniqueKeysWithValues: plan.map { ($0.name, $0) })
        // Layer 2 is the MTP layer: its own embedding, head and eh_proj in bf16 (as published), experts in FP8.
        XCTAssertEqual(byName["model.layers.2.embed_tokens.weight"]?.dtype, .bf16)
        XCTAssertEqual(byName["model.layers.2.shared_head.head.weight"]?.shape, [129_280, 7168])
        XCTAssertEqual(byName["model.layers.2.eh_proj.weight"]?.dtype, .bf16)
        XCTAssertEqual(byName["model.layers.2.eh_proj.weight"]?.shape, [7168, 14336])
        XCTAssertNil(byName["model.layers.2.eh_proj.weight_scale_inv"])
        XCTAssertEqual(byName["model.layers.2.mlp.experts.0.gate_proj.weight_scale_inv"]?.shape, [16, 56])
        XCTAssertEqual(byName["model.layers.2.mlp.experts.255.down_proj.weight"]?.dtype, .f8E4M3)
        XCTAssertEqual(byName["model.layers.1.mlp.gate.e_score_correction_bias"]?.dtype, .f32)
        // What the checker expects of the config the slice declares, and nothing else.
        let config = try SyntheticCheckpoint.config(.v3(dense: 1, moe: 1, mtp: 1)).model
        XCTAssertEqual(Array(config.mtpLayers), [2])
        let expected = Set(config.expectedTensors().map(\.name))
        XCTAssertEqual(Set(plan.map(\.name).filter { !$0.hasSuffix(QuantizationConfig.scaleSuffix) }), expected)
        let bytes = plan.reduce(0) { $0 + $1.byteCount }
        XCTAssertEqual(Double(bytes) / 1e9, 31.2, accuracy: 0.5, "16 GB for 1 dense + 1 MoE layer and the vocabulary, plus 15.3 GB of MTP layer")
    }
}
