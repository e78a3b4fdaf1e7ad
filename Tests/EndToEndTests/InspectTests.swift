import Foundation
import XCTest

final class InspectTests: XCTestCase {
    var dir: URL!
    override func setUpWithError() throws { dir = try makeTemporaryDirectory() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    func testInspectEveryFixture() throws {
        // Parameter counts from the official safetensors reader (sum of numel over all shards).
        let expected = ["lite": "242,208", "v2": "451,728", "fp8": "2,068,432"]
        for (name, count) in expected {
            let r = try runTool("dsconvert", ["inspect", fixtures.appendingPathComponent(name).path])
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertTrue(r.stdout.contains("\(count) total"), r.stdout)
            XCTAssertTrue(r.stdout.contains("check           ok"), r.stdout)
            XCTAssertEqual(r.stderr, "")
        }
        let trained = try runTool("dsconvert", ["inspect", fixtures.appendingPathComponent("trained").path])
        XCTAssertEqual(trained.status, 0, trained.stderr)
    }

    func testInspectJSONAndTensors() throws {
        let r = try runTool("dsconvert", ["inspect", fixtures.appendingPathComponent("v2").path, "--json", "--tensors"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let json = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: Any]
        let accounting = json["accounting"] as! [String: Any]
        XCTAssertEqual(accounting["total_parameters"] as? Int, 451_728)
        let routing = accounting["routing"] as! [String: Any]
        XCTAssertEqual(routing["groups"] as? Int, 8)
        XCTAssertEqual(routing["device_bound_m"] as? Int, 3)
        XCTAssertEqual((json["check"] as! [String: Any])["status"] as? String, "ok")
        XCTAssertEqual((json["tensors"] as! [Any]).count, 137)
    }

    func testInspectRealConfigsWithoutWeights() throws {
        let r = try runTool("dsconvert", ["inspect", fixtures.appendingPathComponent("configs/DeepSeek-V2/config.json").path])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("235,741,434,880 total, 20,851,512,320 active"), r.stdout)
        XCTAssertTrue(r.stdout.contains("mla-kv6    432 B/layer, 25,920 B for 60 layers (6.000 bits/element)"), r.stdout)
    }

    func testHelpAndUsageErrors() throws {
        for args in [["--help"], ["inspect", "--help"], ["inspect", "-h"], ["reshard", "--help"]] {
            let r = try runTool("dsconvert", args)
            XCTAssertEqual(r.status, 0, "\(args)")
            XCTAssertTrue(r.stdout.contains("USAGE: dsconvert"), r.stdout)
        }
        for args in [[], ["frobnicate"], ["inspect"], ["inspect", "a", "b"], ["inspect", "--bogus", "x"], ["reshard", "--input"]] {
            let r = try runTool("dsconvert", args)
            XCTAssertEqual(r.status, 64, "\(args): \(r.stderr)")
        }
        let r = try runTool("dsconvert", ["inspect", "--bogus", "x"])
        XCTAssertEqual(r.stderrLines, ["dsconvert inspect: error: unknown option '--bogus' (see 'dsconvert inspect --help')"])
    }

    /// Found by an audit: a shard run's root (placement.json, device-N) was asked for its config.json.
    /// It is named for what it is, and a device directory inspects as the checkpoint it is.
    func testShardRootPointsToItsDevices() throws {
        let out = dir.appendingPathComponent("sharded")
        XCTAssertEqual(try runTool("dsconvert", ["shard", "--devices", "2", "--input", fixtures.appendingPathComponent("v2").path, "--output", out.path]).status, 0)
        let r = try runTool("dsconvert", ["inspect", out.path])
        XCTAssertEqual(r.status, 1)
        let named = "\(out.path): a sharded output (placement.json): forward and validate take it whole; inspect, export and the conversion stages "
            + "take one checkpoint (a device directory such as \(out.path)/device-0, or the checkpoint before shard)"
        XCTAssertEqual(r.stderrLines, ["dsconvert inspect: error: " + named])
        // So do export and the conversion stages (a review found export saying there were no weights).
        for (command, arguments) in [("export", ["--gguf"]), ("absorb", []), ("quantize", ["--fp8"])] {
            let refused = try runTool("dsconvert", [command] + arguments + ["--input", out.path, "--output", dir.appendingPathComponent(command).path])
            XCTAssertEqual(refused.status, 1, command)
            XCTAssertEqual(refused.stderrLines, ["dsconvert \(command): error: " + named], command)
        }
        XCTAssertEqual(try runTool("dsconvert", ["inspect", out.appendingPathComponent("device-0").path]).status, 0)
    }

    func testInspectReportsCheckerProblems() throws {
        let ckpt = try copyFixture("lite", to: dir)
        let configURL = ckpt.appendingPathComponent("config.json")
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: configURL)) as! [String: Any]
        config["v_head_dim"] = 10
        try JSONSerialization.data(withJSONObject: config).write(to: configURL)
        let r = try runTool("dsconvert", ["inspect", ckpt.path])
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.stderrLines.count, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("model.layers.0.self_attn.kv_b_proj.weight' has shape [112, 32], config.json implies [104, 32]"), r.stderr)
        XCTAssertTrue(r.stdout.contains("INVALID: 6 problem(s)"), r.stdout)
    }

    func testConfigErrors() throws {
        let ckpt = try copyFixture("lite", to: dir)
        try Data("{\"architectures\": [\"LlamaForCausalLM\"]}".utf8).write(to: ckpt.appendingPathComponent("config.json"))
        var r = try runTool("dsconvert", ["inspect", ckpt.path])
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.stderrLines.count, 1)
        // The class is decoded first: a config of another model is named as such, not as a missing key.
        XCTAssertTrue(r.stderr.contains("config.json: unsupported architecture LlamaForCausalLM (supported: DeepseekV2ForCausalLM, DeepseekV3ForCausalLM)"), r.stderr)
        for name in ["DeepseekV32ForCausalLM", "Qwen3MoeForCausalLM"] {
            var config = try JSONSerialization.jsonObject(with: Data(contentsOf: fixtures.appendingPathComponent("lite/config.json"))) as! [String: Any]
            config["architectures"] = [name]
            try JSONSerialization.data(withJSONObject: config).write(to: ckpt.appendingPathComponent("config.json"))
            r = try runTool("dsconvert", ["inspect", ckpt.path])
            XCTAssertEqual(r.status, 1)
            XCTAssertEqual(r.stderrLines, ["dsconvert inspect: error: \(ckpt.path)/config.json: unsupported architecture \(name) (supported: DeepseekV2ForCausalLM, DeepseekV3ForCausalLM)"])
        }
        try FileManager.default.removeItem(at: ckpt.appendingPathComponent("config.json"))
        r = try runTool("dsconvert", ["inspect", ckpt.path])
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.stderrLines, ["dsconvert inspect: error: \(ckpt.path)/config.json: missing or unreadable config.json"])
    }
}

/// Each safetensors rule of the reference implementation, through `dsconvert inspect`: one error
/// line naming the file (and tensor), exit 1.
final class SafeTensorsRuleTests: XCTestCase {
    var dir: URL!
    override func setUpWithError() throws { dir = try makeTemporaryDirectory() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    private func checkpoint(with bytes: [UInt8]) throws -> URL {
        let ckpt = dir.appendingPathComponent("ckpt")
        try? FileManager.default.removeItem(at: ckpt)
        try FileManager.default.createDirectory(at: ckpt, withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: fixtures.appendingPathComponent("lite/config.json"), to: ckpt.appendingPathComponent("config.json"))
        try Data(bytes).write(to: ckpt.appendingPathComponent("model.safetensors"))
        return ckpt
    }

    private func file(_ header: String, data: Int = 0, length: UInt64? = nil) -> [UInt8] {
        let h = Array(header.utf8)
        return withUnsafeBytes(of: (length ?? UInt64(h.count)).littleEndian) { Array($0) } + h + [UInt8](repeating: 0, count: data)
    }

    private func assertOneLineError(_ bytes: [UInt8], contains fragment: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let ckpt = try checkpoint(with: bytes)
        let r = try runTool("dsconvert", ["inspect", ckpt.path])
        XCTAssertEqual(r.status, 1, file: file, line: line)
        XCTAssertEqual(r.stderrLines.count, 1, r.stderr, file: file, line: line)
        XCTAssertTrue(r.stderr.hasPrefix("dsconvert inspect: error: \(ckpt.path)/model.safetensors: "), r.stderr, file: file, line: line)
        XCTAssertTrue(r.stderr.contains(fragment), "expected '\(fragment)' in: \(r.stderr)", file: file, line: line)
        XCTAssertEqual(r.stdout, "", file: file, line: line)
    }

    func testEveryRule() throws {
        let a4 = #"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}"#
        try assertOneLineError([1, 2, 3], contains: "truncated file")
        try assertOneLineError(file("{}", length: 4096), contains: "runs past the end")
        try assertOneLineError(file("{}", length: 100_000_001), contains: "exceeds the 100000000-byte limit")
        try assertOneLineError(file(#"{"a":{"dtype":}"#), contains: "header is not valid JSON")
        try assertOneLineError(file(#"["a"]"#), contains: "does not start with '{'")
        try assertOneLineError(file(#"{"a":{"dtype":"Q7","shape":[4],"data_offsets":[0,4]}}"#, data: 4), contains: "tensor 'a': unknown dtype 'Q7'")
        try assertOneLineError(file(#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,4]}}"#, data: 4), contains: "tensor 'a': data_offsets span 4 bytes but shape and dtype need 16")
        try assertOneLineError(file(a4 + #","b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#, data: 6), contains: "tensor 'b' overlaps tensor 'a'")
        try assertOneLineError(file(a4 + #","b":{"dtype":"U8","shape":[4],"data_offsets":[6,10]}}"#, data: 10), contains: "bytes 4..<6 before tensor 'b'")
        try assertOneLineError(file(a4 + "}", data: 9), contains: "tensors end at data byte 4 but the data section is 9 bytes")
        try assertOneLineError(file(#"{"a":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,4]}}"#, data: 4), contains: "tensor 'a': shape product overflows")
        try assertOneLineError(file(a4 + "," + a4.dropFirst() + "}", data: 4), contains: "duplicate tensor name 'a'")
    }

    func testIndexRules() throws {
        let ckpt = try copyFixture("lite", to: dir)
        let indexURL = ckpt.appendingPathComponent("model.safetensors.index.json")
        let good = try String(contentsOf: indexURL, encoding: .utf8)

        try good.replacingOccurrences(of: "\"model.norm.weight\": \"model-0000", with: "\"model.norm.weight\": \"model-9999").write(to: indexURL, atomically: true, encoding: .utf8)
        var r = try runTool("dsconvert", ["inspect", ckpt.path])
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.stderrLines.count, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("model.safetensors.index.json: tensor 'model.norm.weight' is mapped to shard 'model-9999"), r.stderr)

        try good.replacingOccurrences(of: "\"model.norm.weight\"", with: "\"model.norm.weight_gone\"").write(to: indexURL, atomically: true, encoding: .utf8)
        r = try runTool("dsconvert", ["inspect", ckpt.path])
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.stderrLines.count, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("tensor 'model.norm.weight_gone' is mapped to shard"), r.stderr)
        XCTAssertTrue(r.stderr.contains("which does not contain it"), r.stderr)

        // A shard removed from disk.
        try good.write(to: indexURL, atomically: true, encoding: .utf8)
        let shards = try FileManager.default.contentsOfDirectory(atPath: ckpt.path).filter { $0.hasPrefix("model-") }.sorted()
        try FileManager.default.removeItem(at: ckpt.appendingPathComponent(shards[1]))
        r = try runTool("dsconvert", ["inspect", ckpt.path])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("is mapped to shard '\(shards[1])', which does not exist"), r.stderr)

        // A truncated shard names the shard file.
        try FileManager.default.copyItem(at: fixtures.appendingPathComponent("lite").appendingPathComponent(shards[1]), to: ckpt.appendingPathComponent(shards[1]))
        let handle = try FileHandle(forWritingTo: ckpt.appendingPathComponent(shards[1]))
        try handle.truncate(atOffset: 1000)
        try handle.close()
        r = try runTool("dsconvert", ["inspect", ckpt.path])
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.stderrLines.count, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains(shards[1]), r.stderr)
    }
}
