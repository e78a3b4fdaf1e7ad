import DeepSeekModel
import Foundation
import XCTest
@testable import ReferenceModel
@testable import Validation

/// Tokens checked against the model before the forward pass allocates anything: every error names
/// the tokens file.
final class TokenChecksTests: XCTestCase {
    private let lite = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/lite")
    private func config(_ edit: (inout DeepSeekConfig) -> Void = { _ in }) throws -> DeepSeekConfig {
        var c = try DeepSeekConfig.load(directory: lite)
        edit(&c)
        return c
    }

    func testLongSequenceIsRefusedBeforeItsAttentionIsAllocated() throws {
        let tokens = [[Int](repeating: 1, count: 40_000)]
        XCTAssertThrowsError(try TokenFile.check(tokens, path: "/t/long.json", config: try config())) { error in
            guard case let .tokensTooLarge(path, what, bytes, budget)? = error as? ReferenceModelError else { return XCTFail("\(error)") }
            XCTAssertEqual(path, "/t/long.json")
            XCTAssertTrue(what.hasPrefix("attention scores"), what)
            XCTAssertEqual(bytes, "25600000000")
            XCTAssertEqual(budget, 8 << 30)
        }
        // The forward pass runs the same check first (no weights are read: the provider would fail).
        let forward = ReferenceForward(config: try config(), weights: NoWeights())
        XCTAssertThrowsError(try forward.run(tokens: tokens, source: "/t/long.json")) { XCTAssertTrue(($0 as? ReferenceModelError)?.errorDescription?.hasPrefix("/t/long.json: ") == true, "\($0)") }
    }

    func testLogitsBudgetAndOverflow() throws {
        let wide = try config { $0.vocabSize = 1 << 24 }
        let tokens = [[Int]](repeating: [Int](repeating: 1, count: 200), count: 1000)
        XCTAssertThrowsError(try TokenFile.check(tokens, path: "t.json", config: wide)) { error in
            guard case let .tokensTooLarge(_, what, _, _)? = error as? ReferenceModelError else { return XCTFail("\(error)") }
            XCTAssertTrue(what.hasPrefix("logits"), what)
        }
        let huge = try config { $0.numAttentionHeads = 1 << 24; $0.maxPositionEmbeddings = nil }
        XCTAssertThrowsError(try TokenFile.check([[Int](repeating: 1, count: 1 << 20)], path: "t.json", config: huge)) { error in
            guard case let .tokensTooLarge(_, _, bytes, _)? = error as? ReferenceModelError else { return XCTFail("\(error)") }
            XCTAssertEqual(bytes, "more than 2^63")
        }
    }

    /// A tiny vocabulary and few heads pass the scores' and logits' budgets, but the residual streams
    /// of 2^18 tokens at a width of 2^20 would take 2 TiB: refused, naming the file, before any
    /// allocation (the forward pass once aborted allocating it).
    func testActivationsBudget() throws {
        let wide = try config { $0.hiddenSize = 1 << 20; $0.vocabSize = 1; $0.numAttentionHeads = 1; $0.maxPositionEmbeddings = nil }
        let tokens = [[Int]](repeating: [0], count: 1 << 18)
        XCTAssertEqual(TokenFile.widestActivation(wide), 1 << 21, "the MTP layer's two residual streams side by side")
        XCTAssertThrowsError(try TokenFile.check(tokens, path: "t.json", config: wide)) { error in
            XCTAssertEqual((error as? ReferenceModelError)?.errorDescription,
                           "t.json: activations (262144 x 1 x 2097152 f32, a layer's widest per-token array) would take 2199023255552 bytes, over the forward pass's budget of 8589934592 bytes")
        }
        // The fixture's widest array is the dense MLP's gate and up (2 x 160); 2^18 tokens of it: 335 MB.
        XCTAssertEqual(TokenFile.widestActivation(try config()), 320)
        // Absorbed queries: per head the latent and the rotary part.
        XCTAssertEqual(TokenFile.widestActivation(try config { $0.kvLoraRank = 1 << 20 }), 4 * ((1 << 20) + 8))
        XCTAssertNoThrow(try TokenFile.check([[Int]](repeating: [1], count: 1 << 18), path: "t.json", config: try config { $0.maxPositionEmbeddings = nil }))
    }

    func testSequenceLongerThanThePositionsIsRefused() throws {
        let short = try config { $0.maxPositionEmbeddings = 16 }
        XCTAssertThrowsError(try TokenFile.check([[Int](repeating: 3, count: 17)], path: "t.json", config: short)) {
            XCTAssertEqual($0 as? ReferenceModelError, .sequenceTooLong(path: "t.json", length: 17, maxPositions: 16))
        }
        XCTAssertNoThrow(try TokenFile.check([[Int](repeating: 3, count: 16)], path: "t.json", config: short))
    }

    func testOutOfVocabularyNamesTheFile() throws {
        XCTAssertThrowsError(try TokenFile.check([[1, 320]], path: "/t/tokens.json", config: try config())) {
            XCTAssertEqual($0 as? ReferenceModelError, .tokenOutOfVocabulary(path: "/t/tokens.json", id: 320, vocabSize: 320))
            XCTAssertEqual(($0 as? ReferenceModelError)?.errorDescription, "/t/tokens.json: token id 320 is outside the vocabulary 0..<320")
        }
    }

    func testDuplicateKeysNameTheFile() {
        XCTAssertThrowsError(try TokenFile.parse(Data(#"{"tokens": [[1]], "tokens": [[2]]}"#.utf8), path: "/t/tokens.json")) {
            XCTAssertEqual($0 as? ReferenceModelError, .duplicateTokensKey(path: "/t/tokens.json", key: "tokens"))
        }
        XCTAssertThrowsError(try TokenFile.parse(Data(#"{"tokens": [[1]], "meta": {"a": 1, "a": 2}}"#.utf8), path: "/t/tokens.json")) {
            XCTAssertEqual($0 as? ReferenceModelError, .duplicateTokensKey(path: "/t/tokens.json", key: "a"))
        }
        XCTAssertEqual(try TokenFile.parse(Data(#"{"tokens": [[1, 2], [3, 4]]}"#.utf8), path: "t"), [[1, 2], [3, 4]])
    }
}

/// A provider that has no weights: a forward pass that reaches it has skipped its checks.
private final class NoWeights: WeightProvider {
    func floats(_ name: String, shape: [Int]) throws -> [Float] { XCTFail("read \(name) before checking the tokens"); return [] }
    func release(_ name: String) {}
    var label: String { "no weights" }
}
