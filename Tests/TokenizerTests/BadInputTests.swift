import Foundation
import XCTest
@testable import Tokenizer

final class BadInputTests: XCTestCase {
    func path(_ name: String) -> String { tokenizerFixtures.appendingPathComponent(name).path }

    func testUnsupportedFilesAreRefusedNamingWhat() {
        let cases: [(String, TokenizerError)] = [
            ("bad-model.json", .unsupportedModel(file: path("bad-model.json"), type: "WordPiece")),
            ("bad-pre-tokenizer.json", .unsupportedPreTokenizer(file: path("bad-pre-tokenizer.json"), type: "Whitespace")),
            ("bad-regex.json", .unsupportedRegex(file: path("bad-regex.json"), pattern: "(?<=a)b", construct: "group '(?<'")),
            ("bad-merge.json", .mergeOutOfVocabulary(file: path("bad-merge.json"), merge: "Ġ zz")),
            // 336 entries, the last at 336: the first new added token gets 336, which "Ġ7890" has.
            ("bad-added-id.json", .addedTokenIDTaken(file: path("bad-added-id.json"), content: "<s>", id: 336, other: "Ġ7890")),
        ]
        for (name, expected) in cases {
            XCTAssertThrowsError(try Tokenizer.load(path: path(name)), name) { error in
                XCTAssertEqual(error as? TokenizerError, expected)
                XCTAssertTrue((error as? TokenizerError)?.errorDescription?.contains(path(name)) ?? false)
            }
        }
    }

    /// Found by an audit: an added token's id of 2^31 or more trapped when the text held the token.
    /// The declared id is now only compared with the library's, and one past 32 bits is refused
    /// when the file loads, as the library refuses it. A Split pattern that backtracks without end is refused
    /// naming the text and the pattern.
    func testIdsBeyond32BitsAndRunawayPatternsAreRefused() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tokenizer-bad-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        var json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path("v3-style.json")))) as! [String: Any]
        json["added_tokens"] = [["id": 1 << 32, "content": "<x>", "special": true, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false]]
        let big = dir.appendingPathComponent("big.json")
        try JSONSerialization.data(withJSONObject: json).write(to: big)
        XCTAssertThrowsError(try Tokenizer.load(path: big.path)) { error in
            XCTAssertEqual(error as? TokenizerError, .missingField(file: big.path, field: "added_tokens[\"<x>\"].id (a 32-bit id, as the library reads it)"))
        }
        // Found by an audit: a vocabulary id of 2^31 - 1 sized the id-to-token table at 34 GB, and
        // the allocation aborted. Ids are kept below 2^24.
        var vocabJSON = json
        var model = vocabJSON["model"] as! [String: Any], vocab = model["vocab"] as! [String: Any]
        vocab["zzbig"] = Int(Int32.max)
        model["vocab"] = vocab
        vocabJSON["model"] = model
        try JSONSerialization.data(withJSONObject: vocabJSON).write(to: big)
        XCTAssertThrowsError(try Tokenizer.load(path: big.path)) { error in
            XCTAssertEqual(error as? TokenizerError, .missingField(file: big.path, field: "model.vocab[zzbig] (an id below 2^24: 2147483647 is not)"))
        }
        // The library requires every flag of an entry; a missing one is refused as there.
        json["added_tokens"] = [["id": 7, "content": "<x>", "special": true, "lstrip": false, "rstrip": false, "normalized": false]]
        try JSONSerialization.data(withJSONObject: json).write(to: big)
        XCTAssertThrowsError(try Tokenizer.load(path: big.path)) { error in
            XCTAssertEqual(error as? TokenizerError, .missingField(file: big.path, field: "added_tokens[\"<x>\"].single_word"))
        }
        json["added_tokens"] = []
        json["pre_tokenizer"] = ["type": "Split", "pattern": ["Regex": "(a|aa)+b"], "behavior": "Isolated", "invert": false]
        let runaway = dir.appendingPathComponent("runaway.json")
        try JSONSerialization.data(withJSONObject: json).write(to: runaway)
        let tokenizer = try Tokenizer.load(path: runaway.path)
        XCTAssertThrowsError(try tokenizer.encode(utf8: Array(String(repeating: "a", count: 40).utf8), name: "t.txt")) { error in
            XCTAssertEqual(error as? TokenizerError, .regexBacktrackLimit(file: "t.txt", tokenizer: runaway.path, pattern: "(a|aa)+b", position: 0,
                                                                          limit: ScalarRegex.backtrackLimit))
        }
        // Work over the whole text is bounded too, and named as such: one budget for the text, however
        // an earlier step cuts it (a review found pieces of 22 characters each getting a fresh one).
        let split = ["type": "Split", "pattern": ["Regex": "(?:a|a){1,20}b"], "behavior": "Isolated", "invert": false] as [String: Any]
        let cut = ["type": "Split", "pattern": ["String": "x"], "behavior": "Removed", "invert": false] as [String: Any]
        // The third: pieces the ByteLevel step wrote out, which the matcher reads from the runner's own buffer.
        let bytes: [String: Any] = ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false]
        let cutText = String(repeating: String(repeating: "a", count: 21) + "x", count: 100)
        for (preTokenizer, text) in [(split, String(repeating: "a", count: 2_000)),
                                     (["type": "Sequence", "pretokenizers": [cut, split]] as [String: Any], cutText),
                                     (["type": "Sequence", "pretokenizers": [bytes, cut, split]] as [String: Any], cutText)] {
            json["pre_tokenizer"] = preTokenizer
            try JSONSerialization.data(withJSONObject: json).write(to: runaway)
            let length = text.unicodeScalars.count
            XCTAssertThrowsError(try Tokenizer.load(path: runaway.path).encode(utf8: Array(text.utf8), name: "t.txt", threads: 1)) { error in
                XCTAssertEqual(error as? TokenizerError, .regexWorkLimit(file: "t.txt", tokenizer: runaway.path, pattern: "(?:a|a){1,20}b", length: length,
                                                                         limit: ScalarRegex.backtrackLimit + ScalarRegex.perScalarBudget * length))
                XCTAssertTrue((error as? TokenizerError)?.errorDescription?.contains("over this text of \(length) characters") == true)
            }
        }
        // Found by a review: with a budget per thread, three pieces of ~6M backtracks each (18M against
        // the text's ~10M) were refused on one thread and encoded on three. Whether a text is refused,
        // and the message, must not depend on the thread count.
        json["pre_tokenizer"] = ["type": "Sequence", "pretokenizers": [cut, split]] as [String: Any]
        try JSONSerialization.data(withJSONObject: json).write(to: runaway)
        let three = String(repeating: String(repeating: "a", count: 21) + "x", count: 3)
        let limit = ScalarRegex.backtrackLimit + ScalarRegex.perScalarBudget * three.unicodeScalars.count
        for threads in 1...4 {
            XCTAssertThrowsError(try Tokenizer.load(path: runaway.path).encode(utf8: Array(three.utf8), name: "t.txt", threads: threads), "\(threads) threads") { error in
                XCTAssertEqual(error as? TokenizerError, .regexWorkLimit(file: "t.txt", tokenizer: runaway.path, pattern: "(?:a|a){1,20}b",
                                                                         length: three.unicodeScalars.count, limit: limit), "\(threads) threads")
            }
        }
        // One piece of them fits the budget, on any thread count.
        let one = String(repeating: "a", count: 21) + "x"
        for threads in 1...2 { XCTAssertNoThrow(try Tokenizer.load(path: runaway.path).encode(utf8: Array(one.utf8), name: "t.txt", threads: threads)) }
        // Found by an audit: each ByteLevel step re-encodes the last one's output, doubling spaces and
        // non-ASCII text: 30 of them asked for 4.4 GB on 100 spaces. A second one is refused.
        let byteLevel: [String: Any] = ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false]
        json["pre_tokenizer"] = ["type": "Sequence", "pretokenizers": [byteLevel, byteLevel]]
        try JSONSerialization.data(withJSONObject: json).write(to: runaway)
        XCTAssertThrowsError(try Tokenizer.load(path: runaway.path)) { error in
            XCTAssertEqual(error as? TokenizerError, .unsupportedOption(file: runaway.path, option: "more than one ByteLevel pre-tokenizer (each re-encodes the last one's output)"))
        }
    }

    /// Subword affixes change every id, so a file that sets one is refused; an empty one (the distilled
    /// R1s' Qwen files write "") is no affix, and the file gives the same ids as without it.
    func testEmptySubwordAffixesAreNoAffixes() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tokenizer-affix-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let original = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path("v3-style.json")))) as! [String: Any]
        let text = Array("Hello world, 12345 中文 it's".utf8)
        let want = try Tokenizer.load(path: path("v3-style.json")).encode(utf8: text, name: "t.txt")
        for (option, value, refused) in [("continuing_subword_prefix", "", false), ("end_of_word_suffix", "", false),
                                         ("continuing_subword_prefix", "##", true), ("end_of_word_suffix", "</w>", true)] {
            var json = original
            var model = json["model"] as! [String: Any]
            model[option] = value
            json["model"] = model
            let file = dir.appendingPathComponent("\(option)-\(value.count).json")
            try JSONSerialization.data(withJSONObject: json).write(to: file)
            if refused {
                XCTAssertThrowsError(try Tokenizer.load(path: file.path)) { error in
                    XCTAssertEqual(error as? TokenizerError, .unsupportedOption(file: file.path, option: "model.\(option)"))
                }
            } else {
                XCTAssertEqual(try Tokenizer.load(path: file.path).encode(utf8: text, name: "t.txt"), want, option)
            }
        }
    }

    /// A merge line is cut at its space by scalars, as the library cuts it: "a \u{301}" (a space before
    /// a combining mark, one Character to Swift) is the pair a + U+0301, and "a\u{301}ba\u{301}" is
    /// [2, 3, 2] as tokenizers 0.23 gives it (the cross-check asks the library live).
    func testMergeLineCutBeforeACombiningMark() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tokenizer-merge-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let model: [String: Any] = ["type": "BPE", "vocab": ["a": 0, "\u{301}": 1, "a\u{301}": 2, "b": 3], "merges": ["a \u{301}"]]
        let file = dir.appendingPathComponent("tokenizer.json")
        try JSONSerialization.data(withJSONObject: ["version": "1.0", "model": model]).write(to: file)
        XCTAssertEqual(try Tokenizer.load(path: file.path).encode(utf8: Array("a\u{301}ba\u{301}".utf8), name: "t.txt"), [2, 3, 2])
        // Tokens are the same token when their bytes are: "e" + U+0301 is not "é" (U+00E9), so a merge
        // making it is outside the vocabulary, and the library refuses the file too (the cross-check).
        let equivalent: [String: Any] = ["type": "BPE", "vocab": ["e": 0, "\u{301}": 1, "\u{E9}": 2], "merges": ["e \u{301}"]]
        try JSONSerialization.data(withJSONObject: ["version": "1.0", "model": equivalent]).write(to: file)
        XCTAssertThrowsError(try Tokenizer.load(path: file.path)) { error in
            XCTAssertEqual(error as? TokenizerError, .mergeOutOfVocabulary(file: file.path, merge: "e \u{301}"))
        }
    }

    func testInvalidUTF8NamesTheByteOffset() throws {
        let tokenizer = try Tokenizer.load(path: path("v3-style.json"))
        for (bytes, offset) in [([0x61, 0x62, 0xFF], 2), ([0x61, 0xC0, 0x80], 1), ([0xED, 0xA0, 0x80], 0), ([0x61, 0xE4, 0xB8], 1),
                                ([0xF4, 0x90, 0x80, 0x80], 0)] as [([UInt8], Int)] {
            XCTAssertThrowsError(try tokenizer.encode(utf8: bytes, name: "t.txt")) { error in
                XCTAssertEqual(error as? TokenizerError, .invalidUTF8(file: "t.txt", offset: offset))
            }
        }
    }

    func testDecodeRefusesAnIDOutsideTheVocabulary() throws {
        let tokenizer = try Tokenizer.load(path: path("added-tokens.json"))
        XCTAssertThrowsError(try tokenizer.decode([1, 99_999])) { error in
            guard case let .idOutsideVocabulary(_, id, _)? = error as? TokenizerError else { return XCTFail("\(error)") }
            XCTAssertEqual(id, 99_999)
        }
        XCTAssertThrowsError(try tokenizer.decode([-1]))
        // The file the ids came from is the one named (found by an audit: the tokenizer's was).
        XCTAssertThrowsError(try tokenizer.decode([99_999], source: "/t/ids.json")) { error in
            XCTAssertEqual((error as? TokenizerError)?.errorDescription?.hasPrefix("/t/ids.json: token id 99999 is outside the vocabulary"), true, "\(error)")
        }
    }

    func testRows() throws {
        let ids = Array(10..<20)
        XCTAssertEqual(try TokenRows.cut(ids, sequenceLength: nil, bos: 7, name: "t").rows, [[7] + ids])
        let cut = try TokenRows.cut(ids, sequenceLength: 4, bos: 7, name: "t")
        XCTAssertEqual(cut.rows, [[7, 10, 11, 12], [7, 13, 14, 15], [7, 16, 17, 18]])
        XCTAssertEqual(cut.droppedTail, 1)
        XCTAssertEqual(try TokenRows.cut(ids, sequenceLength: 5, bos: nil, name: "t").rows, [Array(10..<15), Array(15..<20)])
        XCTAssertEqual(String(decoding: TokenRows.json([[1, 20], [300, 0]]), as: UTF8.self), "{\"tokens\": [\n  [1, 20],\n  [300, 0]\n]}\n")
        XCTAssertThrowsError(try TokenRows.cut([], sequenceLength: nil, bos: 7, name: "e.txt")) { error in
            XCTAssertEqual(error as? TokenizerError, .emptyText(file: "e.txt"))
        }
        XCTAssertThrowsError(try TokenRows.cut(ids, sequenceLength: 11, bos: nil, name: "t.txt")) { error in
            XCTAssertEqual(error as? TokenizerError, .textShorterThanRow(file: "t.txt", tokens: 10, sequenceLength: 11))
        }
    }
}
