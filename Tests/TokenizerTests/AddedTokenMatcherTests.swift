import XCTest
@testable import Tokenizer

/// The added-token scan (an Aho-Corasick automaton) finds what a walk of the trie from every position
/// finds: the leftmost match, the longest there, then on from its end.
final class AddedTokenMatcherTests: XCTestCase {
    private func token(_ id: Int, lstrip: Bool = false) -> AddedToken {
        AddedToken(id: id, content: "t\(id)", special: true, lstrip: lstrip, rstrip: false, singleWord: false, normalized: false)
    }

    /// The definition, spelled out: from each position in turn, the longest content starting there.
    private func reference(_ text: [UInt32], _ patterns: [[UInt32]]) -> [AddedTokenMatcher.Split] {
        var result: [AddedTokenMatcher.Split] = [], p = 0, last = 0
        while p < text.count {
            var best: (stop: Int, index: Int)?
            for (index, pattern) in patterns.enumerated() where !pattern.isEmpty && p + pattern.count <= text.count {
                if Array(text[p..<(p + pattern.count)]) == pattern, best.map({ p + pattern.count > $0.stop }) ?? true { best = (p + pattern.count, index) }
            }
            guard let (stop, index) = best else { p += 1; continue }
            if last < p { result.append(.init(token: nil, range: last..<p)) }
            result.append(.init(token: index, range: p..<stop))
            (p, last) = (stop, stop)
        }
        if last < text.count { result.append(.init(token: nil, range: last..<text.count)) }
        return result
    }

    /// Random cases (a failure prints its patterns and text, so it can be run again).
    func testRandomTextsOverASmallAlphabet() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<400 {
            let letters = UInt32.random(in: 2...4, using: &generator)
            let patterns = (0..<Int.random(in: 1...6, using: &generator)).map { _ in
                (0..<Int.random(in: 1...5, using: &generator)).map { _ in UInt32.random(in: 0..<letters, using: &generator) }
            }
            let text = (0..<Int.random(in: 0...60, using: &generator)).map { _ in UInt32.random(in: 0..<letters, using: &generator) }
            let matcher = AddedTokenMatcher(tokens: patterns.indices.map { token($0) }, patterns: patterns)
            let found = text.withUnsafeBufferPointer { matcher.splits($0, 0..<text.count) }
            XCTAssertEqual(found, reference(text, patterns), "patterns \(patterns) text \(text)")
        }
    }

    /// Found by an audit: a token of 20,000 scalars against 100,000 of its prefix's scalar took 17 s
    /// (the trie walked again from every position), and `lstrip` tokens between runs of whitespace
    /// scanned back to the range's start each time (400,000 tabs: 21 s). Both are linear now (this
    /// test asserts the pieces; the time it takes is the check that they stay so).
    func testLongContentsAndWhitespaceRuns() {
        let a = UInt32(UInt8(ascii: "a")), tab = UInt32(9)
        let long = [UInt32](repeating: a, count: 20_000) + [UInt32(UInt8(ascii: "b"))]
        let text = [UInt32](repeating: a, count: 100_000)
        let matcher = AddedTokenMatcher(tokens: [token(0)], patterns: [long])
        XCTAssertEqual(text.withUnsafeBufferPointer { matcher.splits($0, 0..<text.count) }, [.init(token: nil, range: 0..<text.count)])
        // A short content that begins the long one: each match no longer waits for the long one to fail.
        let both = AddedTokenMatcher(tokens: [token(0), token(1)], patterns: [[a], long])
        let ones = text.withUnsafeBufferPointer { both.splits($0, 0..<text.count) }
        XCTAssertEqual(ones.count, text.count)
        XCTAssertTrue(ones.allSatisfy { $0.token == 0 && $0.range.count == 1 })
        let tabs = [UInt32](repeating: tab, count: 400_000)
        let stripping = AddedTokenMatcher(tokens: [token(0, lstrip: true)], patterns: [[tab]])
        let pieces = tabs.withUnsafeBufferPointer { stripping.splits($0, 0..<tabs.count) }
        XCTAssertEqual(pieces.count, tabs.count)
        XCTAssertEqual(pieces.first, .init(token: 0, range: 0..<1))
    }
}
