import Foundation
import SafeTensors
import XCTest

final class AbsorbTests: XCTestCase {
    var dir: URL!
    override func setUpWithError() throws { dir = try makeTemporaryDirectory() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    func testAbsorbThenValidateAndInspect() throws {
        let input = fixtures.appendingPathComponent("v2")
        let output = dir.appendingPathComponent("absorbed")
        let r = try runTool("dsconvert-absorb", ["--input", input.path, "--output", output.path, "--mode", "fold", "--dtype", "f32"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("mla_absorbed_fold"), r.stdout)
        XCTAssertTrue(r.stdout.contains("attention form"), "the cost report is printed")

        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: output.appendingPathComponent("config.json"))) as! [String: Any]
        let record = config["dsconvert_absorption"] as! [String: Any]
        XCTAssertEqual(record["attention_form"] as? String, "mla_absorbed_fold")
        XCTAssertEqual(record["softmax_scale"] as? Double, 1)
        XCTAssertEqual(record["folds"] as? [String], ["kv_a_layernorm_gamma", "q_a_layernorm_gamma", "softmax_scale"])
        XCTAssertEqual(config["rope_scaling"] as? NSDictionary, (try JSONSerialization.jsonObject(with: Data(contentsOf: input.appendingPathComponent("config.json"))) as! [String: Any])["rope_scaling"] as? NSDictionary)

        let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: output.appendingPathComponent("dsconvert.json"))) as! [String: Any]
        XCTAssertEqual((manifest["stages"] as! [[String: Any]]).map { $0["stage"] as! String }, ["absorb"])

        let inspect = try runTool("dsconvert", ["inspect", output.path])
        XCTAssertEqual(inspect.status, 0, inspect.stderr)
        XCTAssertTrue(inspect.stdout.contains("check           ok"), inspect.stdout)
        let checkpoint = try Checkpoint(directory: output)
        XCTAssertEqual(checkpoint.info("model.layers.1.self_attn.q_absorbed.weight")?.shape, [4 * 32, 48])
        XCTAssertEqual(checkpoint.info("model.layers.1.self_attn.o_absorbed.weight")?.shape, [96, 4 * 32])
        XCTAssertNil(checkpoint.info("model.layers.1.self_attn.kv_a_layernorm.weight"), "γ folded, tensor dropped")
        let original = try Checkpoint(directory: input)  // held: views point into its mapping
        XCTAssertEqual(Array(try checkpoint.view("model.layers.1.mlp.experts.3.up_proj.weight").bytes),
                       Array(try original.view("model.layers.1.mlp.experts.3.up_proj.weight").bytes), "other tensors copied byte for byte")

        let v = try runTool("dsconvert", ["validate", "--reference", input.path, "--candidate", output.path, "--max-logit-delta", "1e-3"])
        XCTAssertEqual(v.status, 0, v.stdout + v.stderr)

        // Absorbing an absorbed checkpoint is refused; so is reshard-then-absorb onto an existing output.
        let again = try runTool("dsconvert", ["absorb", "--input", output.path, "--output", dir.appendingPathComponent("twice").path])
        XCTAssertEqual(again.status, 1)
        XCTAssertTrue(again.stderr.contains("attention is already absorbed"), again.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("twice").path))
        let exists = try runTool("dsconvert", ["absorb", "--input", input.path, "--output", output.path])
        XCTAssertEqual(exists.status, 1)
        XCTAssertTrue(exists.stderr.contains("already exists"), exists.stderr)
    }

    func testSplitKeepsKVBAndUsageErrors() throws {
        let output = dir.appendingPathComponent("split")
        let r = try runTool("dsconvert", ["absorb", "--input", fixtures.appendingPathComponent("lite").path, "--output", output.path, "--keep-kv-b"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let checkpoint = try Checkpoint(directory: output)
        XCTAssertEqual(checkpoint.info("model.layers.0.self_attn.w_uk.weight")?.shape, [4, 16, 32])
        XCTAssertEqual(checkpoint.info("model.layers.0.self_attn.w_uv.weight")?.shape, [4, 12, 32])
        XCTAssertEqual(checkpoint.info("model.layers.0.self_attn.w_uk.weight")?.dtype, .bf16)
        XCTAssertNotNil(checkpoint.info("model.layers.0.self_attn.kv_b_proj.weight"))
        XCTAssertEqual(try runTool("dsconvert", ["absorb", "--input", "a", "--output", "b", "--mode", "mha"]).status, 64)
        XCTAssertEqual(try runTool("dsconvert", ["absorb", "--input", "a", "--output", "b", "--dtype", "f16"]).status, 64)
    }
}
