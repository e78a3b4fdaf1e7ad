import CLI
import Conversion
import ReferenceModel
import Validation
import Foundation
import SafeTensors
import Tokenizer

/// `--text FILE [--tokenizer PATH] [--seq-len N] [--max-tokens M]`: the token rows of a text, for
/// the commands that otherwise read a tokens file (`forward`, `validate`; `quantize`/`convert`
/// as `--calibration-text` beside `--calibration`).
enum TextTokens {
    static let options: [OptionSpec] = options(text: "text", tokens: "tokens")

    /// The options for a text given as `--TEXT` in place of a tokens file given as `--TOKENS`.
    static func options(text: String, tokens: String) -> [OptionSpec] {
        [
            OptionSpec(text, path: "FILE", help: "UTF-8 text to run instead of --\(tokens), encoded with the model's tokenizer.json."),
            OptionSpec("tokenizer", path: "PATH", help: "With --\(text): tokenizer.json or its directory (default: the model directory)."),
            OptionSpec("seq-len", value: "N", help: "With --\(text): rows of N tokens (default: one row of the whole text)."),
            OptionSpec("max-tokens", value: "M", help: "With --\(text): use only the first M tokens of the text."),
        ]
    }

    /// What `--tokenizer` reads, for the output checks (a result written over it would destroy an
    /// input): the directory when it names one, else the file and the `tokenizer_config.json` beside it.
    static func tokenizerInputs(_ arguments: ParsedArguments) throws -> [URL] {
        try arguments.path("tokenizer").map(tokenizerFiles) ?? []
    }

    static func tokenizerFiles(_ path: String) -> [URL] {
        let directory = TokenizeCommand.modelDirectory(path)
        if directory.path == URL(fileURLWithPath: path).path { return [directory] }
        return [URL(fileURLWithPath: path), directory.appendingPathComponent("tokenizer_config.json")]
    }

    /// The tokenizer at `path` (a tokenizer.json or its directory), its load notes said on stderr.
    static func loadTokenizer(_ path: String, terminal: Terminal) throws -> Tokenizer {
        let tokenizer = try Tokenizer.load(path: path)
        for note in tokenizer.notes { terminal.note(note) }
        return tokenizer
    }

    /// A text's bytes and the name errors give it: a regular file only (a FIFO would hang the read),
    /// or standard input, read to its end with the throwing read (`readDataToEndOfFile` traps on a
    /// read error).
    static func readText(_ source: InputSource) throws -> (bytes: [UInt8], name: String) {
        let name: String
        do {
            switch source {
            case .standardInput:
                name = "standard input"
                return ([UInt8](try FileHandle.standardInput.readToEnd() ?? Data()), name)
            case .file(let path):
                name = path
                return ([UInt8](try FilePath.readRegularFile(path)), name)
            }
        } catch {
            throw TokenizerError.cannotRead(file: name, reason: TokenizerError.reading(error))
        }
    }

    /// The text's rows, or nil without `--TEXT`. Rows start with BOS when the tokenizer's
    /// `tokenizer_config.json` says `add_bos_token`, as the model saw its training text.
    static func load(_ arguments: ParsedArguments, model: URL, terminal: Terminal, text: String = "text", tokens: String = "tokens") throws -> (rows: [[Int]], label: String)? {
        guard let textPath = try arguments.path(text) else {
            for option in ["tokenizer", "seq-len", "max-tokens"] where arguments.value(option) != nil {
                throw UsageError("--\(option) goes with --\(text)")
            }
            return nil
        }
        if arguments.value(tokens) != nil { throw UsageError("give either --\(tokens) or --\(text)") }
        let tokenizer = try loadTokenizer(try arguments.path("tokenizer") ?? model.path, terminal: terminal)
        let seqLen = try arguments.value("seq-len").map { _ in try arguments.integer("seq-len", default: 0, in: 1...(1 << 20)) }
        let maxTokens = try arguments.value("max-tokens").map { _ in try arguments.integer("max-tokens", default: 0, in: 1...(1 << 30)) }
        var bos: Int?
        if tokenizer.settings.addBOSToken {
            guard let id = tokenizer.bosID else { throw TokenizerError.noBOSToken(file: tokenizer.file) }
            bos = id
        }
        let (bytes, _) = try readText(.file(textPath))
        var ids = try tokenizer.encode(utf8: bytes, name: textPath)
        if let maxTokens, ids.count > maxTokens { ids.removeSubrange(maxTokens...) }
        let cut = try TokenRows.cut(ids, sequenceLength: seqLen, bos: bos, name: textPath)
        if cut.droppedTail > 0, let seqLen {
            terminal.note("\(textPath): dropped the last \(cut.droppedTail) of \(ids.count) tokens (shorter than one row of --seq-len \(seqLen))")
        }
        return (cut.rows, "\(textPath) via \(tokenizer.file)")
    }
}

/// `--calibration TOKENS.json` or `--calibration-text FILE` (with the text options) for `--kv6`.
enum CalibrationInput {
    static let options = TextTokens.options(text: "calibration-text", tokens: "calibration")

    static func load(_ arguments: ParsedArguments, model: URL, terminal: Terminal) throws -> QuantizeStage.KV6Options {
        if let text = try TextTokens.load(arguments, model: model, terminal: terminal, text: "calibration-text", tokens: "calibration") {
            return .init(calibration: text.rows, calibrationSource: text.label)
        }
        let path = try arguments.path("calibration")
        return .init(calibration: try path.map { try TokenFile.load(URL(fileURLWithPath: $0)) }, calibrationSource: path ?? "none")
    }
}
