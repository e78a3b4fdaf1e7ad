import CLI
import Conversion
import Foundation

/// `dsconvert export --gguf` / `dsconvert-export`: llama.cpp's GGUF in one streaming pass.
public enum ExportCommand: Command {
    public static let spec = CommandSpec(
        name: "export",
        abstract: "Write llama.cpp's GGUF (deepseek2) from a checkpoint in one streaming pass.",
        discussion: """
        Reads a bf16 or FP8 checkpoint (FP8 dequantized block by block) and writes GGUF as llama.cpp's
        convert_hf_to_gguf.py names and lays it out: kv_b_proj split into attn_k_b (transposed per head) and
        attn_v_b, routed experts stacked per layer, MTP layers left out, deepseek2 metadata and the vocabulary
        of tokenizer.json. --type f32|f16|bf16|q8_0 is what the converter writes for its --outtype; q6_k and
        q4_k_m are what llama-quantize then writes from the f32 file (its Q6_K and Q4_K_M mixes and row
        fallbacks, no importance matrix), each block byte-identical to ggml's reference quantizers.
        Memory holds a chunk of one tensor at a time.

        The output is a directory, like every dsconvert output: NAME-TYPE.gguf (or its split parts,
        NAME-TYPE-0000i-of-0000N.gguf, which llama.cpp loads from the first) and dsconvert.json, which records the
        stages and each file's SHA-256. It is written in a hidden sibling directory and renamed into place
        when complete; an existing output is replaced only with --force and only if it is a dsconvert output.
        """,
        options: [
            OptionSpec("gguf", help: "Write GGUF (the only export format)."),
            OptionSpec("input", path: "DIR", help: "Input checkpoint: as published (bf16 or FP8) or absorbed in split form; not a shard output."),
            OptionSpec("output", path: "DIR", help: "Output directory (the .gguf file(s) and dsconvert.json)."),
            OptionSpec("type", value: "TYPE", help: "f32, f16, bf16, q8_0, q6_k or q4_k_m (default bf16)."),
            OptionSpec("tokenizer", path: "PATH", help: "tokenizer.json, or a directory holding one (tokenizer_config.json is read beside it); default: the input."),
            OptionSpec("tokenizer-pre", value: "NAME", help: "llama.cpp's pre-tokenizer name (default deepseek-llm for V2, deepseek-v3 for the V3 family)."),
            OptionSpec("split-max-size", value: "SIZE", help: "Split the output as gguf-split --split-max-size does: NAME-TYPE-00001-of-0000N.gguf … (5G or 500M as gguf-split writes them, 5GB, 2GiB or bytes)."),
            OptionSpec("name", value: "NAME", help: "general.name (default: the input directory's name)."),
            OptionSpec("size-label", value: "LABEL", help: "general.size_label, e.g. 671B or 256x20B (default: none)."),
            OptionSpec("force", help: "Replace an existing output (a previous dsconvert output)."),
            OptionSpec("resume", help: "Continue an interrupted run into the same output, keeping its verified files."),
        ]
    )

    public static func run(_ arguments: ParsedArguments, terminal: Terminal) throws -> Int32 {
        guard arguments.flag("gguf") else { throw UsageError("give --gguf (the only export format)") }
        let type = try arguments.choice("type", default: GGUFFileType.bf16)
        let output = try arguments.required("output")
        // The output is a directory; a .gguf name is what a llama-quantize user would type, and would get a directory by that name.
        guard !output.lowercased().hasSuffix(".gguf") else {
            throw UsageError("--output is a directory (it receives NAME-TYPE.gguf and dsconvert.json), not a .gguf file: give e.g. '\(String(output.dropLast(5)))'")
        }
        // llama.cpp's names are lowercase words joined by '-', '.' or '_' ("deepseek-v3", "kimi-k2");
        // its list grows by version, so only the form is checked here: an empty or malformed name
        // would give a file llama.cpp refuses at load.
        if let pre = arguments.value("tokenizer-pre"),
           pre.isEmpty || !pre.unicodeScalars.allSatisfy({ ("a"..."z").contains($0) || ("0"..."9").contains($0) || "-._".unicodeScalars.contains($0) }) {
            throw UsageError("--tokenizer-pre takes one of llama.cpp's pre-tokenizer names (lowercase letters, digits, '-', '.', '_'), got '\(pre)'")
        }
        var options = GGUFExport.Options(type: type, tokenizerPre: arguments.value("tokenizer-pre"),
                                         tokenizer: arguments.value("tokenizer").map { URL(fileURLWithPath: $0) },
                                         name: arguments.value("name"), sizeLabel: arguments.value("size-label"))
        options.splitMaxSize = try ConversionOutputSize.bytes(arguments, "split-max-size")
        let summary = try GGUFExport.run(input: URL(fileURLWithPath: try arguments.required("input")), output: URL(fileURLWithPath: output),
                                         options: options, force: arguments.flag("force"), resume: arguments.flag("resume")) { terminal.progress($0) }
        terminal.endProgress()
        let types = summary.types.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: ", ")
        terminal.out("\(output): \(summary.files.joined(separator: ", ")): \(summary.tensors) tensors (\(types)), \(summary.bytes) bytes, \(type.rawValue)")
        return ExitCode.success
    }
}
