import CLI
import Conversion
import DeepSeekModel
import Foundation
import SafeTensors

/// `dsconvert absorb` / `dsconvert-absorb`: fold MLA's absorbable projections.
public enum AbsorbCommand: Command {
    public static let spec = CommandSpec(
        name: "absorb",
        abstract: "Fold MLA's up-projections, norm gains and softmax scale so attention runs on the cached latent.",
        discussion: """
        --mode split (default; what vLLM, SGLang and llama.cpp do at load time): kv_b_proj becomes per-head
        self_attn.w_uk.weight [heads, qk_nope, kv_lora] and self_attn.w_uv.weight [heads, v_head, kv_lora].
        --mode fold (the paper's literal form): self_attn.q_absorbed.weight = W_UKᵀ·W_UQ per head,
        self_attn.q_rope.weight, self_attn.o_absorbed.weight = W_O·W_UV per head; grows attention weights
        (3.08x for DeepSeek-V2) and costs more at decode. Both modes fold kv_a_layernorm γ, q_a_layernorm γ
        and the softmax scale (with YaRN mscale²) exactly; config.json records the form, the folds and the
        scale the kernel must now use (1.0) under "dsconvert_absorption". Products in f64, rounded once.
        """,
        options: [
            OptionSpec("input", path: "DIR", help: "Input checkpoint (original MLA form)."),
            OptionSpec("output", path: "DIR", help: "Output directory (created atomically)."),
            OptionSpec("mode", value: "split|fold", help: "Absorbed form (default split)."),
            OptionSpec("keep-kv-b", help: "Also keep kv_b_proj (γ folded) for engines that prefill in MHA form."),
            OptionSpec("dtype", value: "bf16|f32", help: "Storage of the computed tensors (default bf16; never f16: W_UK overflows it)."),
            OptionSpec("max-shard-size", value: "SIZE", help: ConversionOutputSize.help),
            OptionSpec("force", help: "Replace an existing output: only a previous dsconvert output (it has dsconvert.json) or an empty directory."),
            OptionSpec("resume", help: "Continue an interrupted run into the same output, keeping its verified shards."),
        ]
    )

    public static func run(_ arguments: ParsedArguments, terminal: Terminal) throws -> Int32 {
        let input = URL(fileURLWithPath: try arguments.required("input"))
        let output = URL(fileURLWithPath: try arguments.required("output"))
        let options = AbsorbOptions(mode: try arguments.choice("mode", default: AbsorbMode.split), keepKVB: arguments.flag("keep-kv-b"))
        let dtype = try arguments.choice("dtype", default: AbsorbedDType.bf16)
        let summary = try AbsorbStage.run(input: input, output: output, options: options, dtype: dtype, force: arguments.flag("force"),
                                          shardSize: try ConversionOutputSize.parse(arguments), resume: arguments.flag("resume")) { terminal.progress($0) }
        terminal.endProgress()
        terminal.out("\(output.path): \(summary.config.attentionForm.rawValue), \(summary.tensors) tensors in \(summary.files) file(s); folds: \(summary.config.absorption!.folds.map(\.rawValue).joined(separator: ", ")); kernel softmax scale 1.0 (was \(String(format: "%.7f", summary.config.absorption!.originalSoftmaxScale)))")
        terminal.out("")
        terminal.out(try AbsorptionCost(config: summary.config).table())
        return ExitCode.success
    }
}

/// `--max-shard-size` shared by the stages: a limit, or by default the input's own layout.
enum ConversionOutputSize {
    static let help = "Largest output shard: 5GB, 500MB, 2GiB or bytes (default: the input's largest shard file; an output that would be one file over 1 GB from a several-file input keeps the input's file count)."

    static func parse(_ arguments: ParsedArguments) throws -> ShardSize {
        try bytes(arguments, "max-shard-size").map(ShardSize.limit) ?? .likeInput
    }

    /// A size option's bytes (nil when absent); a value that is not a size is a usage error naming the option.
    static func bytes(_ arguments: ParsedArguments, _ option: String) throws -> Int? {
        guard let text = arguments.value(option) else { return nil }
        do { return try ConversionOutput.parseSize(text) } catch {
            throw UsageError("--\(option): \((error as? LocalizedError)?.errorDescription ?? "\(error)")")
        }
    }
}
