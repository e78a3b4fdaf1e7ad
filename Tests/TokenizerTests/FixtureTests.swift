import Foundation
import XCTest
@testable import Tokenizer

let tokenizerFixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().appendingPathComponent("Fixtures/tokenizers")

/// `Fixtures/tokenizers/expected.json`: for every fixture tokenizer and text, the ids and decoded
/// text the `tokenizers` library gave (Fixtures/tokenizers/generate.py; crosscheck.py re-checks it).
func expectedCases() throws -> [(fixture: String, text: String, ids: [Int], decoded: String)] {
    let data = try Data(contentsOf: tokenizerFixtures.appendingPathComponent("expected.json"))
    let root = try JSONSerialization.jsonObject(with: data) as! [String: [[String: Any]]]
    return root.keys.sorted().flatMap { name in
        root[name]!.map { (name, $0["text"] as! String, $0["ids"] as! [Int], $0["decoded"] as! String) }
    }
}

final class FixtureTests: XCTestCase {
    /// Every pre-tokenizer (Split in each behaviour, inverted, literal; Digits both ways; ByteLevel
    /// with prefix space and regex), both normalizers, ignore_merges and every added-token rule.
    func testEveryFixtureMatchesTokenizers() throws {
        let cases = try expectedCases()
        XCTAssertGreaterThan(cases.count, 200)
        var loaded: [String: Tokenizer] = [:]
        for c in cases {
            let tokenizer = try loaded[c.fixture] ?? Tokenizer.load(path: tokenizerFixtures.appendingPathComponent(c.fixture + ".json").path)
            loaded[c.fixture] = tokenizer
            XCTAssertEqual(try tokenizer.encode(c.text, threads: 1), c.ids, "\(c.fixture): \(c.text.debugDescription)")
            XCTAssertEqual(try tokenizer.decode(c.ids), c.decoded, "\(c.fixture): \(c.text.debugDescription)")
        }
        XCTAssertEqual(loaded.count, 18)
    }

    func testAddedTokenRules() throws {
        let tokenizer = try Tokenizer.load(path: tokenizerFixtures.appendingPathComponent("added-tokens.json").path)
        let mask = try XCTUnwrap(tokenizer.id(of: "<mask>")), sep = try XCTUnwrap(tokenizer.id(of: "[SEP]"))
        let word = try XCTUnwrap(tokenizer.id(of: "word")), s = try XCTUnwrap(tokenizer.id(of: "<s>")), ss = try XCTUnwrap(tokenizer.id(of: "<s><s>"))
        // lstrip takes the spaces before <mask> into the token; rstrip the spaces after [SEP].
        XCTAssertEqual(try tokenizer.encode("  <mask>", threads: 1), [mask])
        XCTAssertEqual(try tokenizer.encode("[SEP]   ", threads: 1), [sep])
        // single_word: only where no word character touches it.
        XCTAssertEqual(try tokenizer.encode("word", threads: 1), [word])
        XCTAssertFalse(try tokenizer.encode("sword", threads: 1).contains(word))
        // Leftmost-longest: <s><s> wins over <s> at the same position.
        XCTAssertEqual(try tokenizer.encode("<s><s><s>", threads: 1), [ss, s])
    }
}
