import CLI
import Foundation
import SafeTensors
import ReferenceModel
import Validation
import Numerics
import DeepSeekModel

/// `dsconvert validate` / `dsconvert-validate`: drift of a converted checkpoint against its original.
public enum ValidateCommand: Command {
    public static let spec = CommandSpec(
        name: "validate",
        abstract: "Run reference and candidate through the reference forward pass and report the drift.",
        discussion: """
        Prints a table (per hidden state: relative error and cosine; logits: max |Δ|, KL(reference‖candidate)
        mean and max in nats, top-1 agreement; routing agreement; perplexity on the reference's held-out
        text when it has heldout.json). Exit 0 within thresholds, 1 naming the worst metric otherwise.
        Tokens default to the reference's tokens.json, else a deterministic sample; --text encodes a
        text file with the reference's tokenizer.json (or --tokenizer) instead, and the perplexity is
        then that text's own (as llama-perplexity --kl-divergence reports it, with KL mean, max and
        99th percentile and top-1 agreement).
        Routed experts that one model or both left unchosen are run on up to 32 rows of the
        reference's input to their layer in both models and compared, so every expert is checked.
        With V3-family models that both hold an MTP layer, its drift is reported too (not judged).
        Default thresholds: --max-kl-mean 0.01 --max-kl-max 0.5 --min-top1 0.9 --min-routing 0.8
        --max-ppl-ratio 1.05 --max-expert-error 0.25 (no logit limit); give 'none' to drop one.
        """,
        options: [
            OptionSpec("reference", path: "DIR", help: "The original checkpoint."),
            OptionSpec("candidate", path: "DIR", help: "The converted checkpoint."),
            OptionSpec("tokens", path: "TOKENS.json", help: "Token ids to run ({\"tokens\": [[…], …]})."),
            OptionSpec("kv-cache", value: "FORMAT", help: "Candidate's KV cache: none, bf16, fp8_ds_mla, mla-kv6, mla-kv6c (declared only; default: what its config declares, else none)."),
            OptionSpec("json", path: "REPORT.json", standardOutput: true, help: "Also write the report as JSON (Schemas/validate.schema.json); - for stdout, the table then on stderr."),
            OptionSpec("force", help: "Replace an existing REPORT.json (a regular file only)."),
            OptionSpec("max-logit-delta", value: "X", help: "Largest allowed max |Δlogit|."),
            OptionSpec("max-kl-mean", value: "X", help: "Largest allowed mean KL in nats."),
            OptionSpec("max-kl-max", value: "X", help: "Largest allowed per-token KL in nats."),
            OptionSpec("min-top1", value: "X", help: "Smallest allowed top-1 agreement (0-1)."),
            OptionSpec("min-routing", value: "X", help: "Smallest allowed routing agreement (0-1)."),
            OptionSpec("max-ppl-ratio", value: "X", help: "Largest allowed candidate/reference perplexity ratio."),
            OptionSpec("max-expert-error", value: "X", help: "Largest allowed relative error of a routed expert no token chose, run on the same rows in both models."),
        ] + TextTokens.options
    )

    public static func run(_ arguments: ParsedArguments, terminal: Terminal) throws -> Int32 {
        let referenceURL = URL(fileURLWithPath: try arguments.required("reference"))
        let candidateURL = URL(fileURLWithPath: try arguments.required("candidate"))
        let thresholds = try parseThresholds(arguments)
        let tokensPath = try arguments.path("text") ?? arguments.path("tokens")
        // Checked before the comparison: never into an input, never over a file without --force.
        let jsonTarget = try arguments.output("json")
        var jsonURL: URL?
        if case .file(let path) = jsonTarget {
            jsonURL = try OutputLocation.checkResultFile(URL(fileURLWithPath: path), inputs: [referenceURL, candidateURL] + (tokensPath.map { [URL(fileURLWithPath: $0)] } ?? []) + (try TextTokens.tokenizerInputs(arguments)),
                                                         force: arguments.flag("force"))
        }
        let reference = try ModelLoader.open(referenceURL)
        var candidate = try ModelLoader.open(candidateURL)
        if let format = arguments.value("kv-cache") { candidate.kvCache = try KVCacheOption.parse(format, for: candidate) }

        let tokens: [[Int]], label: String
        let fixtureTokens = referenceURL.appendingPathComponent("tokens.json")
        // A text is measured as llama-perplexity --kl-divergence does: perplexity on the text itself.
        let text = try TextTokens.load(arguments, model: referenceURL, terminal: terminal)
        let fromText = text != nil
        if let text {
            (tokens, label) = text
        } else if let path = tokensPath {
            tokens = try TokenFile.load(URL(fileURLWithPath: path)); label = path
        } else if FileManager.default.fileExists(atPath: fixtureTokens.path) {
            tokens = try TokenFile.load(fixtureTokens); label = fixtureTokens.path
        } else {
            tokens = TokenFile.deterministicSample(vocabSize: reference.config.vocabSize); label = "deterministic sample"
        }
        let heldoutURL = referenceURL.appendingPathComponent("heldout.json")
        let heldout = !fromText && FileManager.default.fileExists(atPath: heldoutURL.path) ? (try TokenFile.load(heldoutURL), heldoutURL.path) : nil
        // Perplexity predicts each token from the ones before it: a row of one token has nothing to
        // predict (the mean over no tokens was NaN, which failed every comparison and the JSON report).
        if let rows = heldout?.0, rows[0].count < 2 {
            throw ReferenceModelError.invalidTokens(path: heldoutURL.path, reason: "rows of \(rows[0].count) token give no next-token perplexity (at least 2 are needed)")
        }

        let report = try Validator.compare(reference: reference, candidate: candidate, tokens: tokens, tokensLabel: label,
                                           heldout: heldout.map { (tokens: $0.0, label: $0.1) }, thresholds: thresholds,
                                           perplexityOnTokens: fromText) { terminal.progress($0) }
        terminal.endProgress()
        if let t = report.timing {
            // A measurement, not a result: on stderr, so the drift table on stdout stays reproducible.
            terminal.note(String(format: "timing: %.2f s wall; weights %.2f s, compute %.2f s; prefetched %.2f GB in %.2f s alongside (%d page faults waited for the disk)",
                                 t.wallSeconds, t.weightSeconds, t.computeSeconds, Double(t.prefetchedBytes) / 1e9, t.prefetchSeconds, t.prefetchDiskFaults))
        }
        try write(report, json: jsonTarget, checkedURL: jsonURL, terminal: terminal)
        if let worst = report.verdict.failures.first {
            terminal.error("dsconvert validate", "drift over threshold: \(worst)" + (report.verdict.failures.count > 1 ? " (\(report.verdict.failures.count) metrics over)" : ""))
            return ExitCode.failure
        }
        return ExitCode.success
    }

    /// The table on stdout and the JSON to its file; with `--json -` the JSON alone on stdout (for a
    /// pipe) and the table, for the person, on stderr.
    private static func write(_ report: DriftReport, json: OutputTarget?, checkedURL: URL?, terminal: Terminal) throws {
        switch json {
        case .standardOutput:
            for line in report.table().split(separator: "\n", omittingEmptySubsequences: false) { terminal.note(String(line)) }
            terminal.outExactly([UInt8](try report.encoded()))
        case .file, nil:
            terminal.out(report.table())
            if let checkedURL { try AtomicFile.write(try report.encoded(), to: checkedURL) }
        }
    }

    static func parseThresholds(_ arguments: ParsedArguments) throws -> DriftThresholds {
        var t = DriftThresholds.defaults
        func limit(_ name: String, _ current: Double?) throws -> Double? {
            guard let text = arguments.value(name) else { return current }
            if text == "none" { return nil }
            guard let value = Double(text), value.isFinite, value >= 0 else {
                throw UsageError("--\(name) takes a non-negative number or 'none', got '\(text)'")
            }
            return value
        }
        t.maxLogitDelta = try limit("max-logit-delta", t.maxLogitDelta)
        t.maxKLMean = try limit("max-kl-mean", t.maxKLMean)
        t.maxKLMax = try limit("max-kl-max", t.maxKLMax)
        t.minTop1Agreement = try limit("min-top1", t.minTop1Agreement)
        t.minRoutingAgreement = try limit("min-routing", t.minRoutingAgreement)
        // Agreements are fractions: a floor above 1 could never pass.
        for (name, value) in [("min-top1", t.minTop1Agreement), ("min-routing", t.minRoutingAgreement)] where (value ?? 0) > 1 {
            throw UsageError("--\(name) is a fraction of positions (0-1), got '\(arguments.value(name) ?? "")'")
        }
        t.maxPerplexityRatio = try limit("max-ppl-ratio", t.maxPerplexityRatio)
        t.maxExpertRelativeError = try limit("max-expert-error", t.maxExpertRelativeError)
        return t
    }
}

/// `--kv-cache` shared by forward and validate.
enum KVCacheOption {
    /// The cache `text` names for `model`: none, a fixed format, or mla-kv6c when the model declares it
    /// (its per-channel parameters come from the checkpoint's calibration).
    static func parse(_ text: String, for model: LoadedModel) throws -> KVCacheSetting? {
        if text == "none" { return nil }
        guard let format = KVCacheCodec.Format(rawValue: text) else {
            throw UsageError("--kv-cache takes none, \(KVCacheCodec.Format.allCases.map(\.rawValue).joined(separator: ", ")), got '\(text)'")
        }
        if let fixed = KVCacheSetting(fixed: format) { return fixed }
        guard let declared = model.kvCache, declared.format == format else {
            throw UsageError("--kv-cache \(text) needs a checkpoint that declares it (quantize --kv6 --calibration): its per-channel widths and steps are calibrated")
        }
        return declared
    }
}
