import XCTest
@testable import Tokenizer

final class RegexTests: XCTestCase {
    func matches(_ pattern: String, _ text: String) throws -> [String] {
        let regex = try ScalarRegex(pattern)
        let scalars = UTF8Text.scalars(of: text)
        var stack: [ScalarRegex.Backtrack] = []
        var found: [String] = []
        try scalars.withUnsafeBufferPointer { buffer in
            try regex.forEachMatch(buffer, start: 0, end: scalars.count, stack: &stack) { s, e in
                found.append(String(String.UnicodeScalarView(scalars[s..<e].map { Unicode.Scalar($0)! })))
            }
        }
        return found
    }

    func testGreedyRepeatsAndAlternationOrder() throws {
        XCTAssertEqual(try matches("\\p{N}{1,3}", "1234567 89"), ["123", "456", "7", "89"])
        // The lookahead leaves the last space of a run for the word after it.
        XCTAssertEqual(try matches("\\s+(?!\\S)|\\s+", "a   b  "), ["  ", " ", "  "])
        XCTAssertEqual(try matches("ab|a", "aab"), ["a", "ab"])
        XCTAssertEqual(try matches("x{2,}?y|x", "xxxy"), ["xxxy"])
    }

    func testUnicodeClassesAndRanges() throws {
        XCTAssertEqual(try matches("[\\p{L}\\p{M}]+", "e\u{301}té 中文 ٣"), ["e\u{301}té", "中文"])
        XCTAssertEqual(try matches("[^\\r\\n\\p{L}\\p{P}\\p{S}]?\\p{L}+", " word\nnext"), [" word", "next"])
        XCTAssertEqual(try matches("[一-龥]+", "ab中文cd"), ["中文"])
        XCTAssertEqual(try matches("\\p{S}+", "a+b=c€"), ["+", "=", "€"])
    }

    func testAnchorsAreLineAnchors() throws {
        XCTAssertEqual(try matches("\\s+$", "a  \nb  "), ["  ", "  "])
        XCTAssertEqual(try matches("^x", "x\nx"), ["x", "x"])
    }

    func testEmptyMatchesFollowOnigFindIter() throws {
        XCTAssertEqual(try matches("a*", "baa"), ["", "aa"])
        XCTAssertEqual(try matches("x*", "ab"), ["", "", ""])
    }

    func testUnsupportedConstructsAreNamed() {
        for (pattern, construct) in [("(?<=a)b", "group '(?<'"), ("\\w+", "escape '\\w'"), ("a++", "possessive quantifier '+'"),
                                     ("[[:alpha:]]", "nested class or POSIX bracket '[' inside a class"), ("\\p{Greek}", "property \\p{Greek}"),
                                     ("(a*)*", "unbounded quantifier on an expression that can match empty"), ("\\1", "escape '\\1'")] {
            XCTAssertThrowsError(try ScalarRegex(pattern), pattern) { error in
                XCTAssertEqual((error as? UnsupportedRegex)?.construct, construct, pattern)
            }
        }
    }

    /// Found by an audit: each class written in a pattern kept its own 136 KiB bitmap (`\\d` 30,000
    /// times took 8.7 GB). Equal classes share one; more than 256 different ones are refused by name.
    func testCharacterClassesAreStoredOncePerSet() throws {
        var parser = RegexParser(String(repeating: "\\d", count: 30_000) + String(repeating: ".", count: 1_000) + "[0-9]")
        _ = try parser.parse()
        XCTAssertEqual(parser.sets.count, 3, "\\d (Unicode's decimal digits), . and [0-9]")
        XCTAssertEqual(try matches("\\d\\d.", "12a34b"), ["12a", "34b"])
        let classes = (0..<(RegexParser.maximumSets + 1)).map { "[\\x{100}-\\x{\(String(0x200 + $0, radix: 16))}]" }.joined()
        XCTAssertThrowsError(try ScalarRegex(classes)) { error in
            XCTAssertEqual((error as? UnsupportedRegex)?.construct, "more than 256 different character classes")
        }
        XCTAssertNoThrow(try ScalarRegex(classes.replacingOccurrences(of: "[\\x{100}-\\x{300}]", with: "")))
    }

    /// Found by an audit: 50,000 nested groups overflowed the stack (SIGSEGV); a nesting the parser
    /// refuses by name instead, and a few levels still compile.
    func testDeepNestingIsRefusedByName() throws {
        let depth = RegexParser.maximumDepth
        XCTAssertEqual(try matches(String(repeating: "(", count: depth) + "a" + String(repeating: ")", count: depth), "aa"), ["a", "a"])
        for levels in [depth + 1, 50_000] {
            XCTAssertThrowsError(try ScalarRegex(String(repeating: "(", count: levels) + "a" + String(repeating: ")", count: levels))) { error in
                XCTAssertEqual((error as? UnsupportedRegex)?.construct, "groups nested deeper than \(depth)")
            }
        }
        // Quantifiers stacked on one atom nest too, without a group (found by the review).
        XCTAssertEqual(try matches("a{1}{1}", "aa"), ["a", "a"])
        for pattern in ["a" + String(repeating: "{1}", count: 50_000), "a" + String(repeating: "{0,1}", count: RegexParser.maximumStackedQuantifiers + 1)] {
            XCTAssertThrowsError(try ScalarRegex(pattern)) { error in
                XCTAssertEqual((error as? UnsupportedRegex)?.construct, "more than \(RegexParser.maximumStackedQuantifiers) quantifiers stacked on one expression")
            }
        }
    }

    /// Found by an audit: `(a+)+b` on 37 `a`s ran for longer than 15 s (the time doubles per `a`).
    /// The attempt stops after `backtrackLimit` backtracks and the text is refused naming the pattern.
    func testCatastrophicBacktrackingIsRefused() throws {
        XCTAssertThrowsError(try matches("(a+)+b", String(repeating: "a", count: 40))) { error in
            XCTAssertEqual((error as? RegexBacktrackLimit)?.position, 0)
        }
        // The same pattern where the text lets it match stays fast and exact.
        XCTAssertEqual(try matches("(a+)+b", String(repeating: "a", count: 40) + "b"), [String(repeating: "a", count: 40) + "b"])
    }
}
