/// One instruction of the backtracking matcher. Sets are offsets into one shared bitset array.
struct RegexInstruction: Sendable {
    enum Op: UInt8, Sendable {
        case scalar      // a: scalar
        case set         // a: bitset offset
        case split       // try a, then b
        case jump        // a
        case repeatSet   // a: bitset offset, b: min, c: max (greedy, backtracks one scalar at a time)
        case repeatScalar // a: scalar, b: min, c: max
        case peek        // a: bitset offset, b: 1 when negated (a one-scalar lookahead)
        case look        // a: sub-program (in ScalarRegex.code: the offset where it starts), b: 1 when negated
        case assert      // a: RegexAssertion index
        case match
    }
    var op: Op
    var a: Int = 0
    var b: Int = 0
    var c: Int = 0
    /// For a repeat without a maximum: its slot in `ScalarRegex.Scratch.failedRepeats` (else -1).
    var slot: Int = -1
}

/// Compiles a parsed pattern into instruction lists: program 0 is the pattern, the others are
/// lookahead bodies. Bounded repeats are unrolled (`x{1,3}` = `x(?:x(?:x)?)?`), as backtracking
/// engines order their choices.
struct RegexCompiler {
    private(set) var programs: [[RegexInstruction]] = [[]]
    private let setOffsets: [Int]
    static let maximumInstructions = 200_000

    init(setOffsets: [Int]) { self.setOffsets = setOffsets }

    mutating func compile(_ node: RegexNode) throws {
        var main: [RegexInstruction] = []
        try emit(node, into: &main)
        main.append(RegexInstruction(op: .match))
        programs[0] = main
    }

    private mutating func emit(_ node: RegexNode, into code: inout [RegexInstruction]) throws {
        guard code.count < Self.maximumInstructions else { throw UnsupportedRegex(construct: "pattern too large once repeats are expanded") }
        switch node {
        case let .scalar(v): code.append(RegexInstruction(op: .scalar, a: Int(v)))
        case let .set(index): code.append(RegexInstruction(op: .set, a: setOffsets[index]))
        case let .sequence(items): for item in items { try emit(item, into: &code) }
        case let .alternation(branches): try emitAlternation(branches, into: &code)
        case let .quantified(inner, min, max, greedy): try emitRepeat(inner, min: min, max: max, greedy: greedy, into: &code)
        case let .lookahead(inner, negated): try emitLookahead(inner, negated: negated, into: &code)
        case let .assertion(kind): code.append(RegexInstruction(op: .assert, a: Self.assertionCode(kind)))
        }
    }

    static func assertionCode(_ kind: RegexAssertion) -> Int {
        switch kind {
        case .lineStart: return 0
        case .lineEnd: return 1
        case .textStart: return 2
        case .textEnd: return 3
        case .textEndBeforeFinalNewline: return 4
        }
    }

    private mutating func emitAlternation(_ branches: [RegexNode], into code: inout [RegexInstruction]) throws {
        var jumpsToEnd: [Int] = []
        for (i, branch) in branches.enumerated() {
            if i < branches.count - 1 {
                let split = code.count
                code.append(RegexInstruction(op: .split, a: split + 1))
                try emit(branch, into: &code)
                jumpsToEnd.append(code.count)
                code.append(RegexInstruction(op: .jump))
                code[split].b = code.count
            } else {
                try emit(branch, into: &code)
            }
        }
        for j in jumpsToEnd { code[j].a = code.count }
    }

    private mutating func emitRepeat(_ inner: RegexNode, min: Int, max: Int?, greedy: Bool, into code: inout [RegexInstruction]) throws {
        // A greedy repeat of one scalar or one set runs as a single loop instruction.
        if greedy {
            switch inner {
            case let .scalar(v): code.append(RegexInstruction(op: .repeatScalar, a: Int(v), b: min, c: max ?? Int.max)); return
            case let .set(index): code.append(RegexInstruction(op: .repeatSet, a: setOffsets[index], b: min, c: max ?? Int.max)); return
            default: break
            }
        }
        for _ in 0..<min { try emit(inner, into: &code) }
        if let max {
            var exits: [Int] = []
            for _ in 0..<(max - min) {
                exits.append(code.count)
                code.append(RegexInstruction(op: .split))
                try emit(inner, into: &code)
            }
            for e in exits { code[e] = choice(preferInner: greedy, inner: e + 1, exit: code.count) }
        } else {
            let loop = code.count
            code.append(RegexInstruction(op: .split))
            try emit(inner, into: &code)
            code.append(RegexInstruction(op: .jump, a: loop))
            code[loop] = choice(preferInner: greedy, inner: loop + 1, exit: code.count)
        }
    }

    private func choice(preferInner: Bool, inner: Int, exit: Int) -> RegexInstruction {
        preferInner ? RegexInstruction(op: .split, a: inner, b: exit) : RegexInstruction(op: .split, a: exit, b: inner)
    }

    private mutating func emitLookahead(_ inner: RegexNode, negated: Bool, into code: inout [RegexInstruction]) throws {
        if case let .set(index) = inner {
            code.append(RegexInstruction(op: .peek, a: setOffsets[index], b: negated ? 1 : 0))
            return
        }
        var body: [RegexInstruction] = []
        try emit(inner, into: &body)
        body.append(RegexInstruction(op: .match))
        programs.append(body)
        code.append(RegexInstruction(op: .look, a: programs.count - 1, b: negated ? 1 : 0))
    }
}
