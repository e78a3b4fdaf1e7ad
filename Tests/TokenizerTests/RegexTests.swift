import XCTest
@testable import Tokenizer
import Numerics

final class RegexTests: XCTestCase {
    func matches(_ pattern: String, _ text: String) throws -> [String] {
        try spans(try ScalarRegex(pattern), text).matches.map { String(text.unicodeScalars.dropFirst($0.lowerBound).prefix($0.count)) }
    }

    /// The matches' scalar ranges, and the backtracks it took to find them.
    func spans(_ regex: ScalarRegex, _ text: String) throws -> (matches: [Range<Int>], backtracks: Int) {
        var scratch = ScalarRegex.Scratch()
        let found = try spans(regex, text, scratch: &scratch)
        return (found, scratch.backtracks)
    }

    /// The matches' scalar ranges, with `scratch` kept from earlier subjects (as the pre-tokenizer keeps
    /// it) and the text's work budget set (as the pre-tokenizer sets it once per text).
    func spans(_ regex: ScalarRegex, _ text: String, scratch: inout ScalarRegex.Scratch) throws -> [Range<Int>] {
        let scalars = UTF8Text.scalars(of: text)
        scratch.limitWork(scalars: scalars.count)
        var found: [Range<Int>] = []
        try scalars.withUnsafeBufferPointer { buffer in
            try regex.forEachMatch(buffer, start: 0, end: scalars.count, scratch: &scratch) { found.append($0..<$1) }
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

    /// `(?i:…)` as DeepSeek's Qwen- and Llama-based tokenizers write it: ASCII letters in either case,
    /// long s and the Kelvin sign with s and k (Unicode's simple case folding); the flag ends with
    /// its group; what it does not fold exactly is refused.
    func testCaseInsensitiveGroupsFoldASCIILetters() throws {
        let contractions = "(?i:'s|'t|'re|'ve|'m|'ll|'d)"
        XCTAssertEqual(try matches(contractions, "it's IT'S he'LL we'Re 'ſ 'D 'x"), ["'s", "'S", "'LL", "'Re", "'ſ", "'D"])
        XCTAssertEqual(try matches("(?i:k)", "kK\u{212A}x"), ["k", "K", "\u{212A}"])
        XCTAssertEqual(try matches("(?i:a)b", "AbAB ab"), ["Ab", "ab"], "the flag ends with its group")
        XCTAssertEqual(try matches("(?i:1-)", "1-"), ["1-"], "no case, no change")
        // Oniguruma folds ß/ẞ into ss, ﬆ/ﬅ into st, ﬁ ﬂ ﬀ ﬃ ﬄ into f…: an s or f followed by more is refused.
        for pattern in ["(?i:st)", "(?i:ss)", "(?i:fi|x)", "(?i:s\\x73)", "(?i:s(?:t))", "(?i:(?:s)t)", "(?i:(?:s|a)t)", "(?i:s+)", "(?i:\\x53T)"] {
            XCTAssertThrowsError(try ScalarRegex(pattern), pattern) { error in
                XCTAssertEqual((error as? UnsupportedRegex)?.construct, "s or f followed by more in a case-insensitive group (Oniguruma folds ß, ﬆ, ﬁ into letter pairs)", pattern)
            }
        }
        XCTAssertEqual(try matches("(?i:'s|x(?i:'f)|'f)", "'S xF 'f"), ["'S", "'f"], "an s or f ending a branch of its own group")
        for (pattern, construct) in [("(?i:[a-z])", "character class in a case-insensitive group"), ("(?i:\\p{L})", "character class in a case-insensitive group"),
                                     ("(?i:é)", "non-ASCII character in a case-insensitive group"), ("(?i)a", "group '(?i'")] {
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
    /// An attempt stops after `backtrackLimit` backtracks and the text is refused naming the pattern.
    /// `(a+)+b` itself is now answered at once (its inner run's failures are remembered, see
    /// `testFailedRepeatsAreNotRetriedInsideTheirRun`); `(a|aa)+b` has no such run to remember.
    func testCatastrophicBacktrackingIsRefused() throws {
        XCTAssertThrowsError(try matches("(a|aa)+b", String(repeating: "a", count: 40))) { error in
            XCTAssertEqual((error as? RegexBacktrackLimit)?.position, 0)
        }
        XCTAssertEqual(try matches("(a+)+b", String(repeating: "a", count: 40)), [])
        // The same patterns where the text lets them match stay fast and exact.
        XCTAssertEqual(try matches("(a+)+b", String(repeating: "a", count: 40) + "b"), [String(repeating: "a", count: 40) + "b"])
        XCTAssertEqual(try matches("(a|aa)+b", String(repeating: "a", count: 40) + "b"), [String(repeating: "a", count: 40) + "b"])
    }

    /// Found by an audit: DeepSeek-V2's `\s+$`, tried from each space of a run before a digit, gave
    /// the run back one space at a time (80,000 spaces: 12 s). Once a subject has backtracked 4n + 256
    /// times (n its length), a repeat entry whose continuations all failed is remembered and an
    /// entry inside its run fails at once: linear work, the same matches. The bound, 8n + 256: the
    /// 4n + 256 before remembering, one give-back of the run then, one more of the attempt that was
    /// running when remembering began (its outer entries have no record), and one per start.
    func testFailedRepeatsAreNotRetriedInsideTheirRun() throws {
        let remembering = try ScalarRegex("\\s+$"), plain = try ScalarRegex("\\s+$", remembering: .never)
        let short = String(repeating: " ", count: 2_000) + "1"
        let (found, plainWork) = try spans(plain, short)
        XCTAssertEqual(found, [])
        XCTAssertGreaterThan(plainWork, 2_000 * 2_000 / 2 - 2_000, "without memory: the run given back from every start")
        let (rememberedFound, rememberedWork) = try spans(remembering, short)
        XCTAssertEqual(rememberedFound, [])
        XCTAssertLessThanOrEqual(rememberedWork, 8 * 2_001 + 256)
        let long = String(repeating: " ", count: 100_000) + "1" + String(repeating: "\t", count: 100_000)
        let (longFound, work) = try spans(remembering, long)
        XCTAssertEqual(longFound, [100_001..<200_001])
        XCTAssertLessThanOrEqual(work, 8 * 200_001 + 256)
        // Two repeats of one run: the inner one, entered at each position the outer gives back, tries
        // only the new position (without memory, n³/6 steps: 1.7e14 here).
        let (nested, nestedWork) = try spans(try ScalarRegex("\\s*\\s*x"), String(repeating: " ", count: 100_000) + "1 x")
        XCTAssertEqual(nested, [100_001..<100_003])
        XCTAssertLessThanOrEqual(nestedWork, 8 * 100_003 + 256)
    }

    /// Matches with failed repeats remembered equal those found without, for random patterns over the
    /// constructs the matcher has (repeats of scalars, sets and groups, alternation, lookahead,
    /// anchors) on random texts of few distinct scalars, where runs and give-backs are frequent. The
    /// record starts at the subject's start or after a few backtracks (inside an attempt), and one
    /// scratch serves every pattern and text, as the pre-tokenizer's serves its pieces and steps.
    func testRememberingFailedRepeatsChangesNoMatch() throws {
        var generator = SplitMix64(seed: 0x5eed_2026)
        let atoms = ["a", "b", "\\s", "[ab]", "[^a]", "\\d", "."]
        let quantifiers = ["", "", "+", "*", "?", "{2,}", "{1,3}", "+?", "*?"]
        func item(depth: Int) -> String {
            switch generator.next(below: depth > 1 ? 8 : 11) {
            case 8: return "(?:" + pattern(depth: depth + 1) + ")" + quantifiers[generator.next(below: quantifiers.count)]
            // Lookaheads and anchors take no quantifier.
            case 9: return (generator.next(below: 2) == 0 ? "(?=" : "(?!") + pattern(depth: depth + 1) + ")"
            case 10: return ["$", "^", "\\z", "\\Z", "\\A"][generator.next(below: 5)]
            default: return atoms[generator.next(below: atoms.count)] + quantifiers[generator.next(below: quantifiers.count)]
            }
        }
        func pattern(depth: Int) -> String {
            let sequence = { (0..<(1 + generator.next(below: 3))).map { _ in item(depth: depth) }.joined() }
            return generator.next(below: 3) == 0 ? sequence() + "|" + sequence() : sequence()
        }
        var compared = 0, withLookahead = 0
        var shared = ScalarRegex.Scratch()
        for _ in 0..<3_000 {
            let source = pattern(depth: 0)
            let policy: ScalarRegex.RememberingPolicy = .after(backtracks: generator.next(below: 2) == 0 ? 0 : 1 + generator.next(below: 6))
            guard let remembering = try? ScalarRegex(source, remembering: policy) else { continue }
            let plain = try ScalarRegex(source, remembering: .never)
            for _ in 0..<4 {
                let text = String((0..<generator.next(below: 24)).map { _ in Array("aab  1\n")[generator.next(below: 7)] })
                XCTAssertEqual(try spans(remembering, text, scratch: &shared), try spans(plain, text).matches, "\(source) on \(text.debugDescription)")
                compared += 1
                withLookahead += source.contains("(?=") || source.contains("(?!") ? 1 : 0
            }
        }
        XCTAssertGreaterThan(compared, 6_000)
        XCTAssertGreaterThan(withLookahead, 1_000)
        XCTAssertGreaterThan(shared.recordDecisions, 1_000, "the record decided entries: the comparison tests it")
    }

    /// Found by the review: an entry two or more positions before a recorded run, with a minimum of
    /// one, must still try the positions from its own minimum up to the run's (`\\s+` entered at 1
    /// below the run recorded from 3).
    func testEntryBelowARecordedRunTriesItsOwnPositions() throws {
        let regex = try ScalarRegex("(?:a\\s\\s|a)\\s+\\s1", remembering: .after(backtracks: 0))
        var scratch = ScalarRegex.Scratch()
        XCTAssertEqual(try spans(regex, "a   1", scratch: &scratch), [0..<5])
        XCTAssertGreaterThan(scratch.recordDecisions, 0)
    }

    /// Found by an audit: each lookahead counted its own backtracks from zero, so nested lookaheads
    /// escaped the attempt's limit (this pattern at 14 ran for over 2 minutes on 40 `a`s, ~16 times
    /// longer per +2). The attempt's count now includes its lookaheads'.
    func testLookaheadWorkCountsTowardItsAttempt() throws {
        XCTAssertThrowsError(try matches("(?:(?:a|a)(?!(?:a|a){1,14}b)){1,14}c", String(repeating: "a", count: 40))) { error in
            let limit = error as? RegexBacktrackLimit
            XCTAssertNotNil(limit)
            XCTAssertNil(limit?.text, "one attempt's limit")
        }
    }

    /// Found by an audit: an attempt's worth of work at every start was bounded only per attempt
    /// (`(?:a|a){1,20}b`: ~22 ms per `a`, 40 minutes for 100 KB). A text of n scalars may take
    /// `backtrackLimit + perScalarBudget · n` backtracks in all.
    func testWorkOverAPieceIsBounded() throws {
        let text = String(repeating: "a", count: 2_000)
        XCTAssertThrowsError(try matches("(?:a|a){1,20}b", text)) { error in
            XCTAssertEqual((error as? RegexBacktrackLimit)?.text, 2_000)
        }
        // The same work over a short piece is within its budget, and DeepSeek-V2's patterns take a
        // few backtracks per scalar (the long blank runs above: under 8 per scalar).
        XCTAssertEqual(try matches("(?:a|a){1,20}b", String(repeating: "a", count: 4) + "b"), ["aaaab"])
    }
}

