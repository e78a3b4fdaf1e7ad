import DeepSeekModel
import Foundation
import GGUF
import SafeTensors
import Tokenizer

/// The `tokenizer.ggml.*` metadata of a byte-level BPE `tokenizer.json` (DeepSeek's), as llama.cpp's
/// converter writes it for its "gpt2" tokenizer model.
///
/// Tokens 0..<vocab_size in id order (an id the tokenizer lacks is `[PAD<id>]`, UNUSED); added tokens
/// CONTROL when marked special or when they look like control tokens (`<|…|>`, `<｜…｜>`, `<pad>`),
/// else USER_DEFINED; the rest NORMAL. Merges as "left right". Special ids from
/// tokenizer_config.json's `*_token` (looked up among the added tokens), then config.json's `*_token_id`;
/// add-BOS/EOS and the chat template from tokenizer_config.json.
struct GGUFVocabulary {
    enum TokenType: Int32 { case normal = 1, control = 3, userDefined = 4, unused = 5 }

    let metadata: [GGUFMetadata]

    struct Invalid: Error, CustomStringConvertible {
        let path: String, reason: String
        var description: String { "\(path): \(reason)" }
    }

    /// `configJSON`: the checkpoint's `config.json` as read (its `*_token_id` fill what tokenizer_config.json leaves open).
    /// `tokenizerFile`: the tokenizer.json (tokenizer_config.json is read beside it).
    init(tokenizerFile: URL, config: DeepSeekConfig, configJSON: JSONValue, pre: String) throws {
        let path = tokenizerFile.path
        let data = try FilePath.readRegularFile(path)
        guard let json = try Self.jsonObject(data, path: path),
              let model = json["model"] as? [String: Any], model["type"] as? String == "BPE",
              let vocab = model["vocab"] as? [String: Int] else {
            throw Invalid(path: path, reason: "not a BPE tokenizer.json (model.type BPE with a vocab)")
        }
        let merges: [String] = try (model["merges"] as? [Any] ?? []).map { entry in
            if let s = entry as? String { return s }
            if let pair = entry as? [String], pair.count == 2 { return pair.map { $0.replacingOccurrences(of: " ", with: "\u{0120}") }.joined(separator: " ") }
            throw Invalid(path: path, reason: "a merge is neither \"a b\" nor [a, b]")
        }
        let added = try Self.addedTokens(data, path: path, vocab: vocab)
        let n = config.vocabSize
        var tokens = (0..<n).map { "[PAD\($0)]" }
        var types = [TokenType](repeating: .unused, count: n)
        // The vocabulary is a dictionary: its order is not the file's, so the id an error names is
        // chosen (the smallest outside) rather than whichever the iteration meets first.
        if let bad = vocab.values.filter({ $0 < 0 || $0 >= n }).min() {
            throw Invalid(path: path, reason: "token id \(bad) is outside the model's vocabulary 0..<\(n) (vocab_size)")
        }
        for (token, id) in vocab {
            tokens[id] = token
            types[id] = .normal
        }
        for t in added {
            guard t.id >= 0, t.id < n else { throw Invalid(path: path, reason: "added token id \(t.id) is outside the model's vocabulary 0..<\(n) (vocab_size)") }
            tokens[t.id] = t.content
            types[t.id] = t.special || Self.looksSpecial(t.content) ? .control : .userDefined
        }
        var entries = [GGUFMetadata("tokenizer.ggml.model", .string("gpt2")), GGUFMetadata("tokenizer.ggml.pre", .string(pre)),
                       GGUFMetadata("tokenizer.ggml.tokens", .strings(tokens)),
                       GGUFMetadata("tokenizer.ggml.token_type", .int32s(types.map(\.rawValue)))]
        // gguf-py leaves out an empty array (a tokenizer without merges has no merges key).
        if !merges.isEmpty { entries.append(GGUFMetadata("tokenizer.ggml.merges", .strings(merges))) }
        let tokenizerConfigPath = tokenizerFile.deletingLastPathComponent().appendingPathComponent("tokenizer_config.json").path
        let tokenizerConfig = FileEntry.lstat(tokenizerConfigPath) != nil
            ? (try Self.jsonObject(FilePath.readRegularFile(tokenizerConfigPath), path: tokenizerConfigPath) ?? [:]) : [:]
        entries += try Self.specialIDs(added: added, vocab: vocab, tokenizerConfig: tokenizerConfig, configJSON: configJSON, size: n, path: path)
        for (kind, flag) in Self.addSpecial(postProcessor: json["post_processor"] as? [String: Any], tokenizerConfig: tokenizerConfig) {
            entries.append(GGUFMetadata("tokenizer.ggml.add_\(kind)_token", .bool(flag)))
        }
        if let template = tokenizerConfig["chat_template"] as? String, !template.isEmpty {
            entries.append(GGUFMetadata("tokenizer.chat_template", .string(template)))
        }
        metadata = entries
    }

    /// `tokenizer.ggml.*_token_id`: the token tokenizer_config.json names for each kind (an added
    /// token's id first, then the vocabulary's), else config.json's `*_token_id`.
    static func specialIDs(added: [AddedToken], vocab: [String: Int], tokenizerConfig: [String: Any], configJSON: JSONValue,
                           size n: Int, path: String) throws -> [GGUFMetadata] {
        let ids = Dictionary(added.map { ($0.content, $0.id) }, uniquingKeysWith: { a, _ in a })
        var entries: [GGUFMetadata] = []
        for (kind, key) in [("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unk", "unknown_token_id"), ("sep", "seperator_token_id"), ("pad", "padding_token_id")] {
            let declared = tokenizerConfig["\(kind)_token"]
            let content = (declared as? String) ?? ((declared as? [String: Any])?["content"] as? String)
            var configured: Int?
            if case .number(let text)? = configJSON["\(kind)_token_id"] { configured = Int(text) }
            if let id = content.flatMap({ ids[$0] ?? vocab[$0] }) ?? configured {
                guard (0..<n).contains(id) else {
                    throw Invalid(path: path, reason: "\(kind) token id \(id) (tokenizer_config.json or config.json) is not a token of the model's \(n)")
                }
                entries.append(GGUFMetadata("tokenizer.ggml.\(key)", .uint32(UInt32(id))))
            }
        }
        return entries
    }

    /// The added tokens with the ids the tokenizers library gives them, as `tokenize` reads them
    /// (`AddedVocabulary`): llama.cpp's converter reads the vocabulary through transformers, which
    /// holds those ids, not necessarily the declared ones.
    static func addedTokens(_ data: Data, path: String, vocab: [String: Int]) throws -> [AddedToken] {
        let root: JSONValue
        do { root = try JSONParser.parse(data) } catch { throw TokenizerError.invalidJSON(file: path, reason: "\(error)") }
        let tokenOfID = Dictionary(vocab.map { ($1, $0) }, uniquingKeysWith: { a, _ in a })
        let added = try AddedVocabulary(json: root["added_tokens"] ?? .array([]), vocabularyID: { vocab[$0] }, vocabularyToken: { tokenOfID[$0] },
                                        vocabularyCount: vocab.count, file: path)
        for note in added.notes { Diagnostics.note(note) }
        return added.tokens
    }

    /// A JSON file's top-level object (nil if it is not one), or an error naming the file: Foundation's
    /// own error names none.
    private static func jsonObject(_ data: Data, path: String) throws -> [String: Any]? {
        do {
            return try JSONSerialization.jsonObject(with: data) as? [String: Any]
        } catch {
            let reason = (error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String ?? error.localizedDescription
            throw Invalid(path: path, reason: "not valid JSON (\(reason))")
        }
    }

    /// Whether llama.cpp adds BOS / EOS, decided as llama.cpp's converter (gguf-py's SpecialVocab) decides it: the
    /// tokenizer's post-processor first — ByteLevel says neither (unless a later processor says otherwise),
    /// Roberta both, a template whose single-sequence form starts with the BOS (or CLS) token or ends with the EOS
    /// token says so — then tokenizer_config.json's `add_bos_token` / `add_eos_token` for what is still open.
    /// (DeepSeek-V2's tokenizer has a ByteLevel post-processor: its GGUF says no BOS although
    /// tokenizer_config.json says add_bos_token, as the converter's files do.)
    static func addSpecial(postProcessor: [String: Any]?, tokenizerConfig: [String: Any]) -> [(String, Bool)] {
        var flags: [(String, Bool)] = []
        func set(_ kind: String, _ value: Bool, onlyIfUnset: Bool = false) {
            if let i = flags.firstIndex(where: { $0.0 == kind }) {
                if !onlyIfUnset { flags[i].1 = value }
            } else {
                flags.append((kind, value))
            }
        }
        func content(_ kind: String) -> String? {
            let entry = tokenizerConfig["\(kind)_token"]
            return (entry as? String) ?? ((entry as? [String: Any])?["content"] as? String)
        }
        let processors = (postProcessor?["processors"] as? [[String: Any]]) ?? postProcessor.map { [$0] } ?? []
        for processor in processors {
            switch processor["type"] as? String {
            case "ByteLevel":
                set("bos", false, onlyIfUnset: true)
                set("eos", false, onlyIfUnset: true)
            case "RobertaProcessing":
                set("bos", true)
                set("eos", true)
                set("sep", true)
            case "TemplateProcessing":
                guard let single = processor["single"] as? [[String: Any]], single.count > 1 else { continue }
                if let first = (single.first?["SpecialToken"] as? [String: Any])?["id"] as? String {
                    set("bos", first == content("bos") || first == content("cls"))
                }
                if let last = (single.last?["SpecialToken"] as? [String: Any])?["id"] as? String {
                    set("eos", last == content("eos"))
                }
            default:
                continue
            }
        }
        for kind in ["bos", "eos", "unk", "sep", "pad", "cls", "mask"] {
            if let flag = tokenizerConfig["add_\(kind)_token"] as? Bool { set(kind, flag, onlyIfUnset: true) }
        }
        // llama.cpp's GGUF writer has keys for these only.
        return flags.filter { ["bos", "eos", "sep"].contains($0.0) }
    }

    /// llama.cpp's converter treats these added tokens as control tokens even when not marked special.
    static func looksSpecial(_ token: String) -> Bool {
        ["<pad>", "<mask>", "<2mass>", "[@BOS@]"].contains(token) || (token.hasPrefix("<|") && token.hasSuffix("|>"))
            || (token.hasPrefix("<｜") && token.hasSuffix("｜>")) || (token.hasPrefix("<unused") && token.hasSuffix(">"))
    }
}
