/// One entry of `added_tokens`.
public struct AddedToken: Sendable, Equatable {
    /// The token's id and text.
    public let id: Int
    public let content: String
    /// Skipped by `decode(skip_special_tokens=True)` (kept here); matched in text like the others.
    public let special: Bool
    /// Whether the match takes the whitespace before / after it, and must stand alone as a word.
    public let lstrip: Bool
    public let rstrip: Bool
    public let singleWord: Bool
    /// Matched in the normalized text (true) or the raw text (false).
    public let normalized: Bool

    /// The same token under another id.
    func with(id: Int) -> AddedToken {
        AddedToken(id: id, content: content, special: special, lstrip: lstrip, rstrip: rstrip, singleWord: singleWord, normalized: normalized)
    }
}

/// Where added tokens are in a text, found as `tokenizers`' `AddedVocabulary` finds them: a
/// leftmost-longest scan over the token contents (its Aho-Corasick automaton), then the
/// `single_word`, `lstrip` and `rstrip` rules applied to each match in order.
///
/// The longest content starting at each position is found first, in one pass of an Aho-Corasick
/// automaton of the reversed contents over the text from its end; the matches are then taken left to
/// right. Each scalar is read once or twice, whatever the contents: walking the trie again from every
/// position took O(text × content), 17 s for a token of 20,000 scalars in 100,000 of text.
struct AddedTokenMatcher: Sendable {
    /// The trie of the reversed contents: node 0 the root, each node's children by scalar.
    private var children: [[UInt32: Int32]] = [[:]]
    /// The content that ends at each node (its first index when listed twice), or -1.
    private var terminal: [Int32] = [-1]
    /// Each node's depth, its failure link (the node of its longest proper suffix in the trie), and
    /// the node where the longest content ending at it or at a suffix ends (-1: none).
    private var depth: [Int32] = [0]
    private var failure: [Int32] = [0]
    private var outputNode: [Int32] = [-1]
    /// The scalars contents end with (the reversed contents start with).
    private var lastScalars = ScalarSet()
    let tokens: [AddedToken]

    /// `patterns` are the contents to look for (already normalized where the token says so),
    /// in the order `tokenizers` builds its automaton: special tokens first, then the others.
    init(tokens: [AddedToken], patterns: [[UInt32]]) {
        self.tokens = tokens
        for (index, pattern) in patterns.enumerated() where !pattern.isEmpty {
            var node = 0
            for v in pattern.reversed() {
                if let next = children[node][v] { node = Int(next); continue }
                children.append([:]); terminal.append(-1); depth.append(depth[node] + 1)
                children[node][v] = Int32(children.count - 1)
                node = children.count - 1
            }
            if terminal[node] < 0 { terminal[node] = Int32(index) }
            lastScalars.insert(pattern[pattern.count - 1])
        }
        linkFailures()
    }

    /// Failure links and longest outputs, breadth first (a node's links come from shallower ones).
    private mutating func linkFailures() {
        failure = [Int32](repeating: 0, count: children.count)
        outputNode = [Int32](repeating: -1, count: children.count)
        var queue = [0], head = 0
        while head < queue.count {
            let node = queue[head]
            head += 1
            outputNode[node] = terminal[node] >= 0 ? Int32(node) : (node == 0 ? -1 : outputNode[Int(failure[node])])
            for (v, child) in children[node] {
                if node != 0 {
                    var f = Int(failure[node])
                    while children[f][v] == nil, f != 0 { f = Int(failure[f]) }
                    failure[Int(child)] = children[f][v] ?? 0
                }
                queue.append(Int(child))
            }
        }
    }

    /// The automaton's next node from `node` on scalar `v`.
    @inline(__always) private func step(_ node: Int, _ v: UInt32) -> Int {
        var n = node
        while true {
            if let next = children[n][v] { return Int(next) }
            if n == 0 { return 0 }
            n = Int(failure[n])
        }
    }

    var isEmpty: Bool { children[0].isEmpty }

    /// A piece of the text: an added token (`token` set) or text to pre-tokenize.
    struct Split: Equatable {
        var token: Int?
        var range: Range<Int>
    }

    /// `find_matches` over `text[range]`: the pieces cover the range in order.
    func splits(_ text: UnsafeBufferPointer<UInt32>, _ range: Range<Int>) -> [Split] {
        var result: [Split] = []
        var startOffset = range.lowerBound
        var p = range.lowerBound
        // The leftmost match at or after p, the longest there, then on from its end.
        for (matchStart, matchEnd, index) in longestStarts(text, range) where matchStart >= p {
            p = matchEnd
            let token = tokens[index]
            var start = matchStart, stop = matchEnd
            if token.singleWord {
                let startSpace = start == range.lowerBound || !UnicodeTables.isWordCharacter(text[start - 1])
                let stopSpace = stop == range.upperBound || !UnicodeTables.isWordCharacter(text[stop])
                if !startSpace || !stopSpace { continue }
            }
            if token.lstrip {
                var newStart = start
                // Not past the previous match's end, where the result stops anyway: scanning on to
                // the range's start made a text of whitespace tokens quadratic (400,000 tabs: 21 s).
                while newStart > startOffset, UnicodeTables.isWhitespace(text[newStart - 1]) { newStart -= 1 }
                start = max(newStart, startOffset)
            }
            if token.rstrip {
                while stop < range.upperBound, UnicodeTables.isWhitespace(text[stop]) { stop += 1 }
            }
            if startOffset < start { result.append(Split(token: nil, range: startOffset..<start)) }
            result.append(Split(token: token.id, range: start..<stop))
            startOffset = stop
        }
        if startOffset != range.upperBound { result.append(Split(token: nil, range: startOffset..<range.upperBound)) }
        return result
    }

    /// Each position of `text[range]` where some content starts, with the longest content there (the
    /// first listed among equal ones), in increasing position. After the automaton reads the text
    /// back to position i, its node is the longest reversed content prefix read, so the longest
    /// output there is the longest content starting at i.
    private func longestStarts(_ text: UnsafeBufferPointer<UInt32>, _ range: Range<Int>) -> [(start: Int, stop: Int, index: Int)] {
        var found: [(start: Int, stop: Int, index: Int)] = []
        var i = range.upperBound, node = 0
        while i > range.lowerBound {
            // At the root, skip to the next scalar some content ends with.
            if node == 0 {
                while i > range.lowerBound, !lastScalars.contains(text[i - 1]) { i -= 1 }
                if i == range.lowerBound { break }
            }
            i -= 1
            node = step(node, text[i])
            let output = Int(outputNode[node])
            if output >= 0 { found.append((i, i + Int(depth[output]), Int(terminal[output]))) }
        }
        return found.reversed()
    }
}
