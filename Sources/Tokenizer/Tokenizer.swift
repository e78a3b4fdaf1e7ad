import Foundation
import Numerics
import SafeTensors

/// A Hugging Face `tokenizer.json` (the BPE family DeepSeek uses) that encodes and decodes as the
/// `tokenizers` library does: `encode(text, add_special_tokens=False).ids` and
/// `decode(ids, skip_special_tokens=False)`.
public final class Tokenizer: Sendable {
    /// The `tokenizer.json` this was read from; errors name it.
    public let file: String
    /// `tokenizer_config.json` beside it: whether the model expects a BOS token, and which.
    public let settings: TokenizerSettings
    let definition: TokenizerDefinition
    let rawMatcher: AddedTokenMatcher
    let normalizedMatcher: AddedTokenMatcher
    let addedByID: [Int: AddedToken]
    /// What a user should know of the file that did not stop it loading, one line each (callers
    /// print them as notes).
    public var notes: [String] { definition.notes }

    /// Reads `path`: a `tokenizer.json`, or a directory holding one (and maybe `tokenizer_config.json`).
    public static func load(path: String) throws -> Tokenizer {
        var isDirectory: ObjCBool = false
        let exists = FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory)
        let file = exists && isDirectory.boolValue ? URL(fileURLWithPath: path).appendingPathComponent("tokenizer.json").path : path
        let data: Data
        do { data = try FilePath.readRegularFile(file) } catch {
            throw TokenizerError.cannotRead(file: file, reason: exists ? TokenizerError.reading(error) : "no such file or directory")
        }
        let root: JSONValue
        do { root = try JSONParser.parse(data) } catch { throw TokenizerError.invalidJSON(file: file, reason: "\(error)") }
        let definition = try TokenizerDefinition(json: root, file: file)
        let configFile = URL(fileURLWithPath: file).deletingLastPathComponent().appendingPathComponent("tokenizer_config.json").path
        let settings = try TokenizerSettings.load(configFile)
        return Tokenizer(file: file, definition: definition, settings: settings)
    }

    init(file: String, definition: TokenizerDefinition, settings: TokenizerSettings) {
        self.file = file
        self.definition = definition
        self.settings = settings
        // `tokenizers` matches special tokens first, then the others, each group in file order.
        let ordered = definition.addedTokens.filter(\.special) + definition.addedTokens.filter { !$0.special }
        let raw = ordered.filter { !$0.normalized }
        let normalized = ordered.filter(\.normalized)
        rawMatcher = AddedTokenMatcher(tokens: raw, patterns: raw.map { UTF8Text.scalars(of: $0.content) })
        normalizedMatcher = AddedTokenMatcher(tokens: normalized, patterns: normalized.map { token in
            definition.normalizers.reduce(UTF8Text.scalars(of: token.content)) { $1.apply($0[...]) }
        })
        // `AddedTokenIDs` refuses a file where two added tokens would share an id.
        addedByID = Dictionary(definition.addedTokens.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
    }

    /// The id of BOS as `tokenizer_config.json` names it, when the vocabulary holds it.
    public var bosID: Int? { settings.bosToken.flatMap(id(of:)) }

    /// The id of a token string (added tokens first, as `token_to_id`).
    public func id(of token: String) -> Int? {
        if let added = definition.addedTokens.first(where: { $0.content == token }) { return added.id }
        return definition.model.id(of: token).map(Int.init)
    }

    /// Ids of `bytes`, which must be UTF-8; `name` (the text file) is what an error names.
    public func encode(utf8 bytes: [UInt8], name: String, threads: Int = Parallel.threads) throws -> [Int] {
        let decoded = bytes.withUnsafeBufferPointer { UTF8Text.decode($0) }
        switch decoded {
        case let .success(scalars): return try encode(scalars: scalars, name: name, threads: threads)
        case let .failure(bad): throw TokenizerError.invalidUTF8(file: name, offset: bad.offset)
        }
    }

    /// Ids of a Swift string.
    public func encode(_ text: String, threads: Int = Parallel.threads) throws -> [Int] {
        try encode(scalars: UTF8Text.scalars(of: text), threads: threads)
    }

    /// The text of `ids`, as the decoder writes it; an id outside the vocabulary is refused, naming
    /// `source` (the file the ids came from; the tokenizer file when nil).
    public func decode(_ ids: [Int], source: String? = nil) throws -> String {
        var tokens: [String] = []
        tokens.reserveCapacity(ids.count)
        for id in ids {
            if let added = addedByID[id] { tokens.append(added.content); continue }
            guard id >= 0, id < definition.model.tokenOfID.count, let token = definition.model.tokenOfID[id] else {
                throw TokenizerError.idOutsideVocabulary(file: source ?? file, id: id, vocabularySize: definition.model.tokenOfID.count)
            }
            tokens.append(token)
        }
        guard definition.byteLevelDecoder else { return tokens.joined(separator: " ") }
        return String(decoding: ByteLevel.decode(tokens), as: UTF8.self)
    }
}

/// `tokenizer_config.json`'s settings for the BOS/EOS tokens (absent file: none).
public struct TokenizerSettings: Sendable, Equatable {
    /// `add_bos_token`: the model was trained with BOS at the start of every sequence.
    public var addBOSToken: Bool
    /// The contents of `bos_token` and `eos_token` (a string or an object with `content`).
    public var bosToken: String?
    public var eosToken: String?

    static func load(_ path: String) throws -> TokenizerSettings {
        guard FileManager.default.fileExists(atPath: path) else { return TokenizerSettings(addBOSToken: false) }
        let root: JSONValue
        do { root = try JSONParser.parse(try FilePath.readRegularFile(path)) } catch {
            throw TokenizerError.invalidJSON(file: path, reason: "\(error)")
        }
        func token(_ key: String) -> String? { root[key]?.stringValue ?? root[key]?["content"]?.stringValue }
        return TokenizerSettings(addBOSToken: try TokenizerDefinition.flag(root, "add_bos_token", default: false, file: path),
                                 bosToken: token("bos_token"), eosToken: token("eos_token"))
    }
}
