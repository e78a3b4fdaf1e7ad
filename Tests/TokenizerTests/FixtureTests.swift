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
        XCTAssertEqual(loaded.count, 19)
    }

    /// The library's added-token ids, not the declared ones (added-ids-library.json): <mask> keeps
    /// its vocabulary id over the declared 7, the new tokens are numbered on from the vocabulary's
    /// size in file order, the empty token is dropped, the last <mask> entry's flags win (no lstrip),
    /// and each differing declaration is one note naming the file.
    func testAddedTokenIDsAreTheLibrarys() throws {
        let file = tokenizerFixtures.appendingPathComponent("added-ids-library.json").path
        let tokenizer = try Tokenizer.load(path: file)
        XCTAssertEqual(tokenizer.definition.addedTokens.map(\.content), ["<mask>", "<s>", "[SEP]", "word"])
        XCTAssertEqual(tokenizer.definition.addedTokens.map(\.id), [336, 337, 338, 339])
        XCTAssertEqual(tokenizer.definition.addedTokens.map(\.lstrip), [false, false, false, false])
        XCTAssertEqual(tokenizer.notes, [
            "\(file): added token \"<mask>\" declares id 7; the tokenizers library gives it 336, which is used",
            "\(file): added token \"<s>\" declares id 341; the tokenizers library gives it 337, which is used",
            "\(file): added token \"[SEP]\" declares id 337; the tokenizers library gives it 338, which is used",
        ], "the second <mask> entry declares the same: said once")
        XCTAssertEqual(try tokenizer.decode([337, 336]), "<s><mask>")
    }

    /// The rule itself (each case's ids read from tokenizers 0.23.3 on the same vocabulary and list):
    /// vocabulary ids first, else new ids counted on from the vocabulary's entry count.
    func testAddedTokenIDRule() throws {
        func assign(_ contents: [String], _ vocab: [String: Int]) throws -> [Int?] {
            let reverse = Dictionary(vocab.map { ($1, $0) }, uniquingKeysWith: min)
            return try AddedTokenIDs.assign(contents: contents, vocabularyID: { vocab[$0] }, vocabularyToken: { reverse[$0] }, vocabularyCount: vocab.count)
        }
        let abc = ["a": 0, "b": 1, "c": 2]
        XCTAssertEqual(try assign(["x", "b", "y", "", "x", "z"], abc), [3, 1, 4, nil, 3, 5])
        XCTAssertEqual(try assign(["a", "x"], abc), [0, 3])
        // A vocabulary id beyond the count does not move the count: g is 2, not 6.
        XCTAssertEqual(try assign(["b", "g"], ["a": 0, "b": 5]), [5, 2])
        // A gap in the vocabulary: the count (2) is the id of "c".
        XCTAssertThrowsError(try assign(["x"], ["a": 0, "c": 2])) { error in
            XCTAssertEqual(error as? AddedTokenIDs.Collision, AddedTokenIDs.Collision(content: "x", id: 2, other: "c"))
        }
        // Two vocabulary tokens of one id, both added (the load trapped before this was refused).
        XCTAssertThrowsError(try assign(["a", "b"], ["a": 0, "b": 0])) { error in
            XCTAssertEqual(error as? AddedTokenIDs.Collision, AddedTokenIDs.Collision(content: "b", id: 0, other: "a"))
        }
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
