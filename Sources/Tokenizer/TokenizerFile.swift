import Foundation
import SafeTensors

/// What a `tokenizer.json` declares, decoded and checked once: every string setting becomes an
/// enum case here, and anything this implementation does not do is refused by name.
struct TokenizerDefinition {
    var normalizers: [NormalizerStep]
    var preTokenizers: [PreTokenizerStep]
    var model: BPEModel
    /// Each content once, with the id the `tokenizers` library gives it (`AddedTokenIDs`).
    var addedTokens: [AddedToken]
    var byteLevelDecoder: Bool
    /// What a user should know of the file that does not stop it loading (an added token's declared
    /// id that the library does not use).
    var notes: [String] = []

    init(json root: JSONValue, file: String) throws {
        for field in ["truncation", "padding"] where root[field] != nil && root[field] != .null {
            throw TokenizerError.unsupportedOption(file: file, option: field)
        }
        normalizers = try Self.normalizers(root["normalizer"] ?? .null, file: file)
        preTokenizers = try Self.preTokenizers(root["pre_tokenizer"] ?? .null, file: file)
        // Each ByteLevel step re-encodes the previous one's characters, and a space or a non-ASCII
        // character comes out twice as long: k steps grow the text 2^k times (30 asked for 4.4 GB of
        // 100 spaces, found by an audit). No tokenizer has two.
        if preTokenizers.filter({ if case .byteLevel = $0 { return true } else { return false } }).count > 1 {
            throw TokenizerError.unsupportedOption(file: file, option: "more than one ByteLevel pre-tokenizer (each re-encodes the last one's output)")
        }
        model = try Self.model(root["model"], file: file)
        let model = model
        let added = try AddedVocabulary(json: root["added_tokens"] ?? .array([]), vocabularyID: { model.id(of: $0).map(Int.init) },
                                        vocabularyToken: { $0 >= 0 && $0 < model.tokenOfID.count ? model.tokenOfID[$0] : nil },
                                        vocabularyCount: model.vocabularyCount, file: file)
        (addedTokens, notes) = (added.tokens, added.notes)
        switch root["decoder"] {
        case nil, .null?: byteLevelDecoder = false
        case let decoder?:
            let type = decoder["type"]?.stringValue ?? "?"
            guard type == "ByteLevel" else { throw TokenizerError.unsupportedDecoder(file: file, type: type) }
            byteLevelDecoder = true
        }
    }

    private static func normalizers(_ json: JSONValue, file: String) throws -> [NormalizerStep] {
        if json == .null { return [] }
        let type = json["type"]?.stringValue ?? "?"
        switch type {
        case "Sequence":
            guard case let .array(items)? = json["normalizers"] else { throw TokenizerError.missingField(file: file, field: "normalizer.normalizers") }
            return try items.flatMap { try normalizers($0, file: file) }
        case "NFC": return [.nfc]
        case "NFKC": return [.nfkc]
        default: throw TokenizerError.unsupportedNormalizer(file: file, type: type)
        }
    }

    private static func preTokenizers(_ json: JSONValue, file: String) throws -> [PreTokenizerStep] {
        if json == .null { return [] }
        let type = json["type"]?.stringValue ?? "?"
        switch type {
        case "Sequence":
            guard case let .array(items)? = json["pretokenizers"] else { throw TokenizerError.missingField(file: file, field: "pre_tokenizer.pretokenizers") }
            return try items.flatMap { try preTokenizers($0, file: file) }
        case "Split": return [try split(json, file: file)]
        case "Digits": return [.digits(individual: try flag(json, "individual_digits", default: false, file: file))]
        case "ByteLevel":
            return [.byteLevel(addPrefixSpace: try flag(json, "add_prefix_space", default: true, file: file),
                               useRegex: try flag(json, "use_regex", default: true, file: file))]
        default: throw TokenizerError.unsupportedPreTokenizer(file: file, type: type)
        }
    }

    private static func split(_ json: JSONValue, file: String) throws -> PreTokenizerStep {
        guard let behaviorName = json["behavior"]?.stringValue else { throw TokenizerError.missingField(file: file, field: "Split.behavior") }
        guard let behavior = SplitBehavior(rawValue: behaviorName) else {
            throw TokenizerError.unsupportedOption(file: file, option: "Split behavior '\(behaviorName)'")
        }
        let invert = try flag(json, "invert", default: false, file: file)
        let pattern: String
        if let regex = json["pattern"]?["Regex"]?.stringValue {
            pattern = regex
        } else if let literal = json["pattern"]?["String"]?.stringValue {
            pattern = literal.unicodeScalars.map { Self.escaped($0) }.joined()
        } else {
            throw TokenizerError.missingField(file: file, field: "Split.pattern")
        }
        do {
            return .split(try ScalarRegex(pattern), behavior: behavior, invert: invert)
        } catch let error as UnsupportedRegex {
            throw TokenizerError.unsupportedRegex(file: file, pattern: pattern, construct: error.construct)
        }
    }

    /// A literal `String` pattern as a regex matching exactly it.
    private static func escaped(_ scalar: Unicode.Scalar) -> String {
        let isWordASCII = scalar.isASCII && (scalar.properties.isAlphabetic || ("0"..."9").contains(scalar))
        if scalar.isASCII && !isWordASCII { return String(format: "\\x{%X}", scalar.value) }
        return String(Character(scalar))
    }

    static func flag(_ json: JSONValue, _ key: String, default fallback: Bool, file: String) throws -> Bool {
        switch json[key] {
        case nil, .null?: return fallback
        case let .bool(value)?: return value
        default: throw TokenizerError.missingField(file: file, field: key)
        }
    }
}
