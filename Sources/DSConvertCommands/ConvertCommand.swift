import CLI
import Conversion
import DeepSeekModel
import Foundation
import Numerics
import ReferenceModel
import Validation

/// `dsconvert convert`: the whole pipeline in one pass.
public enum ConvertCommand: Command {
    public static let spec = CommandSpec(
        name: "convert",
        abstract: "Absorb, quantize and shard in one streaming pass, byte-identical to running the stages one after another.",
        discussion: """
        The steps run in the pipeline's order, whatever the order of the flags: absorb (--absorb), quantize
        (--fp8 and/or --kv6), shard (--devices N). Each input tensor is read once, converted in memory and
        written to its final place; nothing intermediate touches the disk. The output equals what
        `absorb`, then `quantize`, then `shard` would write with the same options (weights, index,
        config.json, placement.json); dsconvert.json records the same stages, each with this run's input.
        With --kv6 --calibration, the calibration forward pass reads the weights once before the pass.
        """,
        options: [
            OptionSpec("input", path: "DIR", help: "Input checkpoint."),
            CheckpointOutputOptions.output,
            OptionSpec("absorb", help: "Absorb MLA's projections (as `dsconvert absorb`)."),
            OptionSpec("mode", value: "split|fold", help: "Absorbed form (default split)."),
            OptionSpec("keep-kv-b", help: "With --absorb: also keep kv_b_proj (γ folded)."),
            OptionSpec("dtype", value: "bf16|f32", help: "With --absorb: storage of the computed tensors (default bf16)."),
            OptionSpec("fp8", help: "Quantize weights to FP8 block scales (as `dsconvert quantize --fp8`)."),
            OptionSpec("fp8-format", value: "e4m3|e5m2", help: "FP8 format (default e4m3)."),
            OptionSpec("block", value: "N", help: "FP8 block edge (default 128)."),
            OptionSpec("skip", value: "REGEX", repeatable: true, help: "Keep tensors whose name matches out of FP8 (repeatable)."),
            OptionSpec("fp8-absorbed", help: "Quantize absorbed per-head W_UK/W_UV too."),
            OptionSpec("kv6", help: "Declare a 6-bit KV cache (6.000 bits/element): mla-kv6; with --calibration, mla-kv6c (per-channel widths and steps calibrated, stored in config.json)."),
            OptionSpec("calibration", path: "TOKENS.json", help: "Calibration token ids for --kv6."),
            OptionSpec("devices", value: "N", help: "Shard routed experts over N devices (as `dsconvert shard`)."),
            OptionSpec("dense", value: "replicate|once", help: "With --devices: non-expert weights on every device (default) or device-0 only."),
            CheckpointOutputOptions.maxShardSize,
            CheckpointOutputOptions.force,
            CheckpointOutputOptions.resume,
        ] + CalibrationInput.options
    )

    public static func run(_ arguments: ParsedArguments, terminal: Terminal) throws -> Int32 {
        let input = URL(fileURLWithPath: try arguments.required("input"))
        let output = URL(fileURLWithPath: try arguments.required("output"))
        var options = ConvertPipeline.Options()
        let absorb = arguments.flag("absorb"), fp8 = arguments.flag("fp8"), kv6 = arguments.flag("kv6")
        for name in ["mode", "dtype"] where arguments.value(name) != nil && !absorb { throw UsageError("--\(name) goes with --absorb") }
        if arguments.flag("keep-kv-b"), !absorb { throw UsageError("--keep-kv-b goes with --absorb") }
        for name in ["fp8-format", "block"] where arguments.value(name) != nil && !fp8 { throw UsageError("--\(name) goes with --fp8") }
        if (!arguments.all("skip").isEmpty || arguments.flag("fp8-absorbed")), !fp8 { throw UsageError("--skip and --fp8-absorbed go with --fp8") }
        if arguments.value("calibration") != nil || arguments.value("calibration-text") != nil, !kv6 { throw UsageError("--calibration and --calibration-text go with --kv6") }
        if arguments.value("dense") != nil, arguments.value("devices") == nil { throw UsageError("--dense goes with --devices") }
        if absorb {
            options.absorb = AbsorbOptions(mode: try arguments.choice("mode", default: AbsorbMode.split), keepKVB: arguments.flag("keep-kv-b"))
            options.absorbDType = try arguments.choice("dtype", default: AbsorbedDType.bf16)
        }
        if fp8 {
            let format = try arguments.choice("fp8-format", default: FP8Format.e4m3)
            options.fp8 = .init(format: format, block: try arguments.integer("block", default: 128, in: 1...4096),
                                policy: try FP8PolicyArguments.policy(arguments))
        }
        if kv6 {
            options.kv6 = try CalibrationInput.load(arguments, model: input, terminal: terminal)
        }
        if arguments.value("devices") != nil {
            options.devices = try arguments.integer("devices", default: 8, in: 1...4096)
            options.denseOnce = try arguments.choice("dense", default: DenseWeights.replicate) == .once
        }
        guard absorb || fp8 || kv6 || options.devices != nil else { throw UsageError("give at least one of --absorb, --fp8, --kv6, --devices") }
        let summary = try ConvertPipeline.run(input: input, output: output, options: options, force: arguments.flag("force"),
                                              shardSize: try ConversionOutputSize.parse(arguments),
                                              resume: arguments.flag("resume")) { terminal.progress($0) }
        terminal.endProgress()
        terminal.out(String(format: "%@: %@ in one pass; %d file(s); %.2f MB -> %.2f MB", output.path, summary.stages.map(\.rawValue).joined(separator: " -> "),
                            summary.files, Double(summary.bytesIn) / 1e6, Double(summary.bytesOut) / 1e6))
        // As quantize says it: which KV cache format the output declares.
        if let kv6 = options.kv6 {
            terminal.out("\(output.path): KV cache " + kv6.declared)
        }
        return ExitCode.success
    }
}
