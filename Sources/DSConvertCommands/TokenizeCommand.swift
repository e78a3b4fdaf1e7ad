import CLI
import Foundation
import SafeTensors
import Tokenizer
import ReferenceModel
import Validation

/// `dsconvert tokenize`: a text file to the `{"tokens": [[…]]}` file the other commands read, and back.
public enum TokenizeCommand: Command {
    public static let spec = CommandSpec(
        name: "tokenize",
        abstract: "Encode a text file with a Hugging Face tokenizer.json (as the tokenizers library does), or decode a tokens file.",
        discussion: """
        PATH is a tokenizer.json or a model directory holding one (tokenizer_config.json beside it
        names the BOS token). Without --seq-len the result is one row holding every id of the text,
        tokenizers' encode(text, add_special_tokens=False).ids; with --seq-len N, consecutive rows of
        N ids, the tail shorter than N dropped (said on stderr). --add-bos starts every row with the
        BOS id (a row of N then holds N-1 text ids). --decode reads --tokens and writes the text of
        all rows in order (special tokens kept). --text - reads the text from standard input. Without
        --output the result goes to stdout.
        """,
        options: [
            OptionSpec("tokenizer", path: "PATH", help: "tokenizer.json, or a model directory holding one."),
            OptionSpec("text", path: "FILE", standardInput: true, help: "UTF-8 text to encode; - reads standard input."),
            OptionSpec("output", path: "FILE", standardOutput: true, help: "Where to write the tokens (or, with --decode, the text); default or -: stdout."),
            OptionSpec("seq-len", value: "N", help: "Rows of N ids instead of one row."),
            OptionSpec("add-bos", help: "Start every row with the BOS id."),
            OptionSpec("decode", help: "Decode --tokens TOKENS.json to text instead."),
            OptionSpec("tokens", path: "TOKENS.json", help: "With --decode: the tokens file to decode."),
            OptionSpec("force", help: "Replace an existing output file (a regular file only)."),
        ]
    )

    public static func run(_ arguments: ParsedArguments, terminal: Terminal) throws -> Int32 {
        let tokenizerPath = try arguments.required("tokenizer")
        let decode = arguments.flag("decode")
        if decode, arguments.value("text") != nil { throw UsageError("--decode reads --tokens, not --text") }
        if !decode, arguments.value("tokens") != nil { throw UsageError("--tokens is read only with --decode") }
        let job: Job = decode ? .decode(tokens: try arguments.required("tokens"))
            : .encode(text: try arguments.input("text") ?? .file(try arguments.required("text")))
        // Checked before any work: never over the tokenizer's files or an input, never over a file without --force.
        var output: URL?
        if case .file(let path) = try arguments.output("output") {
            output = try OutputLocation.checkResultFile(URL(fileURLWithPath: path), inputs: TextTokens.tokenizerFiles(tokenizerPath) + job.inputFiles,
                                                        force: arguments.flag("force"))
        }
        let tokenizer = try TextTokens.loadTokenizer(tokenizerPath, terminal: terminal)
        let result: Data
        switch job {
        case .decode(let path):
            let ids = try TokenFile.load(URL(fileURLWithPath: path)).flatMap { $0 }
            result = Data(try tokenizer.decode(ids, source: path).utf8)
        case .encode(let text):
            result = Data(try encode(tokenizer, text: text, arguments: arguments, terminal: terminal))
        }
        if let output {
            try AtomicFile.write(result, to: output)
        } else {
            // Through the terminal, which turns a failed write (a full disk, a closed stdout) into one
            // error line and exit 1; FileHandle's write traps on it.
            terminal.outExactly([UInt8](result))
        }
        return ExitCode.success
    }

    private static func encode(_ tokenizer: Tokenizer, text: InputSource, arguments: ParsedArguments, terminal: Terminal) throws -> [UInt8] {
        let seqLen = try arguments.value("seq-len").map { _ in try arguments.integer("seq-len", default: 0, in: 1...(1 << 24)) }
        var bos: Int?
        if arguments.flag("add-bos") {
            guard let id = tokenizer.bosID else { throw TokenizerError.noBOSToken(file: tokenizer.file) }
            bos = id
        }
        let (bytes, textPath) = try TextTokens.readText(text)
        let ids = try tokenizer.encode(utf8: bytes, name: textPath)
        let cut = try TokenRows.cut(ids, sequenceLength: seqLen, bos: bos, name: textPath)
        if cut.droppedTail > 0, let seqLen {
            terminal.note("\(textPath): dropped the last \(cut.droppedTail) of \(ids.count) tokens (shorter than one row of --seq-len \(seqLen))")
        }
        return TokenRows.json(cut.rows)
    }

    /// What one run does: decode a tokens file, or encode a text.
    private enum Job {
        case decode(tokens: String)
        case encode(text: InputSource)

        /// The files it reads, which its output must not replace.
        var inputFiles: [URL] {
            switch self {
            case .decode(let path), .encode(.file(let path)): return [URL(fileURLWithPath: path)]
            case .encode(.standardInput): return []
            }
        }
    }

    /// The directory an output must stay out of: PATH itself, or the directory of a tokenizer.json.
    static func modelDirectory(_ path: String) -> URL {
        var isDirectory: ObjCBool = false
        let url = URL(fileURLWithPath: path)
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue { return url }
        return url.deletingLastPathComponent()
    }
}
