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
struct AddedTokenMatcher: Sendable {
    private var children: [[UInt32: Int32]] = [[:]]
    private var terminal: [Int32] = [-1]
    private var firstScalars = ScalarSet()
    let tokens: [AddedToken]

    /// `patterns` are the contents to look for (already normalized where the token says so),
    /// in the order `tokenizers` builds its automaton: special tokens first, then the others.
    init(tokens: [AddedToken], patterns: [[UInt32]]) {
        self.tokens = tokens
        for (index, pattern) in patterns.enumerated() where !pattern.isEmpty {
            var node = 0
            for v in pattern {
                if let next = children[node][v] { node = Int(next); continue }
                children.append([:]); terminal.append(-1)
                children[node][v] = Int32(children.count - 1)
                node = children.count - 1
            }
            if terminal[node] < 0 { terminal[node] = Int32(index) }
            firstScalars.insert(pattern[0])
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
        while let (matchStart, matchEnd, index) = nextMatch(text, from: p, end: range.upperBound) {
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
                while newStart > range.lowerBound, UnicodeTables.isWhitespace(text[newStart - 1]) { newStart -= 1 }
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

    /// The leftmost match at or after `from`, the longest there.
    private func nextMatch(_ text: UnsafeBufferPointer<UInt32>, from: Int, end: Int) -> (Int, Int, Int)? {
        var p = from
        while p < end {
            if firstScalars.contains(text[p]) {
                var node = 0, q = p
                var best: (Int, Int)?
                while q < end, let next = children[node][text[q]] {
                    node = Int(next)
                    q += 1
                    if terminal[node] >= 0 { best = (q, Int(terminal[node])) }
                }
                if let (stop, index) = best { return (p, stop, index) }
            }
            p += 1
        }
        return nil
    }
}
