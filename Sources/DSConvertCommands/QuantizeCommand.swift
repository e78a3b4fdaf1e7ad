import CLI
import Conversion
import DeepSeekModel
import Foundation
import Numerics
import ReferenceModel
import Validation

/// `dsconvert quantize` / `dsconvert-quantize`: FP8 block weights, and back.
public enum QuantizeCommand: Command {
    public static let spec = CommandSpec(
        name: "quantize",
        abstract: "Quantize weights to FP8 with block scales (DeepSeek-V3/HF convention), or --dequantize FP8 back to bf16.",
        discussion: """
        --fp8: every 2-D linear weight becomes F8_E4M3 (or F8_E5M2) with `<name>_scale_inv` F32
        [ceil(rows/block), ceil(cols/block)], scale = amax/448 over each block's real elements, codes =
        fp8(x / scale) in f32, bit-identical to torch's cast; config.json gains quantization_config.
        Kept in their dtype: embeddings, lm_head, norms, the router mlp.gate.weight, e_score_correction_bias,
        anything not 2-D (including absorbed W_UK/W_UV unless --fp8-absorbed), and names matching --skip.
        --dequantize: any FP8 block checkpoint (ours or DeepSeek-V3's) to bf16 on the CPU; a weight
        without its scale is an error.
        """,
        options: [
            OptionSpec("fp8", help: "Quantize weights to FP8."),
            OptionSpec("kv6", help: "Declare a 6-bit KV cache (6.000 bits/element): mla-kv6; with --calibration, mla-kv6c (per-channel widths and steps calibrated, stored in config.json)."),
            OptionSpec("calibration", path: "TOKENS.json", help: "Calibration token ids for --kv6 ({\"tokens\": [[…], …]})."),
            OptionSpec("dequantize", help: "Turn FP8 block weights back into bf16."),
            OptionSpec("input", path: "DIR", help: "Input checkpoint."),
            CheckpointOutputOptions.output,
            OptionSpec("fp8-format", value: "e4m3|e5m2", help: "FP8 format (default e4m3, what vLLM and SGLang load)."),
            OptionSpec("block", value: "N", help: "Block edge (default 128)."),
            OptionSpec("skip", value: "REGEX", repeatable: true, help: "Also keep tensors whose name matches (repeatable)."),
            OptionSpec("fp8-absorbed", help: "Quantize absorbed per-head W_UK/W_UV too (per head, block x block)."),
            CheckpointOutputOptions.maxShardSize,
            CheckpointOutputOptions.force,
            CheckpointOutputOptions.resume,
        ] + CalibrationInput.options
    )

    public static func run(_ arguments: ParsedArguments, terminal: Terminal) throws -> Int32 {
        let fp8 = arguments.flag("fp8"), dequantize = arguments.flag("dequantize"), kv6 = arguments.flag("kv6")
        guard (fp8 || kv6) != dequantize else { throw UsageError("give --fp8 and/or --kv6, or --dequantize alone") }
        if arguments.value("calibration") != nil || arguments.value("calibration-text") != nil, !kv6 { throw UsageError("--calibration and --calibration-text go with --kv6") }
        let input = URL(fileURLWithPath: try arguments.required("input"))
        let output = URL(fileURLWithPath: try arguments.required("output"))
        let shardSize = try ConversionOutputSize.parse(arguments)
        let summary: QuantizeStage.Summary
        if dequantize {
            summary = try QuantizeStage.dequantize(input: input, output: output, force: arguments.flag("force"), shardSize: shardSize,
                                                   resume: arguments.flag("resume")) { terminal.progress($0) }
            terminal.endProgress()
            terminal.out("\(output.path): \(summary.quantized) FP8 tensors dequantized to bf16; \(summary.tensors) tensors in \(summary.files) file(s)")
            return ExitCode.success
        }
        let format = try arguments.choice("fp8-format", default: FP8Format.e4m3)
        let block = try arguments.integer("block", default: 128, in: 1...4096)
        let options = QuantizeStage.FP8Options(format: format, block: block,
                                               policy: try FP8PolicyArguments.policy(arguments))
        var kv6Options: QuantizeStage.KV6Options?
        if kv6 {
            kv6Options = try CalibrationInput.load(arguments, model: input, terminal: terminal)
        }
        summary = try QuantizeStage.run(input: input, output: output, fp8: fp8 ? options : nil, kv6: kv6Options, force: arguments.flag("force"), shardSize: shardSize,
                                       resume: arguments.flag("resume")) { terminal.progress($0) }
        terminal.endProgress()
        if let kv6Options {
            terminal.out("\(output.path): KV cache " + kv6Options.declared)
            if !fp8 { return ExitCode.success }
        }
        terminal.out(String(format: "%@: %d tensors quantized to %@ (block %d), %d tensors in %d file(s); %.2f MB -> %.2f MB",
                            output.path, summary.quantized, format.safetensorsDType, block, summary.tensors, summary.files,
                            Double(summary.bytesIn) / 1e6, Double(summary.bytesOut) / 1e6))
        return ExitCode.success
    }
}
