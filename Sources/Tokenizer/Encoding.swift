import Numerics

/// The encode pipeline: added tokens, normalization, pre-tokenizer steps, BPE.
///
/// Parallel without changing a single id: after the first pre-tokenizer step, `tokenizers` hands
/// every piece to the later steps and to the model as a string of its own, so the pieces can be
/// shared out to threads in contiguous blocks and their ids concatenated in order.
extension Tokenizer {
    /// An added token, or a piece still to be pre-tokenized and merged.
    enum Item {
        case token(Int32)
        case piece(Piece)
    }

    /// Ids of a text given as Unicode scalar values, on up to `threads` threads (the ids do not
    /// depend on how many). `name` is what an error names: a Split pattern that gives up on the
    /// text (`RegexBacktrackLimit`) is refused, never passed over.
    public func encode(scalars input: [UInt32], name: String = "text", threads: Int = Parallel.threads) throws -> [Int] {
        do {
            return try ids(of: input, threads: threads)
        } catch let error as RegexBacktrackLimit {
            if let length = error.text {
                throw TokenizerError.regexWorkLimit(file: name, tokenizer: file, pattern: error.pattern, length: length,
                                                    limit: ScalarRegex.backtrackLimit + ScalarRegex.perScalarBudget * length)
            }
            throw TokenizerError.regexBacktrackLimit(file: name, tokenizer: file, pattern: error.pattern, position: error.position,
                                                     limit: ScalarRegex.backtrackLimit)
        }
    }

    private func ids(of input: [UInt32], threads: Int) throws -> [Int] {
        let (text, segments) = addedTokenSegments(input)
        return try text.withUnsafeBufferPointer { buffer -> [Int] in
            var runner = PreTokenizerRunner(text: buffer)
            let items = try firstStep(segments, runner: &runner)
            let laterSteps = Array(definition.preTokenizers.dropFirst())
            let blocks = Self.blocks(items, count: max(1, threads))
            if blocks.count > 1, let ids = encodeInParallel(items, blocks: blocks, steps: laterSteps, text: buffer, workspace: runner.scratch) {
                return ids
            }
            var worker = EncodeWorker(model: definition.model, text: buffer, workspace: runner.scratch)
            return try worker.encode(items[...], steps: laterSteps).map(Int.init)
        }
    }

    /// The later steps and the merges of `blocks` of `items` on one thread each; nil when one thread
    /// must decide. Each block's matcher has the whole text's work budget, so a block that failed,
    /// or blocks whose Split work together exceeds that budget, are left to one thread, which fails
    /// where and how a one-thread run fails: whether a text is refused, and the message, do not depend
    /// on the thread count. (Which pieces a block holds does not change their work: each piece's
    /// matching is a function of the piece alone until a limit is reached.)
    private func encodeInParallel(_ items: [Item], blocks: [Range<Int>], steps: [PreTokenizerStep], text: UnsafeBufferPointer<UInt32>,
                                  workspace: [UInt32]) -> [Int]? {
        var results = [Result<(ids: [Int32], work: Int), any Error>](repeating: .success(([], 0)), count: blocks.count)
        results.withUnsafeMutableBufferPointer { out in
            let shared = SharedPointer(out.baseAddress!)
            Parallel.forEach(blocks.count) { b in
                var worker = EncodeWorker(model: definition.model, text: text, workspace: workspace)
                shared.pointer[b] = Result { (try worker.encode(items[blocks[b]], steps: steps), worker.runner.regexScratch.backtracks) }
            }
        }
        guard let done = try? results.map({ try $0.get() }),
              done.reduce(0, { $0 + $1.work }) <= ScalarRegex.backtrackLimit + ScalarRegex.perScalarBudget * text.count else { return nil }
        return done.flatMap { $0.ids.map(Int.init) }
    }

    /// Text with the added tokens taken out: first those matched on the raw text, then (after the
    /// normalizer) those matched on normalized text, as `AddedVocabulary::extract_and_normalize`.
    func addedTokenSegments(_ input: [UInt32]) -> ([UInt32], [AddedTokenMatcher.Split]) {
        let whole = [AddedTokenMatcher.Split(token: nil, range: 0..<input.count)]
        let raw = rawMatcher.isEmpty || input.isEmpty ? whole : input.withUnsafeBufferPointer { rawMatcher.splits($0, 0..<input.count) }
        var text = input
        var pieces = raw
        if !definition.normalizers.isEmpty {
            text = []
            pieces = raw.map { split in
                let normalized = definition.normalizers.reduce(Array(input[split.range])) { $1.apply($0[...]) }
                let start = text.count
                if split.token == nil { text += normalized } else { text += input[split.range] }
                return AddedTokenMatcher.Split(token: split.token, range: start..<text.count)
            }
        }
        guard !normalizedMatcher.isEmpty else { return (text, pieces) }
        let segments = text.withUnsafeBufferPointer { buffer in
            pieces.flatMap { $0.token != nil ? [$0] : normalizedMatcher.splits(buffer, $0.range) }
        }
        return (text, segments)
    }

    /// The first pre-tokenizer step over every text segment (one thread: it decides the pieces).
    private func firstStep(_ segments: [AddedTokenMatcher.Split], runner: inout PreTokenizerRunner) throws -> [Item] {
        var items: [Item] = []
        for segment in segments {
            if let id = segment.token { items.append(.token(Int32(id))); continue }
            if segment.range.isEmpty { continue }
            let piece = Piece(range: segment.range, inScratch: false, byteLevel: false)
            guard let first = definition.preTokenizers.first else { items.append(.piece(piece)); continue }
            var pieces: [Piece] = []
            try runner.apply(first, to: piece, into: &pieces)
            items += pieces.map(Item.piece)
        }
        return items
    }

    /// Contiguous ranges of `items` with about the same number of scalars each.
    static func blocks(_ items: [Item], count: Int) -> [Range<Int>] {
        let sizes = items.map { item -> Int in
            if case let .piece(p) = item { return p.range.count }
            return 1
        }
        let total = sizes.reduce(0, +)
        guard count > 1, items.count > 1 else { return [0..<items.count] }
        var blocks: [Range<Int>] = []
        var start = 0, accumulated = 0
        for (i, size) in sizes.enumerated() {
            accumulated += size
            if accumulated * count >= total * (blocks.count + 1), blocks.count < count - 1 {
                blocks.append(start..<(i + 1))
                start = i + 1
            }
        }
        blocks.append(start..<items.count)
        return blocks.filter { !$0.isEmpty }
    }
}

/// One thread's share: the later pre-tokenizer steps and the BPE merges of its pieces, with a
/// cache of words already merged (repeated words are most of a text).
struct EncodeWorker {
    let model: BPEModel
    var runner: PreTokenizerRunner
    var workspace = BPEWorkspace()
    var cache: [[UInt32]: [Int32]] = [:]
    /// Buffers reused from word to word.
    var symbols: [Int32] = []
    var bytes: [UInt8] = []
    static let cacheLimit = 1 << 17

    /// A worker on `text` whose runner starts with the first step's `workspace` (the pieces that
    /// step wrote out) and the text's whole work budget.
    init(model: BPEModel, text: UnsafeBufferPointer<UInt32>, workspace: [UInt32]) {
        self.model = model
        runner = PreTokenizerRunner(text: text)
        runner.scratch = workspace
    }

    mutating func encode(_ items: ArraySlice<Tokenizer.Item>, steps: [PreTokenizerStep]) throws -> [Int32] {
        var output: [Int32] = []
        var current: [Piece] = [], next: [Piece] = []
        for item in items {
            switch item {
            case let .token(id): output.append(id)
            case let .piece(piece):
                current.removeAll(keepingCapacity: true)
                current.append(piece)
                for step in steps {
                    next.removeAll(keepingCapacity: true)
                    try runner.apply(step, to: current, into: &next)
                    swap(&current, &next)
                }
                for p in current { merge(p, into: &output) }
            }
        }
        return output
    }

    private mutating func merge(_ piece: Piece, into output: inout [Int32]) {
        let scalars = runner.withScalars(piece) { Array($0[piece.range]) }
        if let hit = cache[scalars] { output += hit; return }
        symbols.removeAll(keepingCapacity: true)
        if piece.byteLevel {
            bytes.removeAll(keepingCapacity: true)
            for v in scalars { UTF8Text.append(v, to: &bytes) }
            for b in bytes where model.byteIDs[Int(b)] >= 0 { symbols.append(model.byteIDs[Int(b)]) }
        } else {
            for v in scalars { if let id = model.id(ofScalar: v) { symbols.append(id) } }
        }
        var ids: [Int32] = []
        if model.ignoreMerges, let whole = model.id(of: word(scalars, byteLevel: piece.byteLevel)) {
            ids = [whole]
        } else {
            model.merge(symbols, workspace: &workspace, into: &ids)
        }
        if cache.count >= Self.cacheLimit { cache.removeAll(keepingCapacity: true) }
        cache[scalars] = ids
        output += ids
    }

    /// The piece as the model's vocabulary spells it (byte-level characters where mapped).
    private func word(_ scalars: [UInt32], byteLevel: Bool) -> String {
        var bytes: [UInt8] = []
        for v in scalars { UTF8Text.append(v, to: &bytes) }
        guard byteLevel else { return String(decoding: bytes, as: UTF8.self) }
        return String(String.UnicodeScalarView(bytes.map { Unicode.Scalar(ByteLevel.scalarOfByte[Int($0)])! }))
    }
}
