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
            CheckpointOutputOptions.output,
            OptionSpec("mode", value: "split|fold", help: "Absorbed form (default split)."),
            OptionSpec("keep-kv-b", help: "Also keep kv_b_proj (γ folded) for engines that prefill in MHA form."),
            OptionSpec("dtype", value: "bf16|f32", help: "Storage of the computed tensors (default bf16; never f16: W_UK overflows it)."),
            CheckpointOutputOptions.maxShardSize,
            CheckpointOutputOptions.force,
            CheckpointOutputOptions.resume,
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
