import DeepSeekModel
import Foundation
import SafeTensors
import XCTest

/// Bad-input catalog cases for absurd numbers (issue "Data safety: absurd numbers must never cost a
/// user a file"): each used to trap (SIGILL/SIGABRT), run out of memory, write NaN or Inf, or name no
/// file; now one error line naming the file, exit 1, nothing left behind.
extension BadInputCatalogTests {
    var numberCases: [Case] {
        configCases + fp8Cases + placementAndTokenCases + [
            Case(name: "--max-shard-size beyond Int", prepare: { work in
                ["reshard", "--input", fixtures.appendingPathComponent("lite").path, "--output", work.appendingPathComponent("out").path, "--max-shard-size", "1e30GB"]
            }, status: 64, fragment: "--max-shard-size: invalid size '1e30GB'"),
            Case(name: "absorb --mode fold overflowing bf16 from finite weights", prepare: { work in
                let ckpt = try self.lite(work)
                // 1e36 in bf16 (0x7A41) at q_proj[0, 0] and kv_b_proj[0, 0]: head 0's W_UK[0]ᵀ·W_UQ[0]
                // product is ~1e72 · softmax scale, finite in f64 and Inf in bf16.
                try self.poison(ckpt, "model.layers.0.self_attn.q_proj.weight", 0x7A41)
                try self.poison(ckpt, "model.layers.0.self_attn.kv_b_proj.weight", 0x7A41)
                return ["absorb", "--mode", "fold", "--input", ckpt.path, "--output", work.appendingPathComponent("out").path]
            }, status: 1, fragment: "absorbing gives tensor 'model.layers.0.self_attn.q_absorbed.weight' values beyond BF16's finite range"),
        ]
    }

    private var configCases: [Case] {
        func quantize(_ ckpt: URL, _ work: URL) -> [String] { ["quantize", "--fp8", "--input", ckpt.path, "--output", work.appendingPathComponent("out").path] }
        func edited(_ name: String, _ fragment: String, _ edit: @escaping (inout [String: Any]) -> Void) -> Case {
            Case(name: name, prepare: { work in
                let ckpt = try self.lite(work)
                try self.editConfig(ckpt, edit)
                return quantize(ckpt, work)
            }, status: 1, fragment: fragment)
        }
        return [
            Case(name: "dimensions whose products overflow (inspect)", prepare: { work in
                let ckpt = try self.lite(work)
                try self.editConfig(ckpt) { for key in ["hidden_size", "num_attention_heads", "qk_nope_head_dim"] { $0[key] = 1 << 24 } }
                return ["inspect", ckpt.appendingPathComponent("config.json").path]
            }, status: 1, fragment: "config.json: sizes overflow: "),
            edited("rope_theta below zero", "config.json: 'rope_theta' must be a positive finite number, is -1.0") { $0["rope_theta"] = -1 },
            edited("rms_norm_eps zero", "config.json: 'rms_norm_eps' must be a positive finite number, is 0.0") { $0["rms_norm_eps"] = 0 },
            edited("YaRN mscale_all_dim negative", "config.json: 'rope_scaling.mscale_all_dim' must be a positive finite number") {
                $0["rope_scaling"] = ["type": "yarn", "factor": 40, "mscale": 0.707, "mscale_all_dim": -0.707, "original_max_position_embeddings": 4096]
            },
            Case(name: "rope_theta overflowing to infinity", prepare: { work in
                let ckpt = try self.lite(work)
                try self.editConfigText(ckpt) { $0.replacingOccurrences(of: "\"rope_theta\": 10000", with: "\"rope_theta\": 1e999") }
                return quantize(ckpt, work)
            }, status: 1, fragment: "config.json: 'rope_theta' is not a finite number"),
            Case(name: "duplicate key in config.json", prepare: { work in
                let ckpt = try self.lite(work)
                try self.editConfigText(ckpt) { $0.replacingOccurrences(of: "\"vocab_size\": 320,", with: "\"vocab_size\": 320, \"vocab_size\": 64,") }
                return quantize(ckpt, work)
            }, status: 1, fragment: "config.json: duplicate key 'vocab_size'"),
            Case(name: "duplicate key in an FP8 config.json", prepare: { work in
                let ckpt = try self.fp8Lite(work)
                try self.editConfigText(ckpt) { $0.replacingOccurrences(of: "\"vocab_size\": 320,", with: "\"vocab_size\": 320, \"vocab_size\": 64,") }
                return ["quantize", "--dequantize", "--input", ckpt.path, "--output", work.appendingPathComponent("out").path]
            }, status: 1, fragment: "config.json: duplicate key 'vocab_size'"),
        ]
    }

    private var fp8Cases: [Case] {
        func block(_ sizes: [Int], _ command: @escaping (URL, URL) -> [String]) -> Case {
            Case(name: "weight_block_size \(sizes): \(command(URL(fileURLWithPath: "in"), URL(fileURLWithPath: "w"))[0])", prepare: { work in
                let ckpt = try self.fp8Lite(work)
                try self.editConfig(ckpt) { config in
                    var q = config["quantization_config"] as! [String: Any]
                    q["weight_block_size"] = sizes
                    config["quantization_config"] = q
                }
                return command(ckpt, work)
            }, status: 1, fragment: "config.json: quantization_config weight_block_size must be [b, b] with b in 1...16777216")
        }
        let dequantize: (URL, URL) -> [String] = { ["quantize", "--dequantize", "--input", $0.path, "--output", $1.appendingPathComponent("out").path] }
        let forward: (URL, URL) -> [String] = { ["forward", "--model", $0.path, "--tokens", fixtures.appendingPathComponent("lite/tokens.json").path,
                                                 "--output", $1.appendingPathComponent("out.safetensors").path] }
        return [
            block([0, 0], dequantize),
            block([Int.max, Int.max], { ckpt, _ in ["inspect", ckpt.path] }),
            block([Int.max, Int.max], forward),
            block([Int.max, 128], dequantize),
            Case(name: "FP8 NaN code through --dequantize", prepare: { work in
                let ckpt = try self.fp8Lite(work)
                try overwrite(ckpt, "model.layers.1.mlp.experts.3.down_proj.weight", with: [0x00, 0x7F])
                return dequantize(ckpt, work)
            }, status: 1, fragment: "FP8 tensor 'model.layers.1.mlp.experts.3.down_proj.weight' holds a NaN or Inf code 0x7F at element 1"),
            Case(name: "FP8 zero scale in inspect", prepare: { work in
                let ckpt = try self.fp8Lite(work)
                try overwrite(ckpt, "model.layers.0.mlp.up_proj.weight_scale_inv", with: [0, 0, 0, 0])
                return ["inspect", ckpt.path]
            }, status: 1, fragment: "scale 'model.layers.0.mlp.up_proj.weight_scale_inv' element 0 is 0.0; block scales must be positive and finite"),
            Case(name: "FP8 negative scale through forward", prepare: { work in
                let ckpt = try self.fp8Lite(work)
                try overwrite(ckpt, "model.layers.0.mlp.up_proj.weight_scale_inv", with: withUnsafeBytes(of: Float(-1).bitPattern.littleEndian) { Array($0) })
                return forward(ckpt, work)
            }, status: 1, fragment: "element 0 is -1.0; block scales must be positive and finite"),
            // Finite codes and a finite scale of 3e38: the cast back overflows. Said as dequantizing
            // (found by an audit: the message spoke of absorbing).
            Case(name: "FP8 scale too large for the cast back", prepare: { work in
                let ckpt = try self.fp8Lite(work)
                try overwrite(ckpt, "model.layers.0.mlp.up_proj.weight_scale_inv", with: withUnsafeBytes(of: Float(3e38).bitPattern.littleEndian) { Array($0) })
                return dequantize(ckpt, work)
            }, status: 1, fragment: "dequantizing tensor 'model.layers.0.mlp.up_proj.weight' gives values beyond bf16's finite range"),
        ]
    }

    private var placementAndTokenCases: [Case] {
        func sharded(_ experts: Int, _ command: @escaping (URL, URL) -> [String]) -> Case {
            Case(name: "placement experts \(experts)", prepare: { work in
                let out = work.appendingPathComponent("sharded")
                XCTAssertEqual(try runTool("dsconvert", ["shard", "--devices", "2", "--input", fixtures.appendingPathComponent("v2").path, "--output", out.path]).status, 0)
                for d in 0..<2 {
                    try self.editConfig(out.appendingPathComponent("device-\(d)")) { config in
                        var record = config["dsconvert_placement"] as! [String: Any]
                        var placement = record["placement"] as! [String: Any]
                        placement["experts"] = experts
                        record["placement"] = placement
                        config["dsconvert_placement"] = record
                    }
                }
                return command(out, work)
            }, status: 1, fragment: "device-0/config.json: inconsistent dsconvert_placement: placement.experts = \(experts), the config has 16 routed experts")
        }
        func tokens(_ name: String, _ ids: [[Int]], fragment: String, _ command: @escaping (URL, URL) -> [String]) -> Case {
            Case(name: name, prepare: { work in
                let url = work.appendingPathComponent("tokens.json")
                try JSONSerialization.data(withJSONObject: ["tokens": ids]).write(to: url)
                return command(url, work)
            }, status: 1, fragment: fragment)
        }
        let lite = fixtures.appendingPathComponent("lite").path
        let forward: (URL, URL) -> [String] = { ["forward", "--model", lite, "--tokens", $0.path, "--output", $1.appendingPathComponent("out.safetensors").path] }
        return [
            sharded(1) { out, _ in ["validate", "--reference", fixtures.appendingPathComponent("v2").path, "--candidate", out.path] },
            sharded(-8) { ["forward", "--model", $0.path, "--tokens", fixtures.appendingPathComponent("v2/tokens.json").path, "--output", $1.appendingPathComponent("out.safetensors").path] },
            tokens("one 40,000-token sequence", [[Int](repeating: 1, count: 40_000)],
                   fragment: "tokens.json: attention scores (1 x 4 heads x 40000² f32) would take 25600000000 bytes, over the forward pass's budget", forward),
            tokens("token id outside the vocabulary (forward)", [[1, 2, 999]], fragment: "tokens.json: token id 999 is outside the vocabulary 0..<320", forward),
            tokens("token id outside the vocabulary (validate)", [[1, 2, 320]], fragment: "tokens.json: token id 320 is outside the vocabulary 0..<320") { url, _ in
                ["validate", "--reference", lite, "--candidate", lite, "--tokens", url.path]
            },
            // Found by an audit: inspect described this as a model without weights and exited 0.
            Case(name: "shards without their index (inspect)", prepare: { work in
                let model = try copyFixture("lite", to: work)
                try FileManager.default.removeItem(at: model.appendingPathComponent("model.safetensors.index.json"))
                return ["inspect", model.path]
            }, status: 1, fragment: "lite: no model.safetensors.index.json or model.safetensors found"),
            // Found by an audit: identical models failed on a NaN perplexity and --json could not be written.
            Case(name: "held-out rows of one token", prepare: { work in
                let model = try copyFixture("trained", to: work)
                try JSONSerialization.data(withJSONObject: ["tokens": [[5], [6]]]).write(to: model.appendingPathComponent("heldout.json"))
                return ["validate", "--reference", model.path, "--candidate", model.path, "--json", work.appendingPathComponent("report.json").path]
            }, status: 1, fragment: "heldout.json: invalid tokens: rows of 1 token give no next-token perplexity (at least 2 are needed)"),
            // Found by an audit: the drift table was printed, then --json failed on an infinite relative error.
            Case(name: "reference whose embedding is all zero (validate)", prepare: { work in
                let model = try copyFixture("lite", to: work)
                let embedding = try Checkpoint(directory: model).info(TensorNames.embedding)!
                try overwrite(model, TensorNames.embedding, with: [UInt8](repeating: 0, count: embedding.dataOffsets.count))
                return ["validate", "--reference", model.path, "--candidate", lite, "--json", work.appendingPathComponent("report.json").path]
            }, status: 1, fragment: "hidden state 0 is all zero while the candidate's is not: its drift has no finite measure"),
            // Found by an audit: a device directory from another shard run (here of a model whose expert
            // 12 differs) was run as this output's own.
            Case(name: "device directory of another shard run (forward)", prepare: { work in
                let v2 = fixtures.appendingPathComponent("v2"), mine = work.appendingPathComponent("mine"), other = work.appendingPathComponent("other")
                let altered = try copyFixture("v2", to: work)
                try overwrite(altered, "model.layers.1.mlp.experts.12.up_proj.weight", with: [0x3F, 0x80])
                for (input, output) in [(v2, mine), (altered, other)] {
                    XCTAssertEqual(try runTool("dsconvert", ["shard", "--devices", "2", "--input", input.path, "--output", output.path]).status, 0)
                }
                try FileManager.default.removeItem(at: mine.appendingPathComponent("device-1"))
                try FileManager.default.moveItem(at: other.appendingPathComponent("device-1"), to: mine.appendingPathComponent("device-1"))
                return ["forward", "--model", mine.path, "--tokens", v2.appendingPathComponent("tokens.json").path,
                        "--output", work.appendingPathComponent("out.safetensors").path]
            }, status: 1, fragment: "not the file "),
            // Found by an audit: Foundation's JSON error was printed without the file's name.
            Case(name: "tokenizer_config.json that is not JSON (export)", prepare: { work in
                let tokenizer = work.appendingPathComponent("tokenizer")
                try writeByteTokenizer(into: tokenizer)
                try Data("{".utf8).write(to: tokenizer.appendingPathComponent("tokenizer_config.json"))
                return ["export", "--gguf", "--input", fixtures.appendingPathComponent("trained").path, "--tokenizer", tokenizer.path,
                        "--output", work.appendingPathComponent("out").path]
            }, status: 1, fragment: "tokenizer/tokenizer_config.json: cannot convert: not valid JSON ("),
        ]
    }

    /// lite quantized to FP8 (E4M3, 128-blocks) under the work dir, as the input to damage.
    func fp8Lite(_ work: URL) throws -> URL {
        let out = work.appendingPathComponent("fp8")
        let r = try runTool("dsconvert", ["quantize", "--fp8", "--input", fixtures.appendingPathComponent("lite").path, "--output", out.path])
        XCTAssertEqual(r.status, 0, r.stderr)
        return out
    }

    /// Edits config.json as text (for what JSONSerialization cannot write: duplicate keys, 1e999).
    func editConfigText(_ ckpt: URL, _ edit: (String) -> String) throws {
        let url = ckpt.appendingPathComponent("config.json")
        let before = try String(contentsOf: url, encoding: .utf8)
        let after = edit(before)
        XCTAssertNotEqual(before, after, "the edit applies")
        try after.write(to: url, atomically: true, encoding: .utf8)
    }
}

/// Absurd numbers that must not be refused but handled: f32 subnormal weights quantize to zero
/// blocks with a positive scale (they used to become NaN codes with scale 0).
final class BadNumbersEndToEndTests: XCTestCase {
    func testF32SubnormalBlocksQuantizeToZeroCodesAndDequantize() throws {
        let dir = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let input = dir.appendingPathComponent("in"), fp8 = dir.appendingPathComponent("fp8"), back = dir.appendingPathComponent("back")
        try FileManager.default.createDirectory(at: input, withIntermediateDirectories: true)
        // lite's tensors in f32, with one weight all 1e-44 (f32 subnormal: amax / 448 rounds to 0).
        let source = try Checkpoint(directory: fixtures.appendingPathComponent("lite"))
        let tiny = "model.layers.0.mlp.gate_proj.weight"
        let layout = CheckpointLayout(tensors: source.tensors.map { PlannedTensor(name: $0.name, dtype: .f32, shape: $0.shape) })
        let writer = CheckpointWriter(layout: layout, directory: input)
        for t in source.tensors {
            var values = try source.view(t.name).floats()
            if t.name == tiny { values = values.indices.map { $0 % 2 == 0 ? Float(bitPattern: 7) : -Float(bitPattern: 7) } }  // ±1e-44 as f32: 7 x 2^-149
            try writer.write(t.name, bytes: values.withUnsafeBytes { Array($0) })
        }
        try writer.finish()
        try FileManager.default.copyItem(at: fixtures.appendingPathComponent("lite/config.json"), to: input.appendingPathComponent("config.json"))

        let quantized = try runTool("dsconvert", ["quantize", "--fp8", "--input", input.path, "--output", fp8.path])
        XCTAssertEqual(quantized.status, 0, quantized.stderr)
        let checkpoint = try Checkpoint(directory: fp8)
        XCTAssertEqual(try checkpoint.view(tiny + "_scale_inv").floats(), [1, 1], "[160, 64] in 128-blocks: the all-zero block's scale, never 0")
        XCTAssertEqual(Set(Array(try checkpoint.view(tiny).bytes)), [0x00, 0x80], "signed zeros, no NaN codes")
        let inspected = try runTool("dsconvert", ["inspect", fp8.path])
        XCTAssertEqual(inspected.status, 0, inspected.stderr)
        let dequantized = try runTool("dsconvert", ["quantize", "--dequantize", "--input", fp8.path, "--output", back.path])
        XCTAssertEqual(dequantized.status, 0, dequantized.stderr)
        XCTAssertTrue(try Checkpoint(directory: back).view(tiny).floats().allSatisfy { $0 == 0 })
    }
}

/// Replaces the first bytes of `tensor`'s data in its shard.
func overwrite(_ ckpt: URL, _ tensor: String, with bytes: [UInt8]) throws {
    let checkpoint = try Checkpoint(directory: ckpt)
    let shard = checkpoint.shardName(of: tensor)!
    let offset = checkpoint.shard(shard)!.header.dataStart + checkpoint.shard(shard)!.info(tensor)!.dataOffsets.lowerBound
    let url = ckpt.appendingPathComponent(shard)
    var data = try Data(contentsOf: url)
    data.replaceSubrange(offset..<(offset + bytes.count), with: bytes)
    try data.write(to: url)
}
