#if canImport(Glibc)
import Glibc
#endif

/// The BPE model of a `tokenizer.json` (byte fallback, dropout and unknown token off): a word's
/// symbols are merged pair by pair, always the pair of lowest merge rank, leftmost among equals,
/// exactly the order of `tokenizers`' priority queue.
struct BPEModel: Sendable {
    /// Vocabulary ids are below this (2^24, the largest vocabulary a model config may declare;
    /// DeepSeek-V3's is 129,280), so the id-to-token table stays under 270 MB.
    static let idLimit = 1 << 24
    /// Token (by its bytes) to id, and id to token string, for the model's own vocabulary.
    private let vocab: [TokenKey: Int32]
    let tokenOfID: [String?]
    /// (left id << 32 | right id) -> (rank << 32 | merged id).
    let merges: [UInt64: UInt64]
    /// The id of the single-character token of each byte-level character (-1: not in the vocabulary).
    let byteIDs: [Int32]
    let ignoreMerges: Bool

    init(vocab: [TokenKey: Int32], merges: [(String, String)], ignoreMerges: Bool, file: String) throws {
        self.vocab = vocab
        self.ignoreMerges = ignoreMerges
        var tokens = [String?](repeating: nil, count: (vocab.values.max().map { Int($0) + 1 }) ?? 0)
        for (token, id) in vocab { tokens[Int(id)] = token.token }
        tokenOfID = tokens
        var table: [UInt64: UInt64] = [:]
        table.reserveCapacity(merges.count)
        for (rank, (left, right)) in merges.enumerated() {
            guard let a = vocab[TokenKey(left)], let b = vocab[TokenKey(right)], let merged = vocab[TokenKey(left + right)] else {
                throw TokenizerError.mergeOutOfVocabulary(file: file, merge: "\(left) \(right)")
            }
            let key = UInt64(UInt32(a)) << 32 | UInt64(UInt32(b))
            // A pair listed twice keeps its last rank, as `tokenizers` collecting the list into a map does.
            table[key] = UInt64(rank) << 32 | UInt64(UInt32(merged))
        }
        self.merges = table
        byteIDs = ByteLevel.scalarOfByte.map { v in vocab[TokenKey(String(Character(Unicode.Scalar(v)!)))] ?? -1 }
    }

    /// How many tokens the vocabulary has.
    var vocabularyCount: Int { vocab.count }

    /// The id of a token of the model's own vocabulary (the same bytes).
    func id(of token: String) -> Int32? { vocab[TokenKey(token)] }

    /// The id of a one-scalar token, for words that are not byte-level.
    func id(ofScalar v: UInt32) -> Int32? {
        guard let scalar = Unicode.Scalar(v) else { return nil }
        return id(of: String(Character(scalar)))
    }

    /// Merges `symbols` (initial ids, one per character) and appends the result to `output`.
    func merge(_ symbols: [Int32], workspace: inout BPEWorkspace, into output: inout [Int32]) {
        let n = symbols.count
        if n == 0 { return }
        if n == 1 { output.append(symbols[0]); return }
        workspace.reset(symbols)
        for i in 0..<(n - 1) {
            if let m = merges[Self.key(symbols[i], symbols[i + 1])] { workspace.push(rank: m >> 32, pos: i, newID: Int32(truncatingIfNeeded: m)) }
        }
        while let top = workspace.pop() {
            let pos = top.pos
            guard workspace.alive[pos], workspace.next[pos] >= 0 else { continue }
            let right = workspace.next[pos]
            guard let m = merges[Self.key(workspace.ids[pos], workspace.ids[right])], Int32(truncatingIfNeeded: m) == top.newID else { continue }
            workspace.ids[pos] = top.newID
            workspace.alive[right] = false
            let after = workspace.next[right]
            workspace.next[pos] = after
            if after >= 0 { workspace.prev[after] = pos }
            let before = workspace.prev[pos]
            if before >= 0, let m = merges[Self.key(workspace.ids[before], top.newID)] {
                workspace.push(rank: m >> 32, pos: before, newID: Int32(truncatingIfNeeded: m))
            }
            if after >= 0, let m = merges[Self.key(top.newID, workspace.ids[after])] {
                workspace.push(rank: m >> 32, pos: pos, newID: Int32(truncatingIfNeeded: m))
            }
        }
        for i in 0..<n where workspace.alive[i] { output.append(workspace.ids[i]) }
    }

    @inline(__always)
    static func key(_ a: Int32, _ b: Int32) -> UInt64 { UInt64(UInt32(bitPattern: a)) << 32 | UInt64(UInt32(bitPattern: b)) }
}

/// A vocabulary token compared and hashed by its UTF-8 bytes, as the library's `HashMap<String, u32>`
/// does. A `String` key compares by canonical equivalence and takes "e" + U+0301 for "é" (U+00E9),
/// which the library keeps apart (a merge making the one where the vocabulary has the other is
/// refused there). Loading V3's file took as long with either key.
struct TokenKey: Hashable, Sendable {
    let token: String

    init(_ token: String) { self.token = token }

    static func == (a: TokenKey, b: TokenKey) -> Bool {
        var a = a.token, b = b.token
        return a.withUTF8 { x in b.withUTF8 { y in x.count == y.count && (x.isEmpty || memcmp(x.baseAddress!, y.baseAddress!, x.count) == 0) } }
    }

    func hash(into hasher: inout Hasher) {
        var token = token
        token.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
    }
}

/// The symbols of the word being merged and the queue of candidate merges, reused across words.
struct BPEWorkspace {
    var ids: [Int32] = []
    var prev: [Int] = []
    var next: [Int] = []
    var alive: [Bool] = []
    /// Binary min-heap on (rank, position).
    private var heap: [Candidate] = []

    struct Candidate {
        var rank: UInt64
        var pos: Int
        var newID: Int32
        @inline(__always) func before(_ other: Candidate) -> Bool { rank != other.rank ? rank < other.rank : pos < other.pos }
    }

    mutating func reset(_ symbols: [Int32]) {
        let n = symbols.count
        ids = symbols
        prev.removeAll(keepingCapacity: true); next.removeAll(keepingCapacity: true); alive.removeAll(keepingCapacity: true)
        for i in 0..<n {
            prev.append(i - 1)
            next.append(i + 1 < n ? i + 1 : -1)
            alive.append(true)
        }
        heap.removeAll(keepingCapacity: true)
    }

    mutating func push(rank: UInt64, pos: Int, newID: Int32) {
        heap.append(Candidate(rank: rank, pos: pos, newID: newID))
        var child = heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard heap[child].before(heap[parent]) else { break }
            heap.swapAt(child, parent)
            child = parent
        }
    }

    mutating func pop() -> Candidate? {
        guard let last = heap.popLast() else { return nil }
        guard !heap.isEmpty else { return last }
        let top = heap[0]
        heap[0] = last
        var parent = 0
        while true {
            let left = 2 * parent + 1, right = left + 1
            var smallest = parent
            if left < heap.count, heap[left].before(heap[smallest]) { smallest = left }
            if right < heap.count, heap[right].before(heap[smallest]) { smallest = right }
            if smallest == parent { break }
            heap.swapAt(parent, smallest)
            parent = smallest
        }
        return top
    }
}
