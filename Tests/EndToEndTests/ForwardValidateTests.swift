import Foundation
import SafeTensors
import XCTest

final class ForwardValidateTests: XCTestCase {
    var dir: URL!
    override func setUpWithError() throws { dir = try makeTemporaryDirectory() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    func testForwardWritesLogitsHiddenStatesAndRouting() throws {
        let model = fixtures.appendingPathComponent("v2")
        let out = dir.appendingPathComponent("out.safetensors")
        let r = try runTool("dsconvert", ["forward", "--model", model.path, "--tokens", model.appendingPathComponent("tokens.json").path,
                                          "--output", out.path, "--hidden-states"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let file = try SafeTensorsFile(path: out.path)
        XCTAssertEqual(file.info("logits")?.shape, [2, 16, 384])
        XCTAssertEqual(file.info("hidden_states.3")?.shape, [2, 16, 96])
        XCTAssertEqual(file.info("routing.1.experts")?.dtype, .i32)
        XCTAssertEqual(file.info("routing.2.weights")?.shape, [2, 16, 4])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), ["out.safetensors"], "no partial file left")
    }

    /// --mtp adds the first MTP layer's logits and routing, the same bytes at any thread count; a model
    /// without an MTP layer is a usage error.
    func testForwardWritesMTPLogits() throws {
        let v3 = fixtures.appendingPathComponent("v3")
        var outputs: [Data] = []
        for threads in ["1", "2"] {
            let out = dir.appendingPathComponent("mtp-\(threads).safetensors")
            let r = try runTool("dsconvert", ["forward", "--model", v3.path, "--tokens", v3.appendingPathComponent("tokens.json").path, "--mtp",
                                              "--output", out.path], environment: ["DSCONVERT_THREADS": threads])
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertTrue(r.stdout.contains("MTP logits [2, 15, 320]"), r.stdout)
            let file = try SafeTensorsFile(path: out.path)
            XCTAssertEqual(file.info("mtp_logits")?.shape, [2, 15, 320])
            XCTAssertEqual(file.info("routing.3.experts")?.shape, [2, 15, 4])
            outputs.append(try Data(contentsOf: out))
        }
        XCTAssertEqual(outputs[0], outputs[1])
        let lite = fixtures.appendingPathComponent("lite")
        let r = try runTool("dsconvert", ["forward", "--model", lite.path, "--tokens", lite.appendingPathComponent("tokens.json").path, "--mtp",
                                          "--output", dir.appendingPathComponent("no.safetensors").path])
        // The model's fault, not the usage's (found by an audit: it exited 64).
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertEqual(r.stderrLines, ["dsconvert forward: error: \(lite.path): no MTP layer to run for --mtp (num_nextn_predict_layers is 0 or absent, or its weights are not in the checkpoint)"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("no.safetensors").path))
        // Sequences of one token give the MTP layer nothing to predict: the tokens' fault, exit 1.
        let single = dir.appendingPathComponent("single.json")
        try Data(#"{"tokens": [[5], [7]]}"#.utf8).write(to: single)
        let short = try runTool("dsconvert", ["forward", "--model", fixtures.appendingPathComponent("v3").path, "--tokens", single.path, "--mtp",
                                              "--output", dir.appendingPathComponent("short.safetensors").path])
        XCTAssertEqual(short.status, 1, short.stderr)
        XCTAssertEqual(short.stderrLines, ["dsconvert forward: error: \(single.path): invalid tokens: --mtp needs sequences of at least 2 tokens "
                                           + "(position i predicts token i + 2 from token i + 1)"])
    }

    func testForwardRejectsBadTokens() throws {
        let model = fixtures.appendingPathComponent("lite")
        for (text, fragment) in [("{\"tokens\": [[1, 2], [3]]}", "same length"), ("{\"tokens\": [[1, 99999]]}", "outside the vocabulary"),
                                 ("[1, 2]", "expected {\"tokens\""), ("{\"tokens\": [[-1]]}", "non-negative")] {
            let tokens = dir.appendingPathComponent("t.json")
            try Data(text.utf8).write(to: tokens)
            let out = dir.appendingPathComponent("o.safetensors")
            let r = try runTool("dsconvert", ["forward", "--model", model.path, "--tokens", tokens.path, "--output", out.path])
            XCTAssertEqual(r.status, 1, text)
            XCTAssertEqual(r.stderrLines.count, 1, r.stderr)
            XCTAssertTrue(r.stderr.contains(fragment), r.stderr)
            XCTAssertFalse(FileManager.default.fileExists(atPath: out.path))
        }
    }

    func testValidateExecutableAndFrontAgree() throws {
        let trained = fixtures.appendingPathComponent("trained").path
        let report = dir.appendingPathComponent("report.json")
        let a = try runTool("dsconvert-validate", ["--reference", trained, "--candidate", trained, "--json", report.path, "--max-logit-delta", "0"])
        XCTAssertEqual(a.status, 0, a.stderr)
        XCTAssertTrue(a.stdout.contains("PASS: within thresholds"), a.stdout)
        XCTAssertTrue(a.stdout.contains("perplexity   reference 10.27"), a.stdout)
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: report)) as! [String: Any]
        XCTAssertEqual((json["verdict"] as! [String: Any])["passed"] as? Bool, true)
        let b = try runTool("dsconvert", ["validate", "--reference", trained, "--candidate", trained, "--max-logit-delta", "0"])
        XCTAssertEqual(b.status, 0)
        XCTAssertEqual(b.stdout, a.stdout)
    }

    func testValidateFailsOnDriftNamingTheWorstMetric() throws {
        // A candidate with one norm gain scaled: resharded copy with an edited tensor.
        let candidate = try copyFixture("trained", to: dir)
        let shardName = try Checkpoint(directory: candidate).shardName(of: "model.layers.0.self_attn.kv_a_layernorm.weight")!
        let shard = try SafeTensorsFile(path: candidate.appendingPathComponent(shardName).path)
        let info = shard.info("model.layers.0.self_attn.kv_a_layernorm.weight")!
        let offset = shard.header.dataStart + info.dataOffsets.lowerBound
        var bytes = try Data(contentsOf: candidate.appendingPathComponent(shardName))
        for i in stride(from: 0, to: info.byteCount, by: 2) { bytes[offset + i + 1] = bytes[offset + i + 1] &+ 1 }  // exponent +1: gain x2
        try bytes.write(to: candidate.appendingPathComponent(shardName))
        let r = try runTool("dsconvert-validate", ["--reference", fixtures.appendingPathComponent("trained").path, "--candidate", candidate.path])
        XCTAssertEqual(r.status, 1, r.stdout)
        // stderr also carries progress lines (plain lines when not a terminal); exactly one is the error.
        let errors = r.stderrLines.filter { $0.contains("error:") }
        XCTAssertEqual(errors.count, 1, r.stderr)
        XCTAssertTrue(errors[0].hasPrefix("dsconvert validate: error: drift over threshold: KL mean "), r.stderr)
        XCTAssertTrue(r.stdout.contains("FAIL: "), r.stdout)
    }

    /// A routed expert no token of the sample chose (layer 1's expert 13 in the trained fixture's
    /// tokens.json), its down_proj scaled by 4 in the file: the forward passes cannot see it, the
    /// probe names it (relative error exactly 3: every output is four times the reference's).
    func testValidateNamesABrokenExpertNoTokenChose() throws {
        let name = "model.layers.1.mlp.experts.13.down_proj.weight"
        let candidate = try copyFixture("trained", to: dir)
        let shardName = try Checkpoint(directory: candidate).shardName(of: name)!
        let shard = try SafeTensorsFile(path: candidate.appendingPathComponent(shardName).path)
        let info = shard.info(name)!
        XCTAssertEqual(info.dtype, .bf16)
        let offset = shard.header.dataStart + info.dataOffsets.lowerBound
        var bytes = try Data(contentsOf: candidate.appendingPathComponent(shardName))
        // The high byte holds the sign and the exponent's top 7 bits: +1 adds 2 to the exponent (x4).
        for i in stride(from: 0, to: info.byteCount, by: 2) where bytes[offset + i + 1] & 0x7F != 0 { bytes[offset + i + 1] &+= 1 }
        try bytes.write(to: candidate.appendingPathComponent(shardName))
        let r = try runTool("dsconvert", ["validate", "--reference", fixtures.appendingPathComponent("trained").path, "--candidate", candidate.path])
        XCTAssertEqual(r.status, 1, r.stdout)
        XCTAssertTrue(r.stdout.contains("logits       max |Δ| 0.000e+00"), r.stdout)
        XCTAssertTrue(r.stdout.contains("rel. error max 3.000e+00 (layer 1 expert 13)"), r.stdout)
        let errors = r.stderrLines.filter { $0.contains("error:") }
        XCTAssertEqual(errors, ["dsconvert validate: error: drift over threshold: unchosen expert's relative error (layer 1 expert 13) 3 > 0.25"], r.stderr)
        let unlimited = try runTool("dsconvert", ["validate", "--reference", fixtures.appendingPathComponent("trained").path, "--candidate", candidate.path,
                                                  "--max-expert-error", "none"])
        XCTAssertEqual(unlimited.status, 0, unlimited.stderr)
    }

    /// `--json -` is standard output, as Unix tools read "-": stdout carries the report's JSON alone
    /// (what `--json FILE` writes), the table goes to stderr, and no file "-" appears.
    func testValidateJSONToStandardOutput() throws {
        let trained = fixtures.appendingPathComponent("trained").path
        let report = dir.appendingPathComponent("report.json")
        let file = try runTool("dsconvert", ["validate", "--reference", trained, "--candidate", trained, "--json", report.path, "--max-logit-delta", "0"])
        XCTAssertEqual(file.status, 0, file.stderr)
        let piped = try runTool("dsconvert", ["validate", "--reference", trained, "--candidate", trained, "--json", "-", "--max-logit-delta", "0"],
                                directory: dir)
        XCTAssertEqual(piped.status, 0, piped.stderr)
        // The same report but for its timing, which is measured anew.
        func untimed(_ data: Data) throws -> NSDictionary {
            var object = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
            XCTAssertNotNil(object.removeValue(forKey: "timing"))
            return object as NSDictionary
        }
        XCTAssertEqual(try untimed(Data(piped.stdout.utf8)), try untimed(Data(contentsOf: report)))
        XCTAssertTrue(piped.stderr.contains("PASS: within thresholds"), piped.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("-").path))
    }

    /// "-" where only a path can go is a usage error, not a file or directory named "-".
    func testDashWhereOnlyAPathGoes() throws {
        let lite = fixtures.appendingPathComponent("lite").path
        for arguments in [["quantize", "--fp8", "--input", lite, "--output", "-"],
                          ["forward", "--model", lite, "--tokens", "-", "--output", "o.safetensors"],
                          ["validate", "--reference", "-", "--candidate", lite]] {
            let r = try runTool("dsconvert", arguments, directory: dir)
            XCTAssertEqual(r.status, 64, r.stderr)
            XCTAssertTrue(r.stderr.contains("takes a path, not '-'"), r.stderr)
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), [], "\(arguments)")
        }
    }

    func testValidateUsageErrors() throws {
        XCTAssertEqual(try runTool("dsconvert-validate", ["--reference", "x"]).status, 64)
        XCTAssertEqual(try runTool("dsconvert-validate", ["--reference", "x", "--candidate", "y", "--min-top1", "lots"]).status, 64)
        let help = try runTool("dsconvert-validate", ["--help"])
        XCTAssertEqual(help.status, 0)
        XCTAssertTrue(help.stdout.contains("USAGE: dsconvert-validate [options]"), help.stdout)
    }
}
