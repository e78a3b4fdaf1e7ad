import SafeTensors

/// The ids the `tokenizers` library gives the entries of `added_tokens` when it loads a
/// `tokenizer.json`, which are not always the ids the file declares.
///
/// `tokenizers` does not take an added token's `id` from the file: it adds the tokens in file order
/// and gives each the id of the same content added before, else the model vocabulary's id of that
/// content, else a new one — the vocabulary's size (its entry count, not its largest id + 1) for the
/// first new token, and from then on one past the largest added id when that is at or beyond the
/// size. A declared id that differs is only warned about. Every file `save_pretrained` writes
/// declares exactly these ids (DeepSeek-V3's: 128000 entries, then 815 added tokens 128000-128814);
/// a hand-edited file may not, and then the library's ids are the ones every Hugging Face user gets,
/// so they are the ones used here, with a note. When a new id is already some other token's (a
/// vocabulary with gaps, or added ids declared below the size), two tokens share one id in the
/// library (measured with 0.23.3: the text of the added token encodes to the other token's id, or,
/// when the other is an added token too, is not found at all), so the file is refused.
public enum AddedTokenIDs {
    /// Two different tokens that the library's rule gives one id.
    public struct Collision: Error, Equatable, Sendable {
        public let content: String
        public let id: Int
        public let other: String

        /// What is wrong, for an error line that names the file first.
        public var reason: String {
            "added token \(CompactJSON.quoted(content)) gets id \(id) as the tokenizers library assigns added-token ids, "
                + "and \(CompactJSON.quoted(other)) already has that id: the two would share one id"
        }
    }

    /// The id of each entry of `contents` (file order); nil for an empty content, which the library
    /// ignores. `vocabularyID` and `vocabularyToken` look up the model's vocabulary both ways;
    /// `vocabularyCount` is its entry count.
    public static func assign(contents: [String], vocabularyID: (String) -> Int?, vocabularyToken: (Int) -> String?,
                              vocabularyCount: Int) throws(Collision) -> [Int?] {
        var idOfContent: [String: Int] = [:]
        var contentOfNewID: [Int: String] = [:]
        var largest: Int?
        var result: [Int?] = []
        result.reserveCapacity(contents.count)
        for content in contents {
            if content.isEmpty { result.append(nil); continue }
            if let id = idOfContent[content] { result.append(id); continue }
            let id: Int
            if let known = vocabularyID(content) {
                id = known
                if let other = contentOfNewID[id] { throw Collision(content: content, id: id, other: other) }
            } else {
                if let max = largest, max >= vocabularyCount || vocabularyCount == 0 { id = max + 1 } else { id = vocabularyCount }
                if let other = vocabularyToken(id) ?? contentOfNewID[id] { throw Collision(content: content, id: id, other: other) }
                contentOfNewID[id] = content
            }
            idOfContent[content] = id
            largest = Swift.max(largest ?? id, id)
            result.append(id)
        }
        return result
    }
}
