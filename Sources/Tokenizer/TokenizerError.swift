import Foundation
import SafeTensors

/// Why a tokenizer file, a text or a token id was refused. One case per rule; every message names
/// the file it is about.
public enum TokenizerError: LocalizedError, Equatable, Sendable {
    case cannotRead(file: String, reason: String)
    case invalidJSON(file: String, reason: String)
    case missingField(file: String, field: String)
    case unsupportedModel(file: String, type: String)
    case unsupportedNormalizer(file: String, type: String)
    case unsupportedPreTokenizer(file: String, type: String)
    case unsupportedDecoder(file: String, type: String)
    case unsupportedOption(file: String, option: String)
    case unsupportedRegex(file: String, pattern: String, construct: String)
    case mergeOutOfVocabulary(file: String, merge: String)
    case invalidUTF8(file: String, offset: Int)
    case idOutsideVocabulary(file: String, id: Int, vocabularySize: Int)
    case noBOSToken(file: String)
    case textShorterThanRow(file: String, tokens: Int, sequenceLength: Int)
    case emptyText(file: String)
    case regexBacktrackLimit(file: String, tokenizer: String, pattern: String, position: Int, limit: Int)
    /// A Split pattern that backtracked past the budget of a text of `length` scalars (`limit` in all).
    case regexWorkLimit(file: String, tokenizer: String, pattern: String, length: Int, limit: Int)
    case addedTokenIDTaken(file: String, content: String, id: Int, other: String)
    case addedTokenListedTwice(file: String, content: String)

    /// Why a file could not be read, in words (a system call's errno text, or the error's own
    /// description), for `cannotRead`: never a Swift value's debug form.
    public static func reading(_ error: any Error) -> String {
        if let failed = error as? SystemCallError { return failed.reason }
        if case let .cannotOpen(_, reason)? = error as? SafeTensorsError { return reason }
        return (error as? LocalizedError)?.errorDescription ?? "\(error)"
    }

    /// One line naming the file and what is wrong with it.
    public var errorDescription: String? {
        switch self {
        case let .cannotRead(file, reason): return "\(file): cannot read: \(reason)"
        case let .invalidJSON(file, reason): return "\(file): not a valid tokenizer file: \(reason)"
        case let .missingField(file, field): return "\(file): missing or malformed field \(field)"
        case let .unsupportedModel(file, type): return "\(file): unsupported model type '\(type)' (only BPE is implemented)"
        case let .unsupportedNormalizer(file, type): return "\(file): unsupported normalizer '\(type)'"
        case let .unsupportedPreTokenizer(file, type): return "\(file): unsupported pre-tokenizer '\(type)'"
        case let .unsupportedDecoder(file, type): return "\(file): unsupported decoder '\(type)'"
        case let .unsupportedOption(file, option): return "\(file): unsupported setting \(option)"
        case let .unsupportedRegex(file, pattern, construct):
            return "\(file): unsupported regex construct \(construct) in \(CompactJSON.quoted(pattern))"  // as the pattern is written in tokenizer.json
        case let .mergeOutOfVocabulary(file, merge): return "\(file): merge '\(merge)' produces a token outside the vocabulary"
        case let .invalidUTF8(file, offset): return "\(file): not valid UTF-8 at byte offset \(offset)"
        case let .idOutsideVocabulary(file, id, size):
            return "\(file): token id \(id) is outside the vocabulary (0..<\(size) and the added tokens)"
        case let .noBOSToken(file):
            return "\(file): rows start with the BOS token (--add-bos, or add_bos_token in tokenizer_config.json), which needs a bos_token in tokenizer_config.json that the vocabulary holds"
        case let .emptyText(file): return "\(file): the text gives no tokens"
        case let .regexBacktrackLimit(file, tokenizer, pattern, _, limit):
            return "\(file): \(tokenizer)'s Split pattern \(CompactJSON.quoted(pattern)) backtracks more than \(limit) times in one match attempt "
                + "on this text; refused rather than left to run (Oniguruma, which tokenizers uses, also stops at a retry limit)"
        case let .regexWorkLimit(file, tokenizer, pattern, length, limit):
            return "\(file): \(tokenizer)'s Split patterns backtrack more than \(limit) times over this text of \(length) characters "
                + "(\(ScalarRegex.perScalarBudget) per character beyond one attempt's \(ScalarRegex.backtrackLimit)), the last in "
                + "\(CompactJSON.quoted(pattern)); refused rather than left to run"
        case let .addedTokenIDTaken(file, content, id, other):
            return "\(file): " + AddedTokenIDs.Collision(content: content, id: id, other: other).reason
        case let .addedTokenListedTwice(file, content):
            return "\(file): added token \(CompactJSON.quoted(content)) is listed both as special and as not special"
        case let .textShorterThanRow(file, tokens, length):
            return "\(file): the text gives \(tokens) tokens, fewer than one row of --seq-len \(length)"
        }
    }
}
