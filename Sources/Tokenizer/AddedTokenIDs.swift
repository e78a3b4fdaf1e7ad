import SafeTensors

/// The `added_tokens` of a `tokenizer.json` as the `tokenizers` library holds them once it has
/// loaded the file, for encoding and for `export --gguf` alike.
///
/// The library does not take an added token's `id` from the file: it adds the tokens in file order
/// and gives each the id of the same content added before, else the model vocabulary's id of that
/// content, else the next new id — counted from the vocabulary's size (its entry count, not its
/// largest id + 1), one per new token, whatever vocabulary ids the others have (measured with 0.23.3:
/// vocabulary {a: 0, b: 5} and added tokens [b, g] give b 5 and g 2). A declared id that differs is
/// only warned about. Every file `save_pretrained` writes declares exactly these ids (DeepSeek-V3's:
/// 128000 entries, then 815 added tokens 128000-128814); a hand-edited file may not, and then the
/// library's ids are the ones every Hugging Face user gets, so they are used here, with a note. When
/// the rule gives an id that another token already has (a vocabulary with gaps, or two vocabulary
/// tokens of one id), two tokens share one id in the library (measured: the added token's text
/// encodes to the other token's id, or is not found at all), so the file is refused.
///
/// A content listed twice keeps the place of its first entry and the flags of its last (the
/// library's id-to-token map keeps the last); an empty content is dropped, as the library drops it.
public struct AddedVocabulary: Sendable {
    /// Each content once, with the library's id.
    public let tokens: [AddedToken]
    /// One line per entry whose declared id the library does not use, naming the file.
    public let notes: [String]

    /// `json` is the file's `added_tokens`; `vocabularyID` and `vocabularyToken` look the model's
    /// vocabulary up both ways and `vocabularyCount` is its entry count.
    public init(json: JSONValue, vocabularyID: (String) -> Int?, vocabularyToken: (Int) -> String?, vocabularyCount: Int, file: String) throws {
        let declared = try Self.entries(json, file: file)
        let ids: [Int?]
        do {
            ids = try AddedTokenIDs.assign(contents: declared.map(\.content), vocabularyID: vocabularyID, vocabularyToken: vocabularyToken,
                                           vocabularyCount: vocabularyCount)
        } catch {
            throw TokenizerError.addedTokenIDTaken(file: file, content: error.content, id: error.id, other: error.other)
        }
        var tokens: [AddedToken] = [], notes: [String] = [], said: Set<String> = []
        var place: [String: Int] = [:]
        for (entry, id) in zip(declared, ids) {
            guard let id else { continue }
            let note = "\(file): added token \(CompactJSON.quoted(entry.content)) declares id \(entry.id); the tokenizers library gives it \(id), which is used"
            // A content listed twice with the same declaration is said once.
            if id != entry.id, said.insert(note).inserted { notes.append(note) }
            let token = entry.with(id: id)
            if let i = place[entry.content] {
                // A content listed as special and as not special is matched in two orders at once there.
                guard tokens[i].special == entry.special else { throw TokenizerError.addedTokenListedTwice(file: file, content: entry.content) }
                tokens[i] = token
            } else {
                place[entry.content] = tokens.count
                tokens.append(token)
            }
        }
        (self.tokens, self.notes) = (tokens, notes)
    }

    /// The entries as the file lists them, read as strictly as the library reads them: an id that is
    /// not a 32-bit unsigned number, or a missing flag, refuses the file (the declared id itself is
    /// only compared with the library's).
    private static func entries(_ json: JSONValue, file: String) throws -> [AddedToken] {
        guard case let .array(items) = json else { throw TokenizerError.missingField(file: file, field: "added_tokens") }
        return try items.map { item in
            guard let id = item["id"]?.uint64, let content = item["content"]?.stringValue else {
                throw TokenizerError.missingField(file: file, field: "added_tokens[].id/content")
            }
            let field = "added_tokens[\(CompactJSON.quoted(content))]"
            guard id <= UInt64(UInt32.max) else { throw TokenizerError.missingField(file: file, field: "\(field).id (a 32-bit id, as the library reads it)") }
            func flag(_ key: String) throws -> Bool {
                guard case let .bool(value)? = item[key] else { throw TokenizerError.missingField(file: file, field: "\(field).\(key)") }
                return value
            }
            return AddedToken(id: Int(id), content: content, special: try flag("special"), lstrip: try flag("lstrip"),
                              rstrip: try flag("rstrip"), singleWord: try flag("single_word"), normalized: try flag("normalized"))
        }
    }
}

/// The id rule of `AddedVocabulary`, on the contents alone.
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

    /// The id of each entry of `contents` (file order); nil for an empty content.
    public static func assign(contents: [String], vocabularyID: (String) -> Int?, vocabularyToken: (Int) -> String?,
                              vocabularyCount: Int) throws(Collision) -> [Int?] {
        var idOfContent: [String: Int] = [:]
        var contentOfID: [Int: String] = [:]
        var next = vocabularyCount
        var result: [Int?] = []
        result.reserveCapacity(contents.count)
        for content in contents {
            if content.isEmpty { result.append(nil); continue }
            if let id = idOfContent[content] { result.append(id); continue }
            let id: Int
            if let known = vocabularyID(content) {
                id = known
            } else {
                id = next
                next += 1
                if let other = vocabularyToken(id) { throw Collision(content: content, id: id, other: other) }
            }
            // Two added contents on one id: new ids never meet, but two vocabulary tokens of one id
            // (a malformed vocabulary) can both be added tokens.
            if let other = contentOfID[id] { throw Collision(content: content, id: id, other: other) }
            contentOfID[id] = content
            idOfContent[content] = id
            result.append(id)
        }
        return result
    }
}
