import SafeTensors
import Synchronization

/// A regular expression over short names (`quantize --skip`'s tensor names), matched by the
/// tokenizer's own matcher: Oniguruma's syntax as tokenizer files write it, and its limits on work.
/// One attempt may backtrack 10,000,000 times, and all the names a pattern is tested on share one
/// budget (10,000,000 + 1,000 per character of them), so a pattern such as `^([a-z._0-9]+)+Z` is
/// refused instead of running for hours, as Foundation's `NSRegularExpression` did (found by an
/// audit), and one costing millions per name is refused long before V3's ~91,000 names are done.
public struct NamePattern: Sendable {
    /// The pattern as given.
    public let pattern: String
    private let regex: ScalarRegex
    /// Backtracks spent and characters tested over every name so far (shared by copies).
    private let work = Work()

    private final class Work: Sendable {
        let state = Mutex<(backtracks: Int, scalars: Int)>((0, 0))
    }

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

    /// Whether the pattern matches somewhere in `name`; the first match ends the search (as
    /// Python's `re.search`).
    public func matches(_ name: String) throws -> Bool {
        let scalars = name.unicodeScalars.map(\.value)
        let (spent, seen) = work.state.withLock { state in
            state.scalars += scalars.count
            return (state.backtracks, state.scalars)
        }
        var scratch = ScalarRegex.Scratch()
        scratch.limitWork(scalars: seen, spent: spent)
        defer { work.state.withLock { $0.backtracks += scratch.backtracks } }
        do {
            return try scalars.withUnsafeBufferPointer { try regex.hasMatch($0, start: 0, end: scalars.count, scratch: &scratch) }
        } catch let error as RegexBacktrackLimit {
            let limit = error.text == nil
                ? "one attempt backtracks more than \(ScalarRegex.backtrackLimit) times"
                : "more than \(ScalarRegex.backtrackLimit + ScalarRegex.perScalarBudget * seen) backtracks over the \(seen) characters of the names tested so far"
            throw Refusal(pattern: pattern, reason: "gives up on '\(name)' (\(limit))")
        }
    }
}
