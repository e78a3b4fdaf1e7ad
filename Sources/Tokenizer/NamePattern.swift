import SafeTensors

/// A regular expression over short names (`quantize --skip`'s tensor names), matched by the
/// tokenizer's own matcher: Oniguruma's syntax as tokenizer files write it, and its limits on work
/// (one attempt 10,000,000 backtracks; a name of n characters 10,000,000 + 1,000·n), so a pattern
/// such as `^([a-z._0-9]+)+Z` is refused on the first name instead of running for hours, as
/// Foundation's `NSRegularExpression` did (found by an audit).
public struct NamePattern: Sendable {
    /// The pattern as given.
    public let pattern: String
    private let regex: ScalarRegex

    /// Why a pattern cannot be used: a construct the matcher does not implement, or a name it gave up on.
    public struct Refusal: Error, Equatable, Sendable, CustomStringConvertible {
        public let pattern: String
        public let reason: String
        public var description: String { "pattern \(CompactJSON.quoted(pattern)) \(reason)" }
    }

    /// Compiles `pattern`; a construct the matcher does not implement (`\w`, `\b`, lookbehind,
    /// backreferences) is refused naming it.
    public init(_ pattern: String) throws {
        self.pattern = pattern
        do { regex = try ScalarRegex(pattern) } catch let error as UnsupportedRegex {
            throw Refusal(pattern: pattern, reason: "unsupported construct \(error.construct)")
        }
    }

    /// Whether the pattern matches somewhere in `name` (as Python's `re.search`).
    public func matches(_ name: String) throws -> Bool {
        let scalars = name.unicodeScalars.map(\.value)
        var scratch = ScalarRegex.Scratch()
        var found = false
        do {
            try scalars.withUnsafeBufferPointer { buffer in
                try regex.forEachMatch(buffer, start: 0, end: scalars.count, scratch: &scratch) { _, _ in found = true }
            }
        } catch is RegexBacktrackLimit {
            throw Refusal(pattern: pattern, reason: "gives up on '\(name)' (more than \(ScalarRegex.backtrackLimit + ScalarRegex.perScalarBudget * scalars.count) backtracks)")
        }
        return found
    }
}
