import Foundation
import XCTest

final class TokenizeTests: XCTestCase {
    var dir: URL!
    var model: URL!
    override func setUpWithError() throws {
        dir = try makeTemporaryDirectory()
        // A model directory: the added-tokens fixture as its tokenizer.json, with a config naming <s> as BOS.
        model = dir.appendingPathComponent("model")
        try FileManager.default.createDirectory(at: model, withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: fixtures.appendingPathComponent("tokenizers/added-tokens.json"), to: model.appendingPathComponent("tokenizer.json"))
        try Data(#"{"add_bos_token": true, "bos_token": {"content": "<s>"}, "eos_token": "<mask>"}"#.utf8).write(to: model.appendingPathComponent("tokenizer_config.json"))
    }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    func write(_ text: String, _ name: String = "text.txt") throws -> String {
        let url = dir.appendingPathComponent(name)
        try Data(text.utf8).write(to: url)
        return url.path
    }

    func rows(_ stdout: String) throws -> [[Int]] {
        let json = try JSONSerialization.jsonObject(with: Data(stdout.utf8)) as! [String: Any]
        return json["tokens"] as! [[Int]]
    }

    func testEncodeToStdoutRowsBOSAndDecode() throws {
        let text = String(repeating: "the theory, then thereafter! 123 中文\n", count: 20)
        let path = try write(text)
        let whole = try runTool("dsconvert", ["tokenize", "--tokenizer", model.path, "--text", path])
        XCTAssertEqual(whole.status, 0, whole.stderr)
        let ids = try rows(whole.stdout)[0]
        XCTAssertGreaterThan(ids.count, 100)
        // "-" is standard output, as with no --output.
        let dash = try runTool("dsconvert", ["tokenize", "--tokenizer", model.path, "--text", path, "--output", "-"])
        XCTAssertEqual(dash.status, 0, dash.stderr)
        XCTAssertEqual(dash.stdout, whole.stdout)
        // --text - reads the text from standard input.
        let piped = try runTool("dsconvert", ["tokenize", "--tokenizer", model.path, "--text", "-"], standardInput: Data(text.utf8))
        XCTAssertEqual(piped.status, 0, piped.stderr)
        XCTAssertEqual(piped.stdout, whole.stdout)

        let cut = try runTool("dsconvert", ["tokenize", "--tokenizer", model.path, "--text", path, "--seq-len", "32", "--add-bos"])
        XCTAssertEqual(cut.status, 0, cut.stderr)
        let bos = 256 + 80 // the fixture's <s>: first id after the byte alphabet and its 80 merges
        let expected = (0..<(ids.count / 31)).map { [bos] + ids[($0 * 31)..<(($0 + 1) * 31)] }
        XCTAssertEqual(try rows(cut.stdout), expected)
        XCTAssertTrue(cut.stderr.contains("dropped the last \(ids.count % 31) of \(ids.count) tokens"), cut.stderr)

        let tokens = dir.appendingPathComponent("tokens.json")
        XCTAssertEqual(try runTool("dsconvert", ["tokenize", "--tokenizer", model.path, "--text", path, "--output", tokens.path]).status, 0)
        let back = try runTool("dsconvert", ["tokenize", "--tokenizer", model.appendingPathComponent("tokenizer.json").path, "--decode", "--tokens", tokens.path])
        XCTAssertEqual(back.status, 0, back.stderr)
        XCTAssertEqual(back.stdout, text)
    }

    func testOutputRulesAndBadInput() throws {
        let path = try write("hello world")
        let inside = try runTool("dsconvert", ["tokenize", "--tokenizer", model.path, "--text", path, "--output", model.appendingPathComponent("t.json").path])
        XCTAssertEqual(inside.status, 1)
        XCTAssertTrue(inside.stderr.contains("must not be the input directory or inside it"), inside.stderr)
        // Given as a file, the tokenizer's own files are inputs, the rest of its directory is not.
        let file = model.appendingPathComponent("tokenizer.json").path, config = model.appendingPathComponent("tokenizer_config.json")
        let before = try Data(contentsOf: config)
        let over = try runTool("dsconvert", ["tokenize", "--tokenizer", file, "--text", path, "--output", config.path, "--force"])
        XCTAssertEqual(over.status, 1, over.stderr)
        XCTAssertEqual(try Data(contentsOf: config), before)
        let beside = model.appendingPathComponent("ids.json")
        XCTAssertEqual(try runTool("dsconvert", ["tokenize", "--tokenizer", file, "--text", path, "--output", beside.path]).status, 0)
        try FileManager.default.removeItem(at: beside)

        let out = dir.appendingPathComponent("out.json").path
        XCTAssertEqual(try runTool("dsconvert", ["tokenize", "--tokenizer", model.path, "--text", path, "--output", out]).status, 0)
        let again = try runTool("dsconvert", ["tokenize", "--tokenizer", model.path, "--text", path, "--output", out])
        XCTAssertEqual(again.status, 1, again.stderr)
        XCTAssertEqual(try runTool("dsconvert", ["tokenize", "--tokenizer", model.path, "--text", path, "--output", out, "--force"]).status, 0)
        XCTAssertEqual(try runTool("dsconvert", ["tokenize", "--tokenizer", model.path, "--text", path, "--output", ""]).status, 64)

        let short = try runTool("dsconvert", ["tokenize", "--tokenizer", model.path, "--text", path, "--seq-len", "1000"])
        XCTAssertEqual(short.status, 1)
        XCTAssertTrue(short.stderr.contains("\(path): the text gives"), short.stderr)

        let bad = dir.appendingPathComponent("bad.txt")
        try Data([0x68, 0x69, 0xC3, 0x28]).write(to: bad)
        let invalid = try runTool("dsconvert", ["tokenize", "--tokenizer", model.path, "--text", bad.path])
        XCTAssertEqual(invalid.status, 1)
        XCTAssertTrue(invalid.stderr.contains("\(bad.path): not valid UTF-8 at byte offset 2"), invalid.stderr)

        let ids = try write(#"{"tokens": [[5, 123456]]}"#, "ids.json")
        let unknown = try runTool("dsconvert", ["tokenize", "--tokenizer", model.path, "--decode", "--tokens", ids])
        XCTAssertEqual(unknown.status, 1)
        XCTAssertTrue(unknown.stderr.contains("token id 123456 is outside the vocabulary"), unknown.stderr)

        let regex = try runTool("dsconvert", ["tokenize", "--tokenizer", fixtures.appendingPathComponent("tokenizers/bad-regex.json").path, "--text", path])
        XCTAssertEqual(regex.status, 1)
        XCTAssertTrue(regex.stderr.contains("unsupported regex construct group '(?<'"), regex.stderr)
    }
}
