import Conversion
import Foundation
import SafeTensors
import Tokenizer
import XCTest

final class QuantizeTests: XCTestCase {
    var dir: URL!
    override func setUpWithError() throws { dir = try makeTemporaryDirectory() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    func testQuantizeInspectValidateDequantize() throws {
        let input = fixtures.appendingPathComponent("v2"), fp8 = dir.appendingPathComponent("fp8")
        let r = try runTool("dsconvert-quantize", ["--fp8", "--input", input.path, "--output", fp8.path, "--skip", "shared_experts"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: fp8.appendingPathComponent("config.json"))) as! [String: Any]
        let q = config["quantization_config"] as! [String: Any]
        XCTAssertEqual(q["quant_method"] as? String, "fp8")
        XCTAssertEqual(q["fmt"] as? String, "e4m3")
        XCTAssertEqual(q["activation_scheme"] as? String, "dynamic")
        XCTAssertEqual(q["weight_block_size"] as? [Int], [128, 128])
        let c = try Checkpoint(directory: fp8)
        XCTAssertEqual(c.info("model.layers.1.mlp.shared_experts.up_proj.weight")?.dtype, .bf16, "--skip keeps it")
        XCTAssertEqual(c.info("model.layers.1.mlp.gate.weight")?.dtype, .bf16, "the router stays bf16")
        XCTAssertEqual(c.info("model.layers.1.mlp.experts.0.up_proj.weight")?.dtype, .f8E4M3)
        // The manifest records the patterns as a list: `--skip 'a b'` and `--skip a --skip b` differ
        // (found by an audit: both were recorded, and resumed, as "a b").
        XCTAssertEqual(try ConversionManifest.load(directory: fp8)?.stages.last?.options["skip"], #"["shared_experts"]"#)
        let inspect = try runTool("dsconvert", ["inspect", fp8.path])
        XCTAssertEqual(inspect.status, 0, inspect.stderr)
        XCTAssertTrue(inspect.stdout.contains("vLLM tensor parallelism: TP 1"), inspect.stdout)
        // Runs through validate; drift limits are pinned on the trained fixture (FP8StageTests), not on
        // this random-weight one, whose routed_scaling_factor 16 amplifies every rounding.
        let v = try runTool("dsconvert", ["validate", "--reference", input.path, "--candidate", fp8.path, "--min-routing", "none", "--min-top1", "none",
                                          "--max-kl-mean", "none", "--max-kl-max", "none", "--max-ppl-ratio", "none"])
        XCTAssertEqual(v.status, 0, v.stderr)
        XCTAssertTrue(v.stdout.contains("routing      agreement"), v.stdout)

        // FP8 in, FP8 blocks kept: with the same --skip nothing is left to quantize; without it, only
        // the shared experts it skipped are quantized and every FP8 weight passes through untouched.
        let again = try runTool("dsconvert", ["quantize", "--fp8", "--skip", "shared_experts", "--input", fp8.path, "--output", dir.appendingPathComponent("x").path])
        XCTAssertEqual(again.status, 1)
        XCTAssertTrue(again.stderr.contains("already FP8"), again.stderr)
        let reblock = try runTool("dsconvert", ["quantize", "--fp8", "--block", "64", "--input", fp8.path, "--output", dir.appendingPathComponent("x").path])
        XCTAssertEqual(reblock.status, 1)
        XCTAssertTrue(reblock.stderr.contains("already FP8 (e4m3, 128x128 blocks); --dequantize first"), reblock.stderr)
        let rest = dir.appendingPathComponent("rest")
        XCTAssertEqual(try runTool("dsconvert", ["quantize", "--fp8", "--input", fp8.path, "--output", rest.path]).status, 0)
        let restCheckpoint = try Checkpoint(directory: rest)
        XCTAssertEqual(restCheckpoint.info("model.layers.1.mlp.shared_experts.up_proj.weight")?.dtype, .f8E4M3)
        for name in ["model.layers.1.mlp.experts.0.up_proj.weight", "model.layers.1.mlp.experts.0.up_proj.weight_scale_inv"] {
            XCTAssertEqual(Array(try restCheckpoint.view(name).bytes), Array(try c.view(name).bytes), name)
        }

        let e5m2 = dir.appendingPathComponent("e5m2")
        XCTAssertEqual(try runTool("dsconvert", ["quantize", "--fp8", "--fp8-format", "e5m2", "--input", input.path, "--output", e5m2.path]).status, 0)
        XCTAssertEqual(try Checkpoint(directory: e5m2).info("model.layers.0.mlp.up_proj.weight")?.dtype, .f8E5M2)
        XCTAssertEqual(try runTool("dsconvert", ["inspect", e5m2.path]).status, 0)

        let back = dir.appendingPathComponent("back")
        let d = try runTool("dsconvert", ["quantize", "--dequantize", "--input", fp8.path, "--output", back.path])
        XCTAssertEqual(d.status, 0, d.stderr)
        XCTAssertEqual(try Checkpoint(directory: back).info("model.layers.1.mlp.experts.0.up_proj.weight")?.dtype, .bf16)
        XCTAssertEqual(try runTool("dsconvert", ["inspect", back.path]).status, 0)
    }

    /// The most reported loader failure: a config claiming FP8 for a tensor with no scale.
    func testMissingScaleIsAClearErrorEverywhere() throws {
        let fp8 = dir.appendingPathComponent("fp8")
        XCTAssertEqual(try runTool("dsconvert", ["quantize", "--fp8", "--input", fixtures.appendingPathComponent("lite").path, "--output", fp8.path]).status, 0)
        // Rewrite the checkpoint without one scale.
        let broken = dir.appendingPathComponent("broken")
        try FileManager.default.createDirectory(at: broken, withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: fp8.appendingPathComponent("config.json"), to: broken.appendingPathComponent("config.json"))
        let source = try Checkpoint(directory: fp8)
        let dropped = "model.layers.1.self_attn.o_proj.weight_scale_inv"
        let kept = source.tensors.filter { $0.name != dropped }
        let writer = CheckpointWriter(layout: CheckpointLayout(tensors: kept.map { PlannedTensor(name: $0.name, dtype: $0.dtype, shape: $0.shape) }), directory: broken)
        for t in kept { try writer.write(t.name, bytes: try source.view(t.name).bytes) }
        try writer.finish()

        for args in [["inspect", broken.path], ["quantize", "--dequantize", "--input", broken.path, "--output", dir.appendingPathComponent("out").path],
                     ["validate", "--reference", fixtures.appendingPathComponent("lite").path, "--candidate", broken.path]] {
            let r = try runTool("dsconvert", args)
            XCTAssertEqual(r.status, 1, "\(args)")
            let errors = r.stderrLines.filter { $0.contains("error:") }
            XCTAssertEqual(errors.count, 1, r.stderr)
            XCTAssertTrue(errors[0].contains("FP8 tensor 'model.layers.1.self_attn.o_proj.weight' has no scale"), r.stderr)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("out").path))
    }

    func testUsage() throws {
        XCTAssertEqual(try runTool("dsconvert-quantize", ["--input", "a", "--output", "b"]).status, 64, "one of --fp8 / --dequantize")
        XCTAssertEqual(try runTool("dsconvert-quantize", ["--fp8", "--dequantize", "--input", "a", "--output", "b"]).status, 64)
        XCTAssertEqual(try runTool("dsconvert-quantize", ["--fp8", "--input", "a", "--output", "b", "--skip", "("]).status, 64)
        XCTAssertEqual(try runTool("dsconvert-quantize", ["--fp8", "--input", "a", "--output", "b", "--fp8-format", "e3m4"]).status, 64)
        let word = try runTool("dsconvert", ["quantize", "--fp8", "--input", "a", "--output", "b", "--skip", "\\w+"])
        XCTAssertEqual(word.status, 64)
        XCTAssertTrue(word.stderr.contains("--skip '\\w+' is not a regular expression dsconvert reads (unsupported construct escape '\\w')"), word.stderr)
    }

    /// Found by an audit: `--skip '^([a-z._0-9]+)+Z'` ran for hours in NSRegularExpression, which has no
    /// limit. The tokenizer's matcher refuses it on the first name it gives up on; no output is left.
    func testRunawaySkipPatternIsRefused() throws {
        let out = dir.appendingPathComponent("out")
        let pattern = "^(?:[a-z._0-9]|[a-z._0-9])+Z"
        let r = try runTool("dsconvert", ["quantize", "--fp8", "--skip", pattern, "--input", fixtures.appendingPathComponent("lite").path, "--output", out.path])
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertEqual(r.stderrLines.count, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("dsconvert quantize: error: --skip \"\(pattern)\" gives up on '"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out.path))
        // The pattern the audit wrote is answered at once (its runs' failures are remembered) and skips nothing.
        let nested = try runTool("dsconvert", ["quantize", "--fp8", "--skip", "^([a-z._0-9]+)+Z", "--input", fixtures.appendingPathComponent("lite").path,
                                               "--output", dir.appendingPathComponent("nested").path])
        XCTAssertEqual(nested.status, 0, nested.stderr)
    }

    /// Found by a review: a name that already matched was searched on and could be refused, and the
    /// budget was per name, so a pattern costing millions per name ran for hours over V3's names.
    func testSkipPatternStopsAtItsFirstMatchAndSharesOneBudget() throws {
        let first = try NamePattern("model|(?:.|.)+Z")
        XCTAssertTrue(try first.matches("model.layers.0.mlp.experts.0.gate_proj.weight"))
        let costly = try NamePattern("^(?:.|.){1,22}Z")
        let names = (0..<200).map { "model.layers.\($0).mlp.experts.\($0).gate_proj.weight" }
        XCTAssertThrowsError(try names.forEach { _ = try costly.matches($0) }) { error in
            XCTAssertTrue((error as? NamePattern.Refusal)?.reason.contains("backtracks over the") == true, "\(error)")
        }
    }
}
