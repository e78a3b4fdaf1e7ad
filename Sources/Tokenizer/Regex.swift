/// A match attempt that backtracked more than `ScalarRegex.backtrackLimit` times: a pattern such as
/// `(a+)+b` on a long run of `a` takes time exponential in the run's length. Refused rather than left
/// to run for hours (Oniguruma, which `tokenizers` uses, also stops at a retry limit of this size).
struct RegexBacktrackLimit: Error {
    let pattern: String
    /// Where the attempt started, in the scalars of the (normalized) text.
    let position: Int
}

/// A compiled `Split` pattern: a backtracking matcher over Unicode scalar values with Oniguruma's
/// choice order (alternatives left to right, greedy repeats longest first), so the leftmost match
/// it finds is the one `tokenizers` finds.
public final class ScalarRegex: Sendable {
    /// The pattern as the tokenizer file spells it.
    public let pattern: String
    private let programs: [[RegexInstruction]]
    private let bits: [UInt64]
    /// Offset of the set of scalars a match can start with; nil when the pattern can match empty.
    private let firstSetOffset: Int?
    private static let setWords = 0x110000 / 64
    /// Backtracks allowed to one match attempt (Oniguruma's default retry limit in a match).
    static let backtrackLimit = 10_000_000

    /// Compiles `pattern`; throws `UnsupportedRegex` naming the first construct it does not implement.
    init(_ pattern: String) throws {
        self.pattern = pattern
        var parser = RegexParser(pattern)
        let tree = try parser.parse()
        var sets = parser.sets
        let offsets = sets.indices.map { $0 * Self.setWords }
        var compiler = RegexCompiler(setOffsets: offsets)
        try compiler.compile(tree)
        programs = compiler.programs
        if let first = Self.firstSet(programs[0], sets: sets) {
            sets.append(first)
            firstSetOffset = (sets.count - 1) * Self.setWords
        } else {
            firstSetOffset = nil
        }
        bits = sets.flatMap(\.words)
    }

    /// The union of what the first consuming instructions accept, or nil when `match` is reachable
    /// without consuming (the pattern can match empty, so every position must be tried).
    private static func firstSet(_ code: [RegexInstruction], sets: [ScalarSet]) -> ScalarSet? {
        var result = ScalarSet()
        var seen = Set<Int>()
        var work = [0]
        while let pc = work.popLast() {
            guard seen.insert(pc).inserted else { continue }
            let ins = code[pc]
            switch ins.op {
            case .scalar: result.insert(UInt32(ins.a))
            case .set: result.formUnion(sets[ins.a / setWords])
            case .split: work += [ins.a, ins.b]
            case .jump: work.append(ins.a)
            case .repeatSet:
                result.formUnion(sets[ins.a / setWords])
                if ins.b == 0 { work.append(pc + 1) }
            case .repeatScalar:
                result.insert(UInt32(ins.a))
                if ins.b == 0 { work.append(pc + 1) }
            case .peek, .look, .assert: work.append(pc + 1)
            case .match: return nil
            }
        }
        return result
    }

    /// Every match in `text[start..<end]` (the whole subject), as the `onig` crate's `find_iter`
    /// reports them: an empty match right where the previous match ended is skipped.
    func forEachMatch(_ text: UnsafeBufferPointer<UInt32>, start: Int, end: Int, stack: inout [Backtrack], _ body: (Int, Int) -> Void) throws {
        var searchFrom = start
        var lastMatchEnd: Int?
        while searchFrom <= end {
            guard let (s, e) = try search(text, from: searchFrom, start: start, end: end, stack: &stack) else { return }
            if s == e, lastMatchEnd == e {
                searchFrom += 1
                continue
            }
            searchFrom = e
            lastMatchEnd = e
            body(s, e)
        }
    }

    /// The leftmost match starting at or after `from`.
    func search(_ text: UnsafeBufferPointer<UInt32>, from: Int, start: Int, end: Int, stack: inout [Backtrack]) throws -> (Int, Int)? {
        try bits.withUnsafeBufferPointer { bitsPointer in
            let bitsBase = bitsPointer.baseAddress!
            var p = from
            if let first = firstSetOffset {
                while p < end {
                    let v = text[p]
                    if bitsBase[first + Int(v >> 6)] >> UInt64(v & 63) & 1 != 0,
                       let e = try run(0, at: p, text, start: start, end: end, bits: bitsBase, stack: &stack) { return (p, e) }
                    p += 1
                }
                return nil
            }
            while p <= end {
                if let e = try run(0, at: p, text, start: start, end: end, bits: bitsBase, stack: &stack) { return (p, e) }
                p += 1
            }
            return nil
        }
    }

    /// A choice point: resume at `pc` from `pos`; for a greedy repeat, also every shorter length
    /// down to `low`.
    struct Backtrack {
        var pc: Int
        var pos: Int
        var low: Int
    }

    /// Runs program `index` at `position`; the end of the match, or nil. Throws past
    /// `backtrackLimit` backtracks.
    private func run(_ index: Int, at position: Int, _ text: UnsafeBufferPointer<UInt32>, start: Int, end: Int,
                     bits: UnsafePointer<UInt64>, stack: inout [Backtrack]) throws -> Int? {
        let base = stack.count
        defer { stack.removeSubrange(base...) }
        return try programs[index].withUnsafeBufferPointer { code -> Int? in
            var pc = 0
            var pos = position
            var backtracks = 0
            @inline(__always) func inSet(_ offset: Int, _ v: UInt32) -> Bool { bits[offset + Int(v >> 6)] >> UInt64(v & 63) & 1 != 0 }
            while true {
                let ins = code[pc]
                var ok = true
                switch ins.op {
                case .scalar:
                    if pos < end, text[pos] == UInt32(ins.a) { pos += 1; pc += 1 } else { ok = false }
                case .set:
                    if pos < end, inSet(ins.a, text[pos]) { pos += 1; pc += 1 } else { ok = false }
                case .split:
                    stack.append(Backtrack(pc: ins.b, pos: pos, low: -1))
                    pc = ins.a
                case .jump:
                    pc = ins.a
                case .repeatSet, .repeatScalar:
                    var k = 0
                    let limit = min(ins.c, end - pos)
                    if ins.op == .repeatSet {
                        while k < limit, inSet(ins.a, text[pos + k]) { k += 1 }
                    } else {
                        while k < limit, text[pos + k] == UInt32(ins.a) { k += 1 }
                    }
                    if k < ins.b { ok = false; break }
                    if k > ins.b { stack.append(Backtrack(pc: pc + 1, pos: pos + k - 1, low: pos + ins.b)) }
                    pos += k
                    pc += 1
                case .peek:
                    let hit = pos < end && inSet(ins.a, text[pos])
                    if hit == (ins.b == 1) { ok = false } else { pc += 1 }
                case .look:
                    let hit = try run(ins.a, at: pos, text, start: start, end: end, bits: bits, stack: &stack) != nil
                    if hit == (ins.b == 1) { ok = false } else { pc += 1 }
                case .assert:
                    if Self.holds(ins.a, text, pos: pos, start: start, end: end) { pc += 1 } else { ok = false }
                case .match:
                    return pos
                }
                if ok { continue }
                guard stack.count > base else { return nil }
                backtracks += 1
                if backtracks > Self.backtrackLimit { throw RegexBacktrackLimit(pattern: pattern, position: position) }
                let choice = stack.removeLast()
                if choice.low >= 0, choice.pos > choice.low {
                    stack.append(Backtrack(pc: choice.pc, pos: choice.pos - 1, low: choice.low))
                }
                pc = choice.pc
                pos = choice.pos
            }
        }
    }

    private static func holds(_ assertion: Int, _ text: UnsafeBufferPointer<UInt32>, pos: Int, start: Int, end: Int) -> Bool {
        switch assertion {
        case 0: return pos == start || text[pos - 1] == 0x0A
        case 1: return pos == end || text[pos] == 0x0A
        case 2: return pos == start
        case 3: return pos == end
        default: return pos == end || (pos == end - 1 && text[pos] == 0x0A)
        }
    }
}
