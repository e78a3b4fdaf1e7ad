import CLI
import DeepSeekModel
import Foundation
import SafeTensors

/// The content of `dsconvert inspect`, as text or JSON (Schemas/inspect.schema.json).
public struct InspectReport: Encodable {
    public struct Attention: Encodable {
        var form: String
        var heads: Int
        var qLoraRank: Int?
        var kvLoraRank: Int
        var qkNopeHeadDim: Int
        var qkRopeHeadDim: Int
        var vHeadDim: Int
        var softmaxScale: Double
        var ropeTheta: Double
        var ropeScaling: RopeScaling?

        enum CodingKeys: String, CodingKey {
            case form, heads
            case qLoraRank = "q_lora_rank"
            case kvLoraRank = "kv_lora_rank"
            case qkNopeHeadDim = "qk_nope_head_dim"
            case qkRopeHeadDim = "qk_rope_head_dim"
            case vHeadDim = "v_head_dim"
            case softmaxScale = "softmax_scale"
            case ropeTheta = "rope_theta"
            case ropeScaling = "rope_scaling"
        }
    }

    public struct Weights: Encodable {
        var files: [String]
        var tensorCount: Int
        var parameters: Int
        var bytes: Int
        var bytesByDType: [String: Int]

        enum CodingKeys: String, CodingKey {
            case files
            case tensorCount = "tensor_count"
            case parameters
            case bytes
            case bytesByDType = "bytes_by_dtype"
        }
    }

    public struct FP8: Encodable {
        var format: String
        var blockSize: Int
        var tensors: Int
        /// Tensor-parallel degrees vLLM's 128-divisibility rule allows, with routed experts split by TP.
        var tpDegrees: [Int]
        /// The same with expert parallelism (experts whole on a device).
        var tpDegreesWithExpertParallelism: [Int]

        enum CodingKeys: String, CodingKey {
            case format
            case blockSize = "block_size"
            case tensors
            case tpDegrees = "tp_degrees"
            case tpDegreesWithExpertParallelism = "tp_degrees_with_expert_parallelism"
        }
    }

    public struct TensorEntry: Encodable {
        var name: String
        var dtype: String
        var shape: [Int]
        var file: String
    }

    public struct Check: Encodable {
        /// What the check found; encoded as its raw value.
        enum Status: String, Encodable { case ok, invalid, configOnly = "config-only" }
        var status: Status
        var problems: [String]
    }

    var path: String
    var architecture: String
    var modelType: String
    var hiddenSize: Int
    var vocabSize: Int
    var layers: Int
    /// Multi-token-prediction layers after the main stack.
    var mtpLayers: Int
    var attention: Attention
    var accounting: ModelAccounting
    var absorptionCost: AbsorptionCost
    var absorption: AbsorptionRecord?
    var kvCacheDeclared: KVCacheRecord?
    var weights: Weights?
    var fp8: FP8?
    var tensors: [TensorEntry]?
    var check: Check

    enum CodingKeys: String, CodingKey {
        case path, architecture
        case modelType = "model_type"
        case hiddenSize = "hidden_size"
        case vocabSize = "vocab_size"
        case layers
        case mtpLayers = "mtp_layers"
        case attention, accounting
        case absorptionCost = "absorption_cost"
        case absorption
        case kvCacheDeclared = "kv_cache_declared"
        case weights, fp8, tensors, check
    }

    /// Throws `sizeOverflow` naming `configPath` if a count does not fit (never for a config
    /// `DeepSeekConfig.decode` accepted: it runs the same checked accounting).
    public init(path: String, configPath: String, config: DeepSeekConfig, checkpoint: Checkpoint?, listTensors: Bool) throws {
        self.path = path
        architecture = config.architecture.rawValue
        modelType = config.modelType ?? (config.architecture == .deepseekV2 ? "deepseek_v2" : "deepseek_v3")
        hiddenSize = config.hiddenSize
        vocabSize = config.vocabSize
        layers = config.numHiddenLayers
        mtpLayers = config.mtpLayerCount
        attention = Attention(form: config.attentionForm.rawValue, heads: config.numAttentionHeads, qLoraRank: config.qLoraRank, kvLoraRank: config.kvLoraRank,
                              qkNopeHeadDim: config.qkNopeHeadDim, qkRopeHeadDim: config.qkRopeHeadDim, vHeadDim: config.vHeadDim,
                              softmaxScale: config.softmaxScale, ropeTheta: config.ropeTheta, ropeScaling: config.ropeScaling)
        do {
            accounting = try ModelAccounting(config: config)
            absorptionCost = try AbsorptionCost(config: config)
        } catch let overflow as SizeOverflow {
            throw DeepSeekModelError.sizeOverflow(path: configPath, quantity: overflow.quantity)
        }
        absorption = config.absorption
        kvCacheDeclared = config.kvCache
        if let checkpoint {
            var byDType: [String: Int] = [:]
            for t in checkpoint.tensors { byDType[t.dtype.rawValue, default: 0] += t.byteCount }
            weights = Weights(files: checkpoint.shardNames, tensorCount: checkpoint.tensors.count,
                              parameters: checkpoint.tensors.reduce(0) { $0 + $1.elementCount },
                              bytes: checkpoint.totalTensorBytes, bytesByDType: byDType)
            if let q = config.quantization {
                let fp8Tensors = checkpoint.tensors.filter { $0.dtype.isBlockFP8 }.map { (name: $0.name, shape: $0.shape) }
                fp8 = FP8(format: q.format.rawValue, blockSize: q.block, tensors: fp8Tensors.count,
                          tpDegrees: FP8Partitioning.supportedDegrees(fp8Tensors: fp8Tensors, block: q.block, expertParallel: false),
                          tpDegreesWithExpertParallelism: FP8Partitioning.supportedDegrees(fp8Tensors: fp8Tensors, block: q.block, expertParallel: true))
            }
            if listTensors {
                tensors = checkpoint.tensors.map { TensorEntry(name: $0.name, dtype: $0.dtype.rawValue, shape: $0.shape, file: checkpoint.shardName(of: $0.name) ?? "") }
            }
            // Block checkpoints also get their values checked: NaN codes and bad scales are not
            // visible in the headers, and dequantization would pass them on.
            let problems = CheckpointChecker.check(config: config, checkpoint: checkpoint).problems
                + (config.quantization != nil ? FP8Integrity.problems(in: checkpoint) : [])
            check = Check(status: problems.isEmpty ? .ok : .invalid, problems: problems.map { $0.errorDescription ?? "\($0)" })
        } else {
            check = Check(status: .configOnly, problems: [])
        }
    }

    public func encoded() throws -> Data {
        try PrettyJSON.encode(self)
    }

    public func text() -> String {
        (["\(Terminal.escaped(path)): \(architecture) (\(Terminal.escaped(modelType)))"] + architectureLines() + cacheLines() + contentLines()).joined(separator: "\n")
    }

    /// One labelled line of the text report.
    private static func row(_ label: String, _ value: String) -> String { "  " + label.padding(toLength: 16, withPad: " ", startingAt: 0) + value }

    /// Layers, attention, rope, absorption, parameter counts and routing.
    private func architectureLines() -> [String] {
        let row = Self.row
        var lines: [String] = []
        let kinds = accounting.layerKinds
        lines.append(row("layers", "\(layers): dense \(Format.ranges(kinds.dense)), MoE \(Format.ranges(kinds.moe))"))
        let a = attention
        let query = a.qLoraRank.map { "q_lora \($0)" } ?? "q_proj (no query compression)"
        lines.append(row("attention", "\(a.form), \(a.heads) heads, \(query), kv_lora \(a.kvLoraRank), nope \(a.qkNopeHeadDim), rope \(a.qkRopeHeadDim), v \(a.vHeadDim)"))
        var rope = "theta \(Format.number(a.ropeTheta))"
        if let s = a.ropeScaling {
            rope += ", \(s.type) factor \(Format.number(s.factor ?? 1)), mscale \(Format.number(s.mscale ?? 0)), mscale_all_dim \(Format.number(s.mscaleAllDim ?? 0))"
        }
        lines.append(row("rope", rope + String(format: "; softmax scale %.7f", a.softmaxScale)))
        if let ab = absorption {
            lines.append(row("absorbed", "folds \(ab.folds.map(\.rawValue).joined(separator: ", ")); kernel softmax scale \(Format.number(ab.softmaxScale)) (was \(String(format: "%.7f", ab.originalSoftmaxScale))); \(ab.dtype.rawValue) storage\(ab.keepsKVB ? "; kv_b_proj kept" : "")"))
        }
        lines.append(row("parameters", "\(Format.grouped(accounting.totalParameters)) total, \(Format.grouped(accounting.activeParameters)) active per token (\(Format.grouped(accounting.activeParametersWithEmbedding)) with the embedding table)"))
        if accounting.mtpParameters > 0 {
            lines.append(row("MTP layers", "\(Format.ranges(Array(layers..<(layers + mtpLayers)))): \(Format.grouped(accounting.mtpParameters)) parameters beyond the main model (speculative decoding; not in its logits)"))
        }
        if let r = accounting.routing {
            var text = "\(r.method): \(r.routedExperts) routed + \(r.sharedExperts) shared experts, top-\(r.expertsPerToken)"
            if r.groups > 1 { text += ", \(r.groups) groups of \(r.expertsPerGroup), top-\(r.topkGroups) groups" }
            text += ", M = \(r.deviceBoundM), scaling \(Format.number(r.routedScalingFactor)), norm_topk_prob \(r.normTopkProb)"
            lines.append(row("routing", text))
        } else {
            lines.append(row("routing", "none (no MoE layers)"))
        }
        return lines
    }

    /// KV-cache bytes per format, the declared KV format, and absorb's cost table.
    private func cacheLines() -> [String] {
        let row = Self.row
        var lines: [String] = []
        for kv in accounting.kvCache {
            lines.append(row(kv.format == accounting.kvCache.first?.format ? "KV cache/token" : "", "\(kv.format.padding(toLength: 10, withPad: " ", startingAt: 0)) \(kv.bytesPerTokenPerLayer) B/layer, \(Format.grouped(kv.bytesPerToken)) B for \(layers) layers (\(String(format: "%.3f", kv.bitsPerElement)) bits/element); \(String(format: "%.1f%%", kv.reductionVsMHA * 100)) below MHA, \(String(format: "%.1f%%", kv.reductionVsDeepSeek67B * 100)) below DeepSeek 67B"))
        }
        lines.append(row("", "MHA of these dimensions \(Format.grouped(accounting.mhaKVBytesPerToken)) B/token; DeepSeek 67B (GQA, 95 layers) \(Format.grouped(accounting.deepSeek67BKVBytesPerToken)) B/token"))
        if let kv = kvCacheDeclared {
            // mla-kv6c's channels cover the main layers, and the first MTP layer when it was calibrated too.
            let channels = kv.channels.map { c in
                ", channels for layers 0-\(max(c.count - 1, 0))"
                    + (c.count > layers ? (mtpLayers > 0 ? " (the MTP layer's included)" : " (the last for an MTP layer this checkpoint does not hold)")
                       : mtpLayers > 0 ? " (none for the MTP layer: its cache is fp32)" : "")
            } ?? ""
            lines.append(row("KV declared", "\(kv.format), \(kv.bytesPerTokenPerLayer) B/token/layer, " + (kv.calibration.map { "calibrated on \($0.tokens) tokens of \(Terminal.escaped($0.source))" + (kv.equalized ? ", per-channel equalization folded" : "") } ?? "no calibration") + channels))
        }
        lines.append(row("absorb cost", ""))
        // AbsorptionCost's init already built this table with checked arithmetic, so it cannot throw here.
        for line in ((try? absorptionCost.table()) ?? "").split(separator: "\n") { lines.append("    " + line) }
        return lines
    }

    /// The weights' counts and dtypes, FP8 details, the check's outcome and (with --tensors) every tensor.
    private func contentLines() -> [String] {
        let row = Self.row
        var lines: [String] = []
        if let w = weights {
            let dtypes = w.bytesByDType.sorted { $0.key < $1.key }.map { "\($0.key) \(Format.bytes($0.value))" }.joined(separator: ", ")
            lines.append(row("weights", "\(w.tensorCount) tensors, \(Format.grouped(w.parameters)) parameters in \(w.files.count) file(s); \(dtypes)"))
            if let f = fp8 {
                lines.append(row("fp8", "\(f.tensors) \(f.format) tensors, \(f.blockSize)x\(f.blockSize) blocks; vLLM tensor parallelism: TP \(f.tpDegrees.map(String.init).joined(separator: ", ")) (experts split), TP \(f.tpDegreesWithExpertParallelism.map(String.init).joined(separator: ", ")) with expert parallelism"))
            }
        } else {
            lines.append(row("weights", "none (described from config.json only)"))
        }
        switch check.status {
        case .ok: lines.append(row("check", "ok: every tensor config.json implies is present with its shape, nothing else"))
        case .configOnly: lines.append(row("check", "not run (no weights)"))
        case .invalid:
            lines.append(row("check", "INVALID: \(check.problems.count) problem(s)"))
            for p in check.problems.prefix(20) { lines.append("    - " + Terminal.escaped(p)) }
            if check.problems.count > 20 { lines.append("    … \(check.problems.count - 20) more") }
        }
        if let tensors {
            lines.append("  tensors:")
            for t in tensors { lines.append("    \(Terminal.escaped(t.name))  \(t.dtype) \(t.shape)  \(Terminal.escaped(t.file))") }
        }
        return lines
    }
}

/// Number formatting for reports.
enum Format {
    static func grouped(_ n: Int) -> String {
        let digits = String(n.magnitude)
        var out = ""
        for (i, c) in digits.reversed().enumerated() {
            if i > 0, i % 3 == 0 { out.append(",") }
            out.append(c)
        }
        return (n < 0 ? "-" : "") + String(out.reversed())
    }

    static func number(_ x: Double) -> String {
        x == x.rounded() && abs(x) < 1e15 ? String(Int(x)) : String(x)
    }

    static func bytes(_ n: Int) -> String {
        let units = ["B", "KB", "MB", "GB", "TB"]
        var value = Double(n), unit = 0
        while value >= 1000, unit < units.count - 1 { value /= 1000; unit += 1 }
        return unit == 0 ? "\(n) B" : String(format: "%.2f %@", value, units[unit])
    }

    /// "0, 2-5" for [0, 2, 3, 4, 5].
    static func ranges(_ values: [Int]) -> String {
        guard !values.isEmpty else { return "none" }
        var parts: [String] = []
        var start = values[0], previous = values[0]
        for v in values.dropFirst() + [Int.min] {
            if v == previous + 1 { previous = v; continue }
            parts.append(start == previous ? "\(start)" : "\(start)-\(previous)")
            start = v
            previous = v
        }
        return parts.joined(separator: ", ")
    }
}
