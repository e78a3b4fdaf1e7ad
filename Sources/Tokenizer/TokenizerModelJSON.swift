import SafeTensors

extension TokenizerDefinition {
    /// The `model` object: BPE only, with the options DeepSeek's files use; any option that would
    /// change the result (dropout, byte fallback, an unknown token, subword affixes) is refused. An
    /// empty affix is no affix (`tokenizers` prepends or appends nothing), as DeepSeek's Qwen-based
    /// files write them.
    static func model(_ json: JSONValue?, file: String) throws -> BPEModel {
        guard let json, case .object = json else { throw TokenizerError.missingField(file: file, field: "model") }
        let type = json["type"]?.stringValue ?? "BPE"
        guard type == "BPE" else { throw TokenizerError.unsupportedModel(file: file, type: type) }
        for option in ["dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix"] {
            let isAffix = option.hasSuffix("_prefix") || option.hasSuffix("_suffix")
            if let value = json[option], value != .null, !(isAffix && value.stringValue == "") {
                throw TokenizerError.unsupportedOption(file: file, option: "model.\(option)")
            }
        }
        if try flag(json, "byte_fallback", default: false, file: file) {
            throw TokenizerError.unsupportedOption(file: file, option: "model.byte_fallback")
        }
        guard case let .object(entries)? = json["vocab"] else { throw TokenizerError.missingField(file: file, field: "model.vocab") }
        var vocab: [TokenKey: Int32] = [:]
        vocab.reserveCapacity(entries.count)
        for (token, value) in entries {
            guard let id = value.uint64 else { throw TokenizerError.missingField(file: file, field: "model.vocab[\(token)]") }
            // The id-to-token table is as long as the largest id: an id of 2^31 asked for 34 GB.
            guard id < UInt64(BPEModel.idLimit) else {
                throw TokenizerError.missingField(file: file, field: "model.vocab[\(token)] (an id below 2^24: \(id) is not)")
            }
            vocab[TokenKey(token)] = Int32(id)
        }
        guard case let .array(list)? = json["merges"] else { throw TokenizerError.missingField(file: file, field: "model.merges") }
        let merges = try list.enumerated().map { rank, item in try mergePair(item, rank: rank, file: file) }
        return try BPEModel(vocab: vocab, merges: merges, ignoreMerges: try flag(json, "ignore_merges", default: false, file: file), file: file)
    }

    /// A merge as `"a b"` (exactly two parts) or `["a", "b"]`.
    private static func mergePair(_ item: JSONValue, rank: Int, file: String) throws -> (String, String) {
        switch item {
        case let .string(line):
            // Cut at the one space by scalars, as the library splits the line's chars (a space followed
            // by a combining mark is one Character to Swift, and splitting by Characters would miss it).
            let scalars = line.unicodeScalars
            guard let space = scalars.firstIndex(of: " "), !scalars[scalars.index(after: space)...].contains(" ") else {
                throw TokenizerError.missingField(file: file, field: "model.merges[\(rank)]")
            }
            return (String(scalars[..<space]), String(scalars[scalars.index(after: space)...]))
        case let .array(pair):
            guard pair.count == 2, let a = pair[0].stringValue, let b = pair[1].stringValue else {
                throw TokenizerError.missingField(file: file, field: "model.merges[\(rank)]")
            }
            return (a, b)
        default:
            throw TokenizerError.missingField(file: file, field: "model.merges[\(rank)]")
        }
    }
}
