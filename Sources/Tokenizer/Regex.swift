/// A match attempt that backtracked more than `ScalarRegex.backtrackLimit` times: a pattern such as
/// `(a+)+b` on a long run of `a` takes time exponential in the run's length. Refused rather than left
/// to run for hours (Oniguruma, which `tokenizers` uses, also stops at a retry limit of this size).
///
/// Also thrown past the work budget of a whole text (`Scratch.limitWork`: `backtrackLimit +
/// perScalarBudget · n` for n scalars; `text` set): work repeated at every start position, or in
/// every piece, is bounded too, not only one attempt's.
struct RegexBacktrackLimit: Error {
    let pattern: String
    /// Where the run that gave up started (the attempt's, or a lookahead's inside it), in the scalars
    /// of the (normalized) text.
    let position: Int
    /// For the budget of a text: its length in scalars (nil: one attempt's limit).
    var text: Int? = nil
}

/// A compiled `Split` pattern: a backtracking matcher over Unicode scalar values with Oniguruma's
/// choice order (alternatives left to right, greedy repeats longest first), so the leftmost match
/// it finds is the one `tokenizers` finds.
public final class ScalarRegex: Sendable {
    /// The pattern as the tokenizer file spells it.
    public let pattern: String
    /// Every program's instructions, one after another: program 0 is the pattern, and a `look`
    /// names its body by the offset where the body starts. Jumps are relative to their program.
    private let code: [RegexInstruction]
    /// Repeats without a maximum (each has a slot in `Scratch.failedRepeats`).
    private let repeatSlots: Int
    private let rememberingPolicy: RememberingPolicy
    private let bits: [UInt64]
    /// Offset of the set of scalars a match can start with; nil when the pattern can match empty.
    private let firstSetOffset: Int?
    private static let setWords = 0x110000 / 64
    /// Backtracks allowed to one match attempt, lookaheads included (Oniguruma's default retry limit
    /// in a match).
    static let backtrackLimit = 10_000_000
    /// Backtracks allowed per scalar of a text beyond one attempt's (`Scratch.limitWork`): DeepSeek's
    /// patterns take a few per scalar. A pattern that costs an attempt's worth at every start
    /// (`(?:a|a){1,20}b`: ~22 ms per `a`, 40 minutes for 100 KB) is refused instead (found by an audit).
    static let perScalarBudget = 1_000

    /// When failed repeat entries are remembered in a subject (see `run`). Every policy finds the
    /// same matches; tokenizers use `.afterLinearWork`, and tests the others.
    enum RememberingPolicy: Sendable {
        /// From the subject's 4n + 256th backtrack on (n scalars long).
        case afterLinearWork
        /// From the subject's `backtracks`th backtrack on (0: from its start).
        case after(backtracks: Int)
        /// Never: every state is tried.
        case never
    }

    /// Compiles `pattern`; throws `UnsupportedRegex` naming the first construct it does not implement.
    init(_ pattern: String, remembering: RememberingPolicy = .afterLinearWork) throws {
        self.pattern = pattern
        var parser = RegexParser(pattern)
        let tree = try parser.parse()
        var sets = parser.sets
        let offsets = sets.indices.map { $0 * Self.setWords }
        var compiler = RegexCompiler(setOffsets: offsets)
        try compiler.compile(tree)
        var programs = compiler.programs
        var slots = 0
        for p in programs.indices {
            for pc in programs[p].indices where [.repeatSet, .repeatScalar].contains(programs[p][pc].op) && programs[p][pc].c == Int.max {
                programs[p][pc].slot = slots
                slots += 1
            }
        }
        var starts: [Int] = []
        var flat: [RegexInstruction] = []
        for program in programs { starts.append(flat.count); flat += program }
        for i in flat.indices where flat[i].op == .look { flat[i].a = starts[flat[i].a] }
        code = flat
        repeatSlots = slots
        rememberingPolicy = slots == 0 ? .never : remembering
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

    /// The matcher's working memory, kept by the caller from subject to subject so matching a short
    /// piece allocates nothing.
    struct Scratch {
        /// Choice points of the attempt running now.
        var stack: [Backtrack] = []
        /// Per repeat without a maximum (`RegexInstruction.slot`): the last entry of it whose every
        /// continuation failed, at `from`, its run of matching scalars ending at `runEnd` (from -1:
        /// none yet). Valid for one subject only; used once `remembering`.
        var failedRepeats: [(from: Int, runEnd: Int)] = []
        /// Whether failed repeat entries are being remembered in this subject: from the point its
        /// backtracks pass `rememberAfter`. Ordinary text backtracks a few times per scalar, and
        /// keeping the record costs it ~15% of the matcher's speed (DeepSeek-V2's patterns).
        var remembering = false
        /// This subject's backtrack count at which `remembering` starts.
        var rememberAfter = 0
        /// Choice points resumed so far (all attempts, all subjects): what a test of the matcher's
        /// work reads.
        var backtracks = 0
        /// `backtracks` past which the text is refused (`limitWork`), and the text's length.
        private(set) var workLimit = Int.max, workText = 0
        /// `backtracks` past which the attempt running now stops: its own limit (its lookaheads'
        /// backtracks included: counted apart, nested lookaheads ran for days, found by an audit) or
        /// the text's, whichever comes first. One comparison per backtrack on the hot path.
        var stopAt = Int.max

        /// Starts an attempt: its backtracks are counted from now.
        mutating func startAttempt() { stopAt = min(workLimit, backtracks + ScalarRegex.backtrackLimit) }
        /// Repeat entries the record decided (failed at once, or tried fewer positions): what a test
        /// reads to know the record was used.
        var recordDecisions = 0

        /// Records the repeat entry `marker` (just popped) and any under it as failed; the first
        /// choice point under them, or nil when none is left above `base`.
        @inline(never)
        mutating func popRepeatEntries(from marker: Backtrack, above base: Int) -> Backtrack? {
            var choice = marker
            while choice.pc < 0 {
                failedRepeats[-1 - choice.pc] = (from: choice.pos, runEnd: choice.low)
                guard stack.count > base else { return nil }
                choice = stack.removeLast()
            }
            return choice
        }

        /// Bounds all later matching with this scratch (every piece, every pattern) to the budget of a
        /// text of `scalars` scalars: `backtrackLimit + perScalarBudget · scalars` backtracks from now.
        /// Once per text, not per piece: a tokenizer that cuts the text into short pieces would
        /// otherwise get a fresh allowance for each (found by a review).
        /// `spent`: backtracks this budget already paid for elsewhere (earlier names of a `NamePattern`).
        mutating func limitWork(scalars: Int, spent: Int = 0) {
            workLimit = backtracks + ScalarRegex.backtrackLimit + ScalarRegex.perScalarBudget * scalars - spent
            workText = scalars
        }

        /// Starts remembering failed repeat entries: the record starts empty.
        mutating func startRemembering(slots: Int) {
            remembering = true
            failedRepeats.removeAll(keepingCapacity: true)
            failedRepeats.append(contentsOf: repeatElement((from: -1, runEnd: -1), count: slots))
        }
    }

    /// Every match in `text[start..<end]` (the whole subject), as the `onig` crate's `find_iter`
    /// reports them: an empty match right where the previous match ended is skipped.
    func forEachMatch(_ text: UnsafeBufferPointer<UInt32>, start: Int, end: Int, scratch: inout Scratch, _ body: (Int, Int) -> Void) throws {
        var searchFrom = start
        var lastMatchEnd: Int?
        begin(subjectOf: end - start, &scratch)
        while searchFrom <= end {
            guard let (s, e) = try search(text, from: searchFrom, start: start, end: end, scratch: &scratch) else { return }
            if s == e, lastMatchEnd == e {
                searchFrom += 1
                continue
            }
            searchFrom = e
            lastMatchEnd = e
            body(s, e)
        }
    }

    /// Whether the pattern matches anywhere in `text[start..<end]`: the first match ends the search
    /// (as Python's `re.search`).
    func hasMatch(_ text: UnsafeBufferPointer<UInt32>, start: Int, end: Int, scratch: inout Scratch) throws -> Bool {
        begin(subjectOf: end - start, &scratch)
        return try search(text, from: start, start: start, end: end, scratch: &scratch) != nil
    }

    /// The per-subject state a search starts with: no record of failed repeats, and when to start one.
    private func begin(subjectOf length: Int, _ scratch: inout Scratch) {
        scratch.remembering = false
        switch rememberingPolicy {
        case .afterLinearWork: scratch.rememberAfter = scratch.backtracks + 4 * length + 256
        case let .after(backtracks) where backtracks <= 0:
            scratch.rememberAfter = Int.max
            scratch.startRemembering(slots: repeatSlots)
        case let .after(backtracks): scratch.rememberAfter = scratch.backtracks + backtracks
        case .never: scratch.rememberAfter = Int.max
        }
    }

    /// The leftmost match starting at or after `from`.
    private func search(_ text: UnsafeBufferPointer<UInt32>, from: Int, start: Int, end: Int, scratch: inout Scratch) throws -> (Int, Int)? {
        try bits.withUnsafeBufferPointer { bitsPointer in
            try code.withUnsafeBufferPointer { codePointer in
                let subject = Subject(text: text, start: start, end: end, bits: bitsPointer.baseAddress!, code: codePointer.baseAddress!)
                var p = from
                if let first = firstSetOffset {
                    while p < end {
                        if subject.inSet(first, text[p]), let e = try attempt(at: p, subject, scratch: &scratch) { return (p, e) }
                        p += 1
                    }
                    return nil
                }
                while p <= end {
                    if let e = try attempt(at: p, subject, scratch: &scratch) { return (p, e) }
                    p += 1
                }
                return nil
            }
        }
    }

    /// One match attempt of the pattern at `p`: its backtracks are counted from here.
    @inline(__always)
    private func attempt(at p: Int, _ subject: Subject, scratch: inout Scratch) throws -> Int? {
        scratch.startAttempt()
        return try run(0, at: p, subject, scratch: &scratch)
    }

    /// What a search reads: the text, the subject's bounds in it, the sets' bits and the programs.
    /// Passed as pointers, so `run` calls itself (for a lookahead) without a closure in between.
    private struct Subject {
        let text: UnsafeBufferPointer<UInt32>
        let start: Int, end: Int
        let bits: UnsafePointer<UInt64>
        let code: UnsafePointer<RegexInstruction>

        @inline(__always) func inSet(_ offset: Int, _ v: UInt32) -> Bool { bits[offset + Int(v >> 6)] >> UInt64(v & 63) & 1 != 0 }

        /// How many scalars from `pos` (at most `limit`) the repeat `ins` accepts: its run.
        @inline(__always) func run(of ins: RegexInstruction, from pos: Int, limit: Int) -> Int {
            var k = 0
            if ins.op == .repeatSet {
                while k < limit, inSet(ins.a, text[pos + k]) { k += 1 }
            } else {
                while k < limit, text[pos + k] == UInt32(ins.a) { k += 1 }
            }
            return k
        }
    }

    /// A choice point: resume at `pc` from `pos`; for a greedy repeat, also every shorter length
    /// down to `low`. A negative `pc` marks where an entry of an unbounded repeat began (see `run`).
    struct Backtrack {
        var pc: Int
        var pos: Int
        var low: Int

        /// The marker of an entry of the repeat in `slot` at `from` whose run ends at `runEnd`: popped
        /// only once every continuation of that entry has failed.
        static func repeatEntry(slot: Int, from: Int, runEnd: Int) -> Backtrack { Backtrack(pc: -1 - slot, pos: from, low: runEnd) }
    }

    /// Runs the program starting at offset `program` of `code` at `position`; the end of the match,
    /// or nil. Throws past `backtrackLimit` backtracks in the attempt, or past the text's work budget.
    ///
    /// Why failed repeats are remembered: `\s+$` (DeepSeek-V2's pre-tokenizer) tried from every
    /// position of a run of n spaces before a digit runs to the run's end and gives it back one
    /// space at a time: n²/2 steps (80,000 spaces: 12 s, and `tokenizers` takes longer). Nothing
    /// here depends on how a state was reached (no captures, no counters: bounded repeats are
    /// unrolled), so whether the pattern matches from (pc, pos) is a property of the subject alone.
    /// An entry of an unbounded repeat at `from` whose run ends at `runEnd` tries the rest of the
    /// pattern from every position in [from + min, runEnd]; once all of them have failed, an entry
    /// at any p in [from, runEnd] (same run end, positions a subset) fails too, without trying.
    /// Only states known to fail are skipped, so every match is the one found without it. The record
    /// is kept from a subject's 4n + 256th backtrack on (n scalars long; `Scratch.remembering`), so
    /// ordinary text does not pay for it, and a run is given back at most a few times before the
    /// record starts.
    private func run(_ program: Int, at position: Int, _ subject: Subject, scratch: inout Scratch) throws -> Int? {
        let base = scratch.stack.count
        defer { scratch.stack.removeSubrange(base...) }
        let (text, end, code) = (subject.text, subject.end, subject.code + program)
        var pc = 0
        var pos = position
        while true {
            let ins = code[pc]
            var ok = true
            switch ins.op {
            case .scalar:
                if pos < end, text[pos] == UInt32(ins.a) { pos += 1; pc += 1 } else { ok = false }
            case .set:
                if pos < end, subject.inSet(ins.a, text[pos]) { pos += 1; pc += 1 } else { ok = false }
            case .split:
                scratch.stack.append(Backtrack(pc: ins.b, pos: pos, low: -1))
                pc = ins.a
            case .jump:
                pc = ins.a
            case .repeatSet, .repeatScalar:
                let entry: (runEnd: Int, top: Int)?
                if scratch.remembering, ins.slot >= 0 {
                    entry = Self.enterRemembering(ins, at: pos, subject, scratch: &scratch)
                } else {
                    let k = subject.run(of: ins, from: pos, limit: min(ins.c, end - pos))
                    entry = k < ins.b ? nil : (pos + k, pos + k)
                }
                guard let entry else { ok = false; break }
                if entry.top > pos + ins.b { scratch.stack.append(Backtrack(pc: pc + 1, pos: entry.top - 1, low: pos + ins.b)) }
                pos = entry.top
                pc += 1
            case .peek:
                let hit = pos < end && subject.inSet(ins.a, text[pos])
                if hit == (ins.b == 1) { ok = false } else { pc += 1 }
            case .look:
                let hit = try run(ins.a, at: pos, subject, scratch: &scratch) != nil
                if hit == (ins.b == 1) { ok = false } else { pc += 1 }
            case .assert:
                if Self.holds(ins.a, text, pos: pos, start: subject.start, end: end) { pc += 1 } else { ok = false }
            case .match:
                return pos
            }
            if ok { continue }
            guard let choice = try backtrack(&scratch, above: base, attempt: position) else { return nil }
            pc = choice.pc
            pos = choice.pos
        }
    }

    /// The choice point a failed step resumes (nil: none is left above `base`, the attempt fails):
    /// repeat-entry markers on the way are recorded, a greedy repeat's choice is put back one
    /// scalar shorter, and the attempt's and the subject's backtracks are counted against their limits.
    @inline(__always)
    private func backtrack(_ scratch: inout Scratch, above base: Int, attempt position: Int) throws -> Backtrack? {
        guard scratch.stack.count > base else { return nil }
        var choice = scratch.stack.removeLast()
        if choice.pc < 0 {
            guard let resumed = scratch.popRepeatEntries(from: choice, above: base) else { return nil }
            choice = resumed
        }
        scratch.backtracks += 1
        if scratch.backtracks == scratch.rememberAfter { scratch.startRemembering(slots: repeatSlots) }
        if scratch.backtracks > scratch.stopAt {
            throw RegexBacktrackLimit(pattern: pattern, position: position, text: scratch.backtracks > scratch.workLimit ? scratch.workText : nil)
        }
        if choice.low >= 0, choice.pos > choice.low {
            scratch.stack.append(Backtrack(pc: choice.pc, pos: choice.pos - 1, low: choice.low))
        }
        return choice
    }

    /// `enter` with the record of `scratch`, and the entry's marker pushed (out of `run`'s loop: the
    /// path ordinary text never takes stays out of its code).
    @inline(never)
    private static func enterRemembering(_ ins: RegexInstruction, at pos: Int, _ subject: Subject, scratch: inout Scratch) -> (runEnd: Int, top: Int)? {
        let failed = scratch.failedRepeats[ins.slot]
        let entry = enter(ins, at: pos, subject, failed: failed)
        // Failed at once inside a recorded run, or continued below one (top short of runEnd).
        if failed.from >= 0 && failed.from <= pos && pos <= failed.runEnd || entry.map({ $0.top < $0.runEnd }) == true {
            scratch.recordDecisions += 1
        }
        if let entry { scratch.stack.append(.repeatEntry(slot: ins.slot, from: pos, runEnd: entry.runEnd)) }
        return entry
    }

    /// An entry of the unbounded greedy repeat `ins` at `pos` while failed entries are remembered:
    /// where its run of matching scalars ends, and the highest position to try the rest of the
    /// pattern from (`runEnd` unless positions above are known to fail); nil when the entry fails at
    /// once.
    ///
    /// `failed` is an earlier entry of this unbounded repeat all of whose continuations failed
    /// (`from + min ... runEnd`): an entry inside that run fails; an entry just before it whose run
    /// reaches `from` has the same run end, so its run is scanned only up to `from`, and only the
    /// positions below `from + min` remain to be tried (`\s*\s*x`: the inner repeat, entered once
    /// per position the outer one gives back, tries one new position each time, not the whole run).
    @inline(__always)
    private static func enter(_ ins: RegexInstruction, at pos: Int, _ subject: Subject, failed: (from: Int, runEnd: Int)) -> (runEnd: Int, top: Int)? {
        var limit = min(ins.c, subject.end - pos)
        if failed.from >= 0, pos <= failed.runEnd {
            if failed.from <= pos { return nil }
            limit = failed.from - pos
        }
        let k = subject.run(of: ins, from: pos, limit: limit)
        if failed.from >= 0, pos < failed.from, k == failed.from - pos {
            return (failed.runEnd, failed.from + ins.b - 1)
        }
        return k < ins.b ? nil : (pos + k, pos + k)
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
