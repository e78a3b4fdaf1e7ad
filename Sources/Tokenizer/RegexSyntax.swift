/// The parsed form of a `Split` pattern: the subset of Oniguruma's Ruby syntax (what `tokenizers`
/// compiles `Split` patterns with) that tokenizer files use. Everything else is refused by name.
indirect enum RegexNode {
    case scalar(UInt32)
    case set(Int)
    case sequence([RegexNode])
    case alternation([RegexNode])
    case quantified(RegexNode, min: Int, max: Int?, greedy: Bool)
    case lookahead(RegexNode, negated: Bool)
    case assertion(RegexAssertion)

    /// Whether the node can match the empty string.
    var isNullable: Bool {
        switch self {
        case .scalar, .set: return false
        case let .sequence(items): return items.allSatisfy(\.isNullable)
        case let .alternation(items): return items.contains { $0.isNullable }
        case let .quantified(node, min, _, _): return min == 0 || node.isNullable
        case .lookahead, .assertion: return true
        }
    }
}

/// Zero-width positions. Oniguruma's Ruby syntax makes `^`/`$` line anchors (newline = U+000A only).
enum RegexAssertion {
    case lineStart, lineEnd, textStart, textEnd, textEndBeforeFinalNewline
}

/// A construct the matcher does not implement.
struct UnsupportedRegex: Error {
    let construct: String
}

/// Recursive-descent parser over the pattern's scalars. Character classes become `ScalarSet`s.
struct RegexParser {
    private let chars: [UInt32]
    private var index = 0
    private(set) var sets: [ScalarSet] = []
    private var setIndex: [ScalarSet: Int] = [:]
    /// Different character classes a pattern may hold (DeepSeek's hold about 20): 256 bitmaps are 35 MB.
    static let maximumSets = 256
    static let maximumCount = 1000
    /// Groups nested deeper are refused: the parser, the compiler and the matcher recurse per level,
    /// and a pattern of 50,000 nested groups overflowed the stack. Tokenizer files nest a few levels.
    static let maximumDepth = 256
    /// Quantifiers stacked on one atom (`a{1}{1}…`, `a??…`) nest the same way without a group.
    static let maximumStackedQuantifiers = 8
    private var depth = 0
    /// Inside `(?i:…)`: literal letters match either case.
    private var caseInsensitive = false
    /// The nesting depth of the innermost `(?i:…)` group, whose branches an s or f must end.
    private var caseGroupDepth = -1

    init(_ pattern: String) { chars = pattern.unicodeScalars.map(\.value) }

    mutating func parse() throws -> RegexNode {
        let node = try parseAlternation()
        if index < chars.count { throw UnsupportedRegex(construct: "unbalanced ')'") }
        return node
    }

    private var atEnd: Bool { index >= chars.count }
    private func peek(_ offset: Int = 0) -> UInt32? { index + offset < chars.count ? chars[index + offset] : nil }
    private static func char(_ c: Character) -> UInt32 { c.unicodeScalars.first!.value }

    private mutating func parseAlternation() throws -> RegexNode {
        var branches = [try parseSequence()]
        while peek() == Self.char("|") {
            index += 1
            branches.append(try parseSequence())
        }
        return branches.count == 1 ? branches[0] : .alternation(branches)
    }

    private mutating func parseSequence() throws -> RegexNode {
        var items: [RegexNode] = []
        while let c = peek(), c != Self.char("|"), c != Self.char(")") {
            let atom = try parseAtom()
            items.append(try parseQuantifiers(atom))
        }
        return items.count == 1 ? items[0] : .sequence(items)
    }

    private mutating func parseQuantifiers(_ atom: RegexNode) throws -> RegexNode {
        var node = atom
        var stacked = 0
        while let c = peek() {
            let bounds: (Int, Int?)
            switch c {
            case Self.char("?"): bounds = (0, 1); index += 1
            case Self.char("*"): bounds = (0, nil); index += 1
            case Self.char("+"): bounds = (1, nil); index += 1
            case Self.char("{"):
                guard let parsed = try parseBraces() else { return node }
                bounds = parsed
            default: return node
            }
            if case .assertion = node { throw UnsupportedRegex(construct: "quantified anchor") }
            if case .lookahead = node { throw UnsupportedRegex(construct: "quantified lookahead") }
            var greedy = true
            if peek() == Self.char("?") { greedy = false; index += 1 } else if peek() == Self.char("+") {
                throw UnsupportedRegex(construct: "possessive quantifier '+'")
            }
            if bounds.1 == nil, node.isNullable { throw UnsupportedRegex(construct: "unbounded quantifier on an expression that can match empty") }
            stacked += 1
            if stacked > Self.maximumStackedQuantifiers { throw UnsupportedRegex(construct: "more than \(Self.maximumStackedQuantifiers) quantifiers stacked on one expression") }
            node = .quantified(node, min: bounds.0, max: bounds.1, greedy: greedy)
        }
        return node
    }

    /// `{n}`, `{n,}`, `{,m}`, `{n,m}`; anything else leaves `{` a literal, as Oniguruma does.
    private mutating func parseBraces() throws -> (Int, Int?)? {
        var j = index + 1
        func number() -> Int? {
            var value: Int?
            while j < chars.count, chars[j] >= 0x30, chars[j] <= 0x39 {
                value = (value ?? 0) * 10 + Int(chars[j] - 0x30)
                if value! > Self.maximumCount { return Int.max }
                j += 1
            }
            return value
        }
        let low = number()
        var high: Int?? = .some(low)
        if j < chars.count, chars[j] == Self.char(",") { j += 1; high = .some(number()) ; if high! == nil { high = .some(nil) } }
        guard j < chars.count, chars[j] == Self.char("}"), low != nil || high! != nil else { return nil }
        let minimum = low ?? 0
        let maximum: Int? = high!
        if minimum == Int.max || maximum == Int.max { throw UnsupportedRegex(construct: "repeat count above \(Self.maximumCount)") }
        if let m = maximum, m < minimum { throw UnsupportedRegex(construct: "repeat range {\(minimum),\(m)}") }
        index = j + 1
        return (minimum, maximum)
    }

    private mutating func parseAtom() throws -> RegexNode {
        let c = chars[index]
        index += 1
        switch c {
        case Self.char("("): return try parseGroup()
        case Self.char("["): try classAllowed(); return .set(try parseClass())
        case Self.char("."):
            try classAllowed()
            var set = ScalarSet(); set.invert(); set.remove(0x0A)
            return .set(try store(set))
        case Self.char("^"): return .assertion(.lineStart)
        case Self.char("$"): return .assertion(.lineEnd)
        case Self.char("\\"): return try parseEscape()
        case Self.char("*"), Self.char("+"), Self.char("?"): throw UnsupportedRegex(construct: "quantifier with nothing before it")
        default: return try literal(c)
        }
    }

    /// A literal scalar; in a case-insensitive group, an ASCII letter becomes the set of the scalars
    /// that fold to the same letter alone: its two cases, plus U+017F (long s) for s and U+212A
    /// (Kelvin sign) for k, the only others CaseFolding.txt folds to one ASCII letter (U+0130 folds
    /// to two scalars; U+0131 has only a Turkic folding, which Oniguruma does not apply). Oniguruma
    /// also folds one scalar into a run of letters (ß and ẞ into ss, ﬆ and ﬅ into st, ﬁ ﬂ ﬀ ﬃ ﬄ
    /// into f…), so in such a group an s or f must end a branch of the group itself (found by a
    /// review: `(?i:st)` matched ﬆ there and not here). What DeepSeek's Qwen- and Llama-based
    /// tokenizers need (`(?i:'s|'t|'re|'ve|'m|'ll|'d)`); other scalars with case, and classes, are
    /// refused inside such a group rather than guessed.
    private mutating func literal(_ c: UInt32) throws -> RegexNode {
        guard caseInsensitive else { return .scalar(c) }
        let lower = c | 0x20
        guard (0x61...0x7A).contains(lower), c < 0x80 else {
            if c >= 0x80 { throw UnsupportedRegex(construct: "non-ASCII character in a case-insensitive group") }
            return .scalar(c)
        }
        if lower == Self.char("s") || lower == Self.char("f"),
           depth != caseGroupDepth || (peek() != Self.char("|") && peek() != Self.char(")")) {
            throw UnsupportedRegex(construct: "s or f followed by more in a case-insensitive group (Oniguruma folds ß, ﬆ, ﬁ into letter pairs)")
        }
        var set = ScalarSet()
        set.insert(lower)
        set.insert(lower - 0x20)
        if lower == Self.char("s") { set.insert(0x017F) }
        if lower == Self.char("k") { set.insert(0x212A) }
        return .set(try store(set))
    }

    /// Classes are not case-folded here: refused inside a case-insensitive group.
    private func classAllowed() throws {
        if caseInsensitive { throw UnsupportedRegex(construct: "character class in a case-insensitive group") }
    }

    private mutating func parseGroup() throws -> RegexNode {
        var lookahead: Bool?
        var opensCaseGroup = false
        let (outerCase, outerCaseDepth) = (caseInsensitive, caseGroupDepth)
        defer { (caseInsensitive, caseGroupDepth) = (outerCase, outerCaseDepth) }
        if peek() == Self.char("?") {
            switch peek(1) {
            case Self.char(":"): index += 2
            case Self.char("i") where peek(2) == Self.char(":"): index += 3; caseInsensitive = true; opensCaseGroup = true
            case Self.char("="): index += 2; lookahead = false
            case Self.char("!"): index += 2; lookahead = true
            default:
                let shown = String(String.UnicodeScalarView(chars[index..<min(index + 2, chars.count)].compactMap(Unicode.Scalar.init)))
                throw UnsupportedRegex(construct: "group '(\(shown)'")
            }
        }
        depth += 1
        defer { depth -= 1 }
        if depth > Self.maximumDepth { throw UnsupportedRegex(construct: "groups nested deeper than \(Self.maximumDepth)") }
        if opensCaseGroup { caseGroupDepth = depth }
        let inner = try parseAlternation()
        guard peek() == Self.char(")") else { throw UnsupportedRegex(construct: "unclosed '('") }
        index += 1
        if let negated = lookahead { return .lookahead(inner, negated: negated) }
        return inner
    }

    /// The index of `set` among the pattern's distinct sets. Each is a bitmap of every scalar
    /// (136 KiB), so a class written 30,000 times is stored once (it took 8.7 GB), and a pattern with
    /// more than `maximumSets` different ones is refused.
    private mutating func store(_ set: ScalarSet) throws -> Int {
        if let index = setIndex[set] { return index }
        guard sets.count < Self.maximumSets else { throw UnsupportedRegex(construct: "more than \(Self.maximumSets) different character classes") }
        sets.append(set)
        setIndex[set] = sets.count - 1
        return sets.count - 1
    }

    private mutating func parseEscape() throws -> RegexNode {
        guard let c = peek() else { throw UnsupportedRegex(construct: "trailing '\\'") }
        switch c {
        case Self.char("A"): index += 1; return .assertion(.textStart)
        case Self.char("z"): index += 1; return .assertion(.textEnd)
        case Self.char("Z"): index += 1; return .assertion(.textEndBeforeFinalNewline)
        default:
            switch try parseClassEscape() {
            case let .single(v): return try literal(v)
            case let .set(set): try classAllowed(); return .set(try store(set))
            }
        }
    }

    private enum EscapeValue { case single(UInt32), set(ScalarSet) }

    /// An escape after `\` valid both inside and outside a class.
    private mutating func parseClassEscape() throws -> EscapeValue {
        let c = chars[index]
        index += 1
        switch c {
        case Self.char("n"): return .single(0x0A)
        case Self.char("r"): return .single(0x0D)
        case Self.char("t"): return .single(0x09)
        case Self.char("f"): return .single(0x0C)
        case Self.char("v"): return .single(0x0B)
        case Self.char("a"): return .single(0x07)
        case Self.char("e"): return .single(0x1B)
        case Self.char("x"): return .single(try parseHex(braced: peek() == Self.char("{"), digits: 2))
        case Self.char("u"): return .single(try parseHex(braced: false, digits: 4))
        case Self.char("s"), Self.char("S"):
            var set = ScalarSet(); set.insertWhitespace()
            if c == Self.char("S") { set.invert() }
            return .set(set)
        case Self.char("d"), Self.char("D"):
            var set = ScalarSet(); set.insert(categories: [.decimalNumber])
            if c == Self.char("D") { set.invert() }
            return .set(set)
        case Self.char("p"), Self.char("P"):
            var set = try parseProperty()
            if c == Self.char("P") { set.invert() }
            return .set(set)
        default:
            let isAlphanumeric = (0x30...0x39).contains(c) || (0x41...0x5A).contains(c) || (0x61...0x7A).contains(c)
            if isAlphanumeric || c >= 0x80 {
                throw UnsupportedRegex(construct: "escape '\\\(Unicode.Scalar(c).map { String(Character($0)) } ?? "?")'")
            }
            return .single(c)
        }
    }

    private mutating func parseHex(braced: Bool, digits: Int) throws -> UInt32 {
        if braced { index += 1 }
        var value: UInt32 = 0
        var count = 0
        while let c = peek(), let digit = Self.hexValue(c), braced || count < digits {
            value = value * 16 + digit
            count += 1
            index += 1
            if value > 0x10FFFF { throw UnsupportedRegex(construct: "code point above U+10FFFF") }
        }
        if braced {
            guard peek() == Self.char("}"), count > 0 else { throw UnsupportedRegex(construct: "malformed \\x{…}") }
            index += 1
        } else if count != digits {
            throw UnsupportedRegex(construct: "malformed hexadecimal escape")
        }
        return value
    }

    private static func hexValue(_ c: UInt32) -> UInt32? {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x41...0x46: return c - 0x41 + 10
        case 0x61...0x66: return c - 0x61 + 10
        default: return nil
        }
    }

    private mutating func parseProperty() throws -> ScalarSet {
        guard peek() == Self.char("{") else { throw UnsupportedRegex(construct: "\\p without {NAME}") }
        index += 1
        var name = ""
        while let c = peek(), c != Self.char("}") {
            name.unicodeScalars.append(Unicode.Scalar(c)!)
            index += 1
        }
        guard peek() == Self.char("}") else { throw UnsupportedRegex(construct: "unclosed \\p{") }
        index += 1
        guard let categories = UnicodeTables.Category.named(name) else { throw UnsupportedRegex(construct: "property \\p{\(name)}") }
        var set = ScalarSet()
        set.insert(categories: categories)
        return set
    }

    /// `[…]` after the `[`: items, ranges `a-b`, escapes; nested classes, `&&` and POSIX brackets refused.
    private mutating func parseClass() throws -> Int {
        var set = ScalarSet()
        let negated = peek() == Self.char("^")
        if negated { index += 1 }
        var first = true
        while true {
            guard let c = peek() else { throw UnsupportedRegex(construct: "unclosed '['") }
            if c == Self.char("]") && !first { index += 1; break }
            first = false
            if c == Self.char("[") { throw UnsupportedRegex(construct: "nested class or POSIX bracket '[' inside a class") }
            if c == Self.char("&") && peek(1) == Self.char("&") { throw UnsupportedRegex(construct: "class intersection '&&'") }
            let low = try parseClassItem()
            guard case let .single(lowValue) = low else {
                if case let .set(other) = low { set.formUnion(other) }
                continue
            }
            if peek() == Self.char("-"), let next = peek(1), next != Self.char("]") {
                index += 1
                guard case let .single(highValue) = try parseClassItem() else { throw UnsupportedRegex(construct: "range ending in a class escape") }
                guard lowValue <= highValue else { throw UnsupportedRegex(construct: "empty range in a class") }
                set.insert(lowValue...highValue)
            } else {
                set.insert(lowValue)
            }
        }
        if negated { set.invert() }
        return try store(set)
    }

    private mutating func parseClassItem() throws -> EscapeValue {
        let c = chars[index]
        index += 1
        if c == Self.char("\\") {
            guard !atEnd else { throw UnsupportedRegex(construct: "trailing '\\'") }
            return try parseClassEscape()
        }
        return .single(c)
    }
}
