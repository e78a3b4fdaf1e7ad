import CLI
import Foundation
import SafeTensors
import ReferenceModel
import Validation

/// `dsconvert forward`: the reference forward pass of a checkpoint, written as safetensors.
public enum ForwardCommand: Command {
    public static let spec = CommandSpec(
        name: "forward",
        abstract: "Run the reference forward pass (fp32, OpenBLAS) and write logits, hidden states and routing.",
        discussion: """
        OUT holds logits F32 [batch, seq, vocab]; with --hidden-states, hidden_states.{i} F32
        [batch, seq, hidden] numbered as transformers' output_hidden_states (0 = embedding output,
        i = output of layer i-1, the last one after the final norm); and for every MoE layer
        routing.{layer}.experts I32 [batch, seq, k] (each token's experts, ascending) with
        routing.{layer}.weights F32 in the same order. With --mtp (a V3-family checkpoint holding its
        MTP layer L = num_hidden_layers): mtp_logits F32 [batch, seq - 1, vocab], position i predicting
        token i + 2 from the final hidden state at i and token i + 1, and routing.{L}.* [batch, seq - 1, k].
        """,
        options: [
            OptionSpec("model", path: "DIR", help: "Checkpoint directory."),
            OptionSpec("tokens", path: "TOKENS.json", help: "{\"tokens\": [[id, …], …]}, equal lengths (or --text)."),
            OptionSpec("output", path: "OUT.safetensors", help: "Where to write the outputs."),
            OptionSpec("hidden-states", help: "Also write every hidden state."),
            OptionSpec("mtp", help: "Also run the first multi-token-prediction layer and write its logits."),
            OptionSpec("kv-cache", value: "FORMAT", help: "KV cache to run through: none, bf16, fp8_ds_mla, mla-kv6, mla-kv6c (declared only; default: what the config declares, else none)."),
            OptionSpec("force", help: "Replace an existing OUT.safetensors (a regular file only)."),
        ] + TextTokens.options
    )

    public static func run(_ arguments: ParsedArguments, terminal: Terminal) throws -> Int32 {
        let modelURL = URL(fileURLWithPath: try arguments.required("model"))
        let inputURL = URL(fileURLWithPath: try arguments.path("text") ?? arguments.required("tokens"))
        // Checked before the forward pass: never into an input, never over a file without --force.
        let outputURL = try OutputLocation.checkResultFile(URL(fileURLWithPath: try arguments.required("output")),
                                                           inputs: [modelURL, inputURL] + (try TextTokens.tokenizerInputs(arguments)), force: arguments.flag("force"))
        let tokens = try TextTokens.load(arguments, model: modelURL, terminal: terminal)?.rows ?? TokenFile.load(inputURL)
        var model = try ModelLoader.open(modelURL)
        if let format = arguments.value("kv-cache") { model.kvCache = try KVCacheOption.parse(format, for: model) }
        let mtp = arguments.flag("mtp")
        if mtp, model.config.mtpLayerCount == 0 {
            throw ReferenceModelError.noMTPLayer(model: modelURL.path)
        }
        if mtp, tokens[0].count < 2 {
            throw ReferenceModelError.invalidTokens(path: inputURL.path, reason: "--mtp needs sequences of at least 2 tokens (position i predicts token i + 2 from token i + 1)")
        }
        let result = try model.forward()
            .run(tokens: tokens, source: inputURL.path, recordHiddenStates: arguments.flag("hidden-states"), mtp: mtp) { terminal.progress($0) }
        terminal.endProgress()

        let b = result.batch, s = result.sequenceLength
        var tensors: [(PlannedTensor, any TensorBytes)] = [(PlannedTensor(name: "logits", dtype: .f32, shape: [b, s, result.vocabSize]), result.logits)]
        for (i, hidden) in result.hiddenStates.enumerated() {
            tensors.append((PlannedTensor(name: "hidden_states.\(i)", dtype: .f32, shape: [b, s, result.hiddenSize]), hidden))
        }
        for record in result.routing { tensors += routingTensors(record, batch: b, positions: s) }
        if let m = result.mtp {
            tensors.append((PlannedTensor(name: "mtp_logits", dtype: .f32, shape: [b, m.sequenceLength, result.vocabSize]), m.logits))
            if let record = m.routing { tensors += routingTensors(record, batch: b, positions: m.sequenceLength) }
        }
        try SafeTensorsFileWriter.write(tensors, to: outputURL)
        let mtpNote = result.mtp.map { ", MTP logits [\(b), \($0.sequenceLength), \(result.vocabSize)]" } ?? ""
        terminal.out("\(outputURL.path): logits [\(b), \(s), \(result.vocabSize)]\(mtpNote), \(result.hiddenStates.count) hidden states, \(result.routing.count + (result.mtp?.routing == nil ? 0 : 1)) routing records")
        return ExitCode.success
    }

    /// routing.{layer}.experts I32 and routing.{layer}.weights F32, [batch, positions, k] each.
    static func routingTensors(_ record: RoutingRecord, batch: Int, positions: Int) -> [(PlannedTensor, any TensorBytes)] {
        [(PlannedTensor(name: "routing.\(record.layer).experts", dtype: .i32, shape: [batch, positions, record.k]), record.experts),
         (PlannedTensor(name: "routing.\(record.layer).weights", dtype: .f32, shape: [batch, positions, record.k]), record.weights)]
    }
}
