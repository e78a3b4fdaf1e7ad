/// `Split`'s `behavior`: what happens to the pieces a pattern matched.
enum SplitBehavior: String, Sendable {
    case removed = "Removed", isolated = "Isolated", mergedWithPrevious = "MergedWithPrevious"
    case mergedWithNext = "MergedWithNext", contiguous = "Contiguous"
}

/// One step of the pre-tokenizer sequence, decoded from the file once.
enum PreTokenizerStep: Sendable {
    case split(ScalarRegex, behavior: SplitBehavior, invert: Bool)
    case digits(individual: Bool)
    case byteLevel(addPrefixSpace: Bool, useRegex: Bool)
}

/// A piece of text between pre-tokenizer steps: a range of the text, or of the workspace's own
/// buffer when a step had to write new scalars (a prefix space, byte-level characters that a
/// later step splits). `byteLevel` marks a piece whose byte-level mapping is still to be done.
struct Piece {
    var range: Range<Int>
    var inScratch: Bool
    var byteLevel: Bool
}

/// Applies pre-tokenizer steps to pieces, as `PreTokenizedString::split` does: each step sees
/// every piece as a whole string of its own, and empty pieces are dropped.
struct PreTokenizerRunner {
    let text: UnsafeBufferPointer<UInt32>
    var scratch: [UInt32] = []
    var stack: [ScalarRegex.Backtrack] = []

    init(text: UnsafeBufferPointer<UInt32>) { self.text = text }

    mutating func apply(_ step: PreTokenizerStep, to pieces: [Piece], into output: inout [Piece]) {
        for piece in pieces { apply(step, to: piece, into: &output) }
    }

    mutating func apply(_ step: PreTokenizerStep, to original: Piece, into output: inout [Piece]) {
        let piece = original.byteLevel ? materializeByteLevel(original) : original
        switch step {
        case let .split(regex, behavior, invert):
            var matches: [(Range<Int>, Bool)] = []
            // The backtracking stack is moved out so the closure below does not overlap `self`.
            var regexStack: [ScalarRegex.Backtrack] = []
            swap(&regexStack, &stack)
            defer { swap(&regexStack, &stack) }
            withScalars(piece) { buffer in
                var previous = piece.range.lowerBound
                regex.forEachMatch(buffer, start: piece.range.lowerBound, end: piece.range.upperBound, stack: &regexStack) { s, e in
                    if previous != s { matches.append((previous..<s, invert)) }
                    matches.append((s..<e, !invert))
                    previous = e
                }
                if previous != piece.range.upperBound { matches.append((previous..<piece.range.upperBound, invert)) }
            }
            emit(Self.combine(matches, behavior), from: piece, into: &output)
        case let .digits(individual):
            var matches: [(Range<Int>, Bool)] = []
            withScalars(piece) { buffer in
                var last = piece.range.lowerBound
                for i in piece.range where Self.isNumeric(buffer[i]) {
                    if last < i { matches.append((last..<i, false)) }
                    matches.append((i..<(i + 1), true))
                    last = i + 1
                }
                if last < piece.range.upperBound { matches.append((last..<piece.range.upperBound, false)) }
            }
            emit(Self.combine(matches, individual ? .isolated : .contiguous), from: piece, into: &output)
        case let .byteLevel(addPrefixSpace, useRegex):
            var prefixed = piece
            if addPrefixSpace, withScalars(piece, { $0[piece.range.lowerBound] }) != 0x20 { prefixed = prependSpace(piece) }
            guard useRegex else { prefixed.byteLevel = true; output.append(prefixed); return }
            var split: [Piece] = []
            apply(.split(Self.gpt2, behavior: .isolated, invert: false), to: prefixed, into: &split)
            for var p in split { p.byteLevel = true; output.append(p) }
        }
    }

    /// `ByteLevel`'s own pattern (`use_regex`), GPT-2's.
    static let gpt2 = try! ScalarRegex("'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+")

    /// Rust's `char::is_numeric`: general categories Nd, Nl, No.
    static func isNumeric(_ v: UInt32) -> Bool {
        let c = UnicodeTables.categories[Int(v)]
        return c == UnicodeTables.Category.decimalNumber.rawValue || c == UnicodeTables.Category.letterNumber.rawValue
            || c == UnicodeTables.Category.otherNumber.rawValue
    }

    /// `NormalizedString::split`'s behaviours over (range, is-match) pairs covering a piece.
    static func combine(_ matches: [(Range<Int>, Bool)], _ behavior: SplitBehavior) -> [Range<Int>] {
        switch behavior {
        case .isolated: return matches.map(\.0)
        case .removed: return matches.filter { !$0.1 }.map(\.0)
        case .contiguous, .mergedWithPrevious:
            var result: [Range<Int>] = []
            var previousMatch = false
            for (range, isMatch) in matches {
                let merge = behavior == .contiguous ? isMatch == previousMatch : isMatch && !previousMatch
                if merge, let last = result.last { result[result.count - 1] = last.lowerBound..<range.upperBound } else { result.append(range) }
                previousMatch = isMatch
            }
            return result
        case .mergedWithNext:
            var result: [Range<Int>] = []
            var previousMatch = false
            for (range, isMatch) in matches.reversed() {
                if isMatch && !previousMatch, let last = result.last { result[result.count - 1] = range.lowerBound..<last.upperBound } else { result.append(range) }
                previousMatch = isMatch
            }
            return result.reversed()
        }
    }

    private func emit(_ ranges: [Range<Int>], from piece: Piece, into output: inout [Piece]) {
        for range in ranges where !range.isEmpty { output.append(Piece(range: range, inScratch: piece.inScratch, byteLevel: false)) }
    }

    func withScalars<R>(_ piece: Piece, _ body: (UnsafeBufferPointer<UInt32>) -> R) -> R {
        piece.inScratch ? scratch.withUnsafeBufferPointer(body) : body(text)
    }

    private mutating func prependSpace(_ piece: Piece) -> Piece {
        let start = scratch.count
        let copied = withScalars(piece) { Array($0[piece.range]) }
        scratch.append(0x20)
        scratch += copied
        return Piece(range: start..<scratch.count, inScratch: true, byteLevel: piece.byteLevel)
    }

    /// Writes a byte-level piece's characters out so a later step can split them.
    private mutating func materializeByteLevel(_ piece: Piece) -> Piece {
        var bytes: [UInt8] = []
        withScalars(piece) { buffer in for i in piece.range { UTF8Text.append(buffer[i], to: &bytes) } }
        let start = scratch.count
        for b in bytes { scratch.append(ByteLevel.scalarOfByte[Int(b)]) }
        return Piece(range: start..<scratch.count, inScratch: true, byteLevel: false)
    }
}
