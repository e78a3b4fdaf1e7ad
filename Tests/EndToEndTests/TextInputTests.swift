import Foundation
import SafeTensors
import XCTest

/// `forward`/`validate --text FILE [--tokenizer PATH] [--seq-len N] [--max-tokens M]`.
final class TextInputTests: XCTestCase {
    var dir: URL!
    override func setUpWithError() throws { dir = try makeTemporaryDirectory() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    let model = fixtures.appendingPathComponent("v2") // vocabulary 384 holds the fixture tokenizer's 336 ids
    let tokenizer = fixtures.appendingPathComponent("tokenizers/split-isolated.json").path

    /// The tokenizer is an input: a result written over it (with --force) is refused and the file
    /// kept; an output beside a tokenizer file is fine (found by an audit: both commands overwrote it).
    func testResultsNeverReplaceTheTokenizer() throws {
        let text = dir.appendingPathComponent("t.txt"), copy = dir.appendingPathComponent("tok.json")
        try Data("the fox 12".utf8).write(to: text)
        try FileManager.default.copyItem(at: URL(fileURLWithPath: tokenizer), to: copy)
        let before = try Data(contentsOf: copy)
        let forward = try runTool("dsconvert", ["forward", "--model", model.path, "--text", text.path, "--tokenizer", copy.path, "--output", copy.path, "--force"])
        let validate = try runTool("dsconvert", ["validate", "--reference", model.path, "--candidate", model.path, "--text", text.path,
                                                 "--tokenizer", copy.path, "--json", copy.path, "--force"])
        for r in [forward, validate] {
            XCTAssertEqual(r.status, 1, r.stderr)
            XCTAssertTrue(r.stderr.contains("\(copy.path): output must not be the input"), r.stderr)
        }
        XCTAssertEqual(try Data(contentsOf: copy), before)
        let beside = try runTool("dsconvert", ["forward", "--model", model.path, "--text", text.path, "--tokenizer", copy.path,
                                               "--output", dir.appendingPathComponent("out.safetensors").path])
        XCTAssertEqual(beside.status, 0, beside.stderr)
    }

    func testForwardTextEqualsForwardOfItsTokens() throws {
        let text = dir.appendingPathComponent("t.txt")
        try Data("the theory then thereafter, the quick brown fox jumps over the lazy dog 123 456".utf8).write(to: text)
        let tokens = dir.appendingPathComponent("tokens.json")
        let encoded = try runTool("dsconvert", ["tokenize", "--tokenizer", tokenizer, "--text", text.path, "--seq-len", "8", "--output", tokens.path])
        XCTAssertEqual(encoded.status, 0, encoded.stderr)

        let viaText = dir.appendingPathComponent("a.safetensors"), viaTokens = dir.appendingPathComponent("b.safetensors")
        let a = try runTool("dsconvert", ["forward", "--model", model.path, "--text", text.path, "--tokenizer", tokenizer, "--seq-len", "8",
                                          "--output", viaText.path])
        XCTAssertEqual(a.status, 0, a.stderr)
        let b = try runTool("dsconvert", ["forward", "--model", model.path, "--tokens", tokens.path, "--output", viaTokens.path])
        XCTAssertEqual(b.status, 0, b.stderr)
        XCTAssertEqual(try Data(contentsOf: viaText), try Data(contentsOf: viaTokens))

        let capped = dir.appendingPathComponent("c.safetensors")
        let c = try runTool("dsconvert", ["forward", "--model", model.path, "--text", text.path, "--tokenizer", tokenizer, "--seq-len", "5",
                                          "--max-tokens", "12", "--output", capped.path])
        XCTAssertEqual(c.status, 0, c.stderr)
        XCTAssertEqual(try SafeTensorsFile(path: capped.path).info("logits")?.shape, [2, 5, 384])
        XCTAssertTrue(c.stderr.contains("dropped the last 2 of 12 tokens"), c.stderr)
    }

    func testValidateTextAndUsage() throws {
        let text = dir.appendingPathComponent("t.txt")
        try Data(String(repeating: "tokens and tokenizers merge the most frequent pairs. ", count: 4).utf8).write(to: text)
        let r = try runTool("dsconvert", ["validate", "--reference", model.path, "--candidate", model.path, "--text", text.path,
                                          "--tokenizer", tokenizer, "--seq-len", "16", "--max-tokens", "32"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("\(text.path) via \(tokenizer) (2 x 16)"), r.stdout)
        // The text's own perplexity (2 rows x 15 predicted tokens) and the KL's 99th percentile.
        XCTAssertTrue(r.stdout.contains("ratio 1.00000   (30 tokens of \(text.path) via \(tokenizer))"), r.stdout)
        XCTAssertTrue(r.stdout.contains("KL 99% 0.000e+00 nats"), r.stdout)

        let both = try runTool("dsconvert", ["forward", "--model", model.path, "--text", text.path, "--tokens", text.path,
                                             "--output", dir.appendingPathComponent("x.safetensors").path])
        XCTAssertEqual(both.status, 64, both.stderr)
        let alone = try runTool("dsconvert", ["validate", "--reference", model.path, "--candidate", model.path, "--seq-len", "4"])
        XCTAssertEqual(alone.status, 64, alone.stderr)
        let short = try runTool("dsconvert", ["forward", "--model", model.path, "--text", text.path, "--tokenizer", tokenizer,
                                              "--seq-len", "100000", "--output", dir.appendingPathComponent("y.safetensors").path])
        XCTAssertEqual(short.status, 1)
        XCTAssertTrue(short.stderr.contains("fewer than one row of --seq-len 100000"), short.stderr)
        let noTokenizer = try runTool("dsconvert", ["forward", "--model", model.path, "--text", text.path,
                                                    "--output", dir.appendingPathComponent("z.safetensors").path])
        XCTAssertEqual(noTokenizer.status, 1)
        XCTAssertTrue(noTokenizer.stderr.contains("tokenizer.json: cannot read"), noTokenizer.stderr)
        // Why a text cannot be read, in words (found by an audit: a Foundation error's debug form).
        let folder = dir.appendingPathComponent("folder")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        for (path, why) in [(dir.appendingPathComponent("missing.txt").path, "No such file or directory"), (folder.path, "not a regular file")] {
            let r = try runTool("dsconvert", ["forward", "--model", model.path, "--text", path, "--tokenizer", tokenizer,
                                              "--output", dir.appendingPathComponent("w.safetensors").path])
            XCTAssertEqual(r.status, 1)
            XCTAssertTrue(r.stderr.contains("\(path): cannot read: \(why)\n"), r.stderr)
        }
    }

    /// `--calibration-text` is `--calibration` of the text's tokens: the same bytes out.
    func testCalibrationTextEqualsCalibrationOfItsTokens() throws {
        let text = dir.appendingPathComponent("t.txt")
        try Data(String(repeating: "the theory then thereafter, the quick brown fox 123. ", count: 3).utf8).write(to: text)
        let tokens = dir.appendingPathComponent("tokens.json")
        XCTAssertEqual(try runTool("dsconvert", ["tokenize", "--tokenizer", tokenizer, "--text", text.path, "--seq-len", "16", "--output", tokens.path]).status, 0)
        let viaText = dir.appendingPathComponent("a"), viaTokens = dir.appendingPathComponent("b")
        let a = try runTool("dsconvert", ["quantize", "--kv6", "--input", model.path, "--output", viaText.path,
                                          "--calibration-text", text.path, "--tokenizer", tokenizer, "--seq-len", "16"])
        XCTAssertEqual(a.status, 0, a.stderr)
        let b = try runTool("dsconvert", ["quantize", "--kv6", "--input", model.path, "--output", viaTokens.path, "--calibration", tokens.path])
        XCTAssertEqual(b.status, 0, b.stderr)
        // The same weights and index; config.json differs only in the calibration source it names.
        XCTAssertEqual(try treeHashes(viaText).filter { $0.key != "config.json" }, try treeHashes(viaTokens).filter { $0.key != "config.json" })
        let config = try String(contentsOf: viaText.appendingPathComponent("config.json"), encoding: .utf8)
        let other = try String(contentsOf: viaTokens.appendingPathComponent("config.json"), encoding: .utf8)
        XCTAssertEqual(config.replacingOccurrences(of: "\(text.path) via \(tokenizer)", with: tokens.path), other)
        let both = try runTool("dsconvert", ["convert", "--kv6", "--input", model.path, "--output", dir.appendingPathComponent("c").path,
                                             "--calibration", tokens.path, "--calibration-text", text.path])
        XCTAssertEqual(both.status, 64, both.stderr)
    }
}
