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
    var regexScratch = ScalarRegex.Scratch()

    /// The Split patterns' work over all pieces of `text` is bounded by one budget for the text.
    init(text: UnsafeBufferPointer<UInt32>) {
        self.text = text
        regexScratch.limitWork(scalars: text.count)
    }

    mutating func apply(_ step: PreTokenizerStep, to pieces: [Piece], into output: inout [Piece]) throws {
        for piece in pieces { try apply(step, to: piece, into: &output) }
    }

    /// Throws `RegexBacktrackLimit` when a Split pattern gives up on the piece.
    mutating func apply(_ step: PreTokenizerStep, to original: Piece, into output: inout [Piece]) throws {
        let piece = original.byteLevel ? materializeByteLevel(original) : original
        switch step {
        case let .split(regex, behavior, invert):
            if piece.inScratch {
                // The matcher's scratch is moved out so the closure below does not overlap `self`.
                var matcher = ScalarRegex.Scratch()
                swap(&matcher, &regexScratch)
                defer { swap(&matcher, &regexScratch) }
                try scratch.withUnsafeBufferPointer { try Self.split(piece, of: $0, regex, behavior, invert, matcher: &matcher, into: &output) }
            } else {
                // Pieces of the text itself (all of them, for DeepSeek's tokenizers): no closure, so
                // the matcher's scratch is used in place. Moving it out and back for every piece
                // cost ~4% of a V2 encode (its copy stalled on store forwarding).
                try Self.split(piece, of: text, regex, behavior, invert, matcher: &regexScratch, into: &output)
            }
        case let .digits(individual):
            withScalars(piece) { buffer in
                Self.segments(of: piece, individual ? .isolated : .contiguous, into: &output) { segment in
                    var last = piece.range.lowerBound
                    for i in piece.range where Self.isNumeric(buffer[i]) {
                        if last < i { segment(last..<i, false) }
                        segment(i..<(i + 1), true)
                        last = i + 1
                    }
                    if last < piece.range.upperBound { segment(last..<piece.range.upperBound, false) }
                }
            }
        case let .byteLevel(addPrefixSpace, useRegex):
            var prefixed = piece
            if addPrefixSpace, withScalars(piece, { $0[piece.range.lowerBound] }) != 0x20 { prefixed = prependSpace(piece) }
            guard useRegex else { prefixed.byteLevel = true; output.append(prefixed); return }
            var split: [Piece] = []
            try apply(.split(Self.gpt2, behavior: .isolated, invert: false), to: prefixed, into: &split)
            for var p in split { p.byteLevel = true; output.append(p) }
        }
    }

    /// `Split` of one piece of `buffer`: the pattern's matches and the text between them, as
    /// `behavior` makes pieces of them.
    private static func split(_ piece: Piece, of buffer: UnsafeBufferPointer<UInt32>, _ regex: ScalarRegex, _ behavior: SplitBehavior,
                              _ invert: Bool, matcher: inout ScalarRegex.Scratch, into output: inout [Piece]) throws {
        try segments(of: piece, behavior, into: &output) { segment in
            var previous = piece.range.lowerBound
            try regex.forEachMatch(buffer, start: piece.range.lowerBound, end: piece.range.upperBound, scratch: &matcher) { s, e in
                if previous != s { segment(previous..<s, invert) }
                segment(s..<e, !invert)
                previous = e
            }
            if previous != piece.range.upperBound { segment(previous..<piece.range.upperBound, invert) }
        }
    }

    /// Runs `produce`, which reports (range, is-match) pairs covering `piece` in order, and appends
    /// the non-empty pieces `behavior` makes of them. `Isolated` and `Removed` append as the pairs
    /// come (most steps are these); the merging behaviours need the whole list first.
    private static func segments(of piece: Piece, _ behavior: SplitBehavior, into output: inout [Piece],
                                 _ produce: (_ segment: (Range<Int>, Bool) -> Void) throws -> Void) rethrows {
        func append(_ range: Range<Int>) {
            if !range.isEmpty { output.append(Piece(range: range, inScratch: piece.inScratch, byteLevel: false)) }
        }
        switch behavior {
        case .isolated: try produce { range, _ in append(range) }
        case .removed: try produce { range, isMatch in if !isMatch { append(range) } }
        case .contiguous, .mergedWithPrevious, .mergedWithNext:
            var matches: [(Range<Int>, Bool)] = []
            try produce { matches.append(($0, $1)) }
            for range in combine(matches, behavior) { append(range) }
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

    func withScalars<R>(_ piece: Piece, _ body: (UnsafeBufferPointer<UInt32>) throws -> R) rethrows -> R {
        try piece.inScratch ? scratch.withUnsafeBufferPointer(body) : body(text)
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
