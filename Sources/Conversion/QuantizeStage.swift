import DeepSeekModel
import Foundation
import Numerics
import SafeTensors
import Tokenizer
import ReferenceModel

/// `dsconvert quantize --fp8` and `--dequantize`: tensor by tensor, streaming.
public enum QuantizeStage {
    public struct FP8Options: Sendable {
        public var format: FP8Format
        public var block: Int
        public var policy: FP8Policy

        public init(format: FP8Format = .e4m3, block: Int = 128, policy: FP8Policy = FP8Policy()) {
            self.format = format
            self.block = block
            self.policy = policy
        }
    }

    public struct KV6Options: Sendable {
        /// Calibration sequences: they declare the calibrated mla-kv6c cache; nil declares mla-kv6.
        public var calibration: [[Int]]?
        public var calibrationSource: String

        public init(calibration: [[Int]]?, calibrationSource: String) {
            self.calibration = calibration
            self.calibrationSource = calibrationSource
        }

        /// What the output declares, as the commands' summaries say it.
        public var declared: String {
            calibration != nil ? "mla-kv6c declared, per-channel widths and steps calibrated" : "mla-kv6 declared (no calibration: per-token scales)"
        }
    }

    public struct Summary: Sendable {
        public let tensors: Int
        public let quantized: Int
        public let files: Int
        public let bytesIn: Int
        public let bytesOut: Int
    }

    /// Weights to FP8 with block scales, in the DeepSeek-V3 / Hugging Face convention.
    public static func quantize(input: URL, output: URL, options: FP8Options, force: Bool,
                                shardSize: ShardSize = .likeInput, resume: Bool = false,
                                progress: ((String) -> Void)? = nil) throws -> Summary {
        try run(input: input, output: output, fp8: options, kv6: nil, force: force, shardSize: shardSize, resume: resume, progress: progress)
    }

    /// FP8 weights and/or the mla-kv6 cache format (with its calibration folded into the weights), in one pass.
    public static func run(input: URL, output: URL, fp8: FP8Options?, kv6: KV6Options?, force: Bool,
                           shardSize: ShardSize = .likeInput, resume: Bool = false,
                           progress: ((String) -> Void)? = nil) throws -> Summary {
        let source = try CheckpointSource(directory: input)
        let step = try QuantizeStep(source: source, fp8: fp8, kv6: kv6, progress: progress)
        let layout = try ConversionOutput.write(step, to: output, inputStages: source.stages, force: force, shardSize: shardSize,
                                                resume: resume, label: "quantize", progress: progress)
        return Summary(tensors: step.planned.count, quantized: step.quantizedCount, files: layout.shards.count,
                       bytesIn: source.checkpoint.totalTensorBytes, bytesOut: layout.totalTensorBytes)
    }

    /// FP8 block weights back to bf16 on the CPU (the replacement for DeepSeek's GPU-only
    /// `fp8_cast_bf16.py`): w = q · scale in f32, rounded to bf16, as that script does. Every F8 tensor
    /// needs its `_scale_inv`; the block size comes from config.json.
    public static func dequantize(input: URL, output: URL, force: Bool, shardSize: ShardSize = .likeInput,
                                  resume: Bool = false, progress: ((String) -> Void)? = nil) throws -> Summary {
        let source = try CheckpointSource(directory: input)
        let step = try DequantizeStep(source: source)
        let layout = try ConversionOutput.write(step, to: output, inputStages: source.stages, force: force, shardSize: shardSize,
                                                resume: resume, label: "dequantize", progress: progress)
        return Summary(tensors: step.planned.count, quantized: step.dequantized.count, files: layout.shards.count,
                       bytesIn: source.checkpoint.totalTensorBytes, bytesOut: layout.totalTensorBytes)
    }
}

/// The quantize step: FP8 block weights with their `_scale_inv` companions and/or the declaration of a
/// 6-bit KV cache (mla-kv6, or with calibration tokens mla-kv6c and its per-channel parameters); tensors
/// it leaves alone pass through unchanged.
public final class QuantizeStep: TensorSource {
    public let source: TensorSource
    public let document: ConfigDocument
    public let stages: [ConversionManifest.Stage]
    public let planned: [PlannedTensor]
    public var directory: URL { source.directory }
    public var quantizedCount: Int { quantized.count }
    private let byName: [String: PlannedTensor]
    private let quantized: Set<String>
    private let quantizer: FP8BlockQuantizer
    /// Scales of the tensor quantized last, until written.
    private var pendingScales: [String: [UInt8]] = [:]
    /// Block scales of bf16 weights whose scale tensor was written before their codes (a few KB per
    /// weight, for the shards being written), so the codes pass skips the amax.
    private var knownScales: [String: [Float]] = [:]

    /// - Parameter progress: reports the calibration forward pass (with `kv6.calibration`).
    public init(source: TensorSource, fp8: QuantizeStage.FP8Options?, kv6: QuantizeStage.KV6Options?,
                progress: ((String) -> Void)? = nil) throws {
        let input = source.config
        let path = source.directory.path
        if let fp8, let existing = input.quantization { try Self.checkSameBlocks(fp8, existing: existing, path: path) }
        if kv6 != nil, input.kvCache != nil {
            throw ConversionError.unsupportedInput(path: path, reason: "the KV-cache format is already declared (\(input.kvCache!.format))")
        }
        guard input.placement == nil else {
            throw ConversionError.unsupportedInput(path: path, reason: "quantize a checkpoint before sharding it")
        }
        self.source = source
        // An FP8 input keeps its blocks: weights already FP8 pass through (codes and scales), and the
        // bf16 ones the policy picks are quantized in the input's format and block.
        let options = fp8 ?? input.quantization.map { QuantizeStage.FP8Options(format: $0.format, block: $0.block) }
            ?? QuantizeStage.FP8Options()
        let policy = fp8 != nil ? options.policy : FP8Policy.none
        quantizer = FP8BlockQuantizer(format: options.format, block: options.block)
        let fp8DType = options.format.dtype

        var outConfig = input
        outConfig.kvCache = try Self.kvCacheDeclaration(kv6, input: input, source: source, progress: progress)
        let plan = try Self.plan(outConfig.expectedTensors(), source: source, policy: policy, fp8DType: fp8DType, block: options.block)
        let (planned, quantized, fresh) = (plan.planned, plan.quantized, plan.fresh)
        if fp8 != nil, kv6 == nil, input.quantization != nil, fresh == 0 {
            throw ConversionError.unsupportedInput(path: path, reason: "the checkpoint is already FP8 (quantization_config present): nothing left to quantize")
        }
        self.planned = planned
        self.quantized = quantized
        byName = Dictionary(uniqueKeysWithValues: planned.map { ($0.name, $0) })

        let stageOptions = Self.stageOptions(fp8: fp8 != nil ? options : nil, kv6: kv6)
        stages = source.stages + [.init(stage: .quantize, options: stageOptions, input: path)]
        var document = source.document
        if fp8 != nil, input.quantization == nil {
            document = try document.setting("quantization_config", to: QuantizationConfig(format: options.format, block: options.block))
        }
        if let record = outConfig.kvCache { document = try document.setting(KVCacheRecord.configKey, to: record) }
        self.document = document
    }

    /// The KV-cache declaration: mla-kv6, or with calibration tokens mla-kv6c with every layer's
    /// calibrated channels (no weight changes: its parameters live in `config.json`).
    private static func kvCacheDeclaration(_ kv6: QuantizeStage.KV6Options?, input: DeepSeekConfig, source: TensorSource,
                                           progress: ((String) -> Void)?) throws -> KVCacheRecord? {
        guard let kv6 else { return nil }
        var format = KVCacheFormat.mlaKV6
        var calibration: KVCacheRecord.Calibration?
        var channels: [KVCacheRecord.LayerChannels]?
        if let tokens = kv6.calibration {
            format = .mlaKV6C
            let codecs = try KVChannelCalibration.calibrate(config: input, weights: SourceWeights(source), tokens: tokens,
                                                            source: kv6.calibrationSource, progress: progress)
            channels = codecs.enumerated().map { KVCacheRecord.LayerChannels(layer: $0.offset, codec: $0.element) }
            calibration = .init(source: kv6.calibrationSource, tokens: tokens.reduce(0) { $0 + $1.count }, rule: KVChannelCalibration.rule)
        }
        let l = input.kvLoraRank, r = input.qkRopeHeadDim
        return KVCacheRecord(format: format.rawValue, bytesPerTokenPerLayer: format.bytesPerTokenPerLayer(kvLoraRank: l, ropeDim: r),
                             bitsPerElement: format.bitsPerElement(kvLoraRank: l, ropeDim: r), equalized: false, calibration: calibration,
                             layout: KVCacheRecord.layout(format, latent: l, rope: r), channels: channels)
    }

    /// `policy`'s answer for `t`; a `--skip` pattern that gives up on its name is refused naming both.
    private static func shouldQuantize(_ t: ExpectedTensor, policy: FP8Policy) throws -> Bool {
        do { return try policy.shouldQuantize(name: t.name, shape: t.shape) } catch let refusal as NamePattern.Refusal {
            throw ConversionError.skipPatternRefused(pattern: refusal.pattern, reason: refusal.reason)
        }
    }

    /// What the step writes, tensor by tensor: FP8 input weights keep their dtype and scales, bf16 ones
    /// the policy picks become FP8 (`fresh` counts them), the rest keep their dtype.
    private static func plan(_ tensors: [ExpectedTensor], source: TensorSource, policy: FP8Policy, fp8DType: DType, block: Int) throws
        -> (planned: [PlannedTensor], quantized: Set<String>, fresh: Int) {
        var planned: [PlannedTensor] = []
        var quantized = Set<String>()
        var fresh = 0
        for t in tensors {
            guard let info = source.info(t.name) else {
                throw DeepSeekModelError.missingTensor(file: source.directory.path, tensor: t.name, expectedShape: t.shape)
            }
            let scale = PlannedTensor(name: t.name + QuantizationConfig.scaleSuffix, dtype: .f32, shape: QuantizationConfig.scaleShape(of: t.shape, block: block))
            if info.dtype.isBlockFP8 {
                planned += [PlannedTensor(name: t.name, dtype: info.dtype, shape: t.shape), scale]
            } else if try Self.shouldQuantize(t, policy: policy) {
                fresh += 1
                quantized.insert(t.name)
                planned += [PlannedTensor(name: t.name, dtype: fp8DType, shape: t.shape), scale]
            } else {
                planned.append(PlannedTensor(name: t.name, dtype: info.dtype, shape: t.shape))
            }
        }
        return (planned, quantized, fresh)
    }

    /// The manifest's record of the options (`--resume` keys on them).
    private static func stageOptions(fp8 options: QuantizeStage.FP8Options?, kv6: QuantizeStage.KV6Options?) -> [String: String] {
        var stageOptions: [String: String] = [:]
        if let options {
            stageOptions = ["fp8": options.format.rawValue, "block": String(options.block), "fp8_absorbed": String(options.policy.quantizeAbsorbed)]
            // A JSON list of the patterns: joined by spaces, `--skip 'a b'` and `--skip a --skip b`
            // (which skip different tensors) were recorded, and resumed, alike.
            if !options.policy.skip.isEmpty { stageOptions["skip"] = "[" + options.policy.skipPatterns.map(CompactJSON.quoted).joined(separator: ",") + "]" }
        }
        if let kv6 {
            stageOptions["kv6"] = kv6.calibration == nil ? KVCacheFormat.mlaKV6.rawValue : KVCacheFormat.mlaKV6C.rawValue
            stageOptions["calibration"] = kv6.calibration == nil ? "none" : kv6.calibrationSource
            // The ids themselves, not just the file's name: a resumed run must not keep a declaration
            // calibrated on other tokens, and the manifest should say what was used.
            if let tokens = kv6.calibration {
                stageOptions["calibration_sha256"] = tokens.flatMap { $0.map { Int64($0).littleEndian } }.withUnsafeBytes { SHA256.hex($0) }
            }
        }
        return stageOptions
    }

    /// `quantize --fp8` over an FP8 input (the tensors a fold left in bf16) must keep the input's
    /// blocks: one checkpoint has one `quantization_config`. Re-blocking means `--dequantize` first.
    private static func checkSameBlocks(_ fp8: QuantizeStage.FP8Options, existing: QuantizationConfig, path: String) throws {
        guard fp8.block == existing.block, fp8.format == existing.format else {
            throw ConversionError.unsupportedInput(path: path, reason: "the checkpoint is already FP8 (\(existing.format.rawValue), \(existing.block)x\(existing.block) blocks); --dequantize first to quantize it with other blocks")
        }
    }

    public func info(_ name: String) -> PlannedTensor? { byName[name] }
    public func path(of name: String) -> String { source.path(of: name) }

    public func payload(_ name: String) throws -> TensorPayload {
        if let scales = pendingScales[name] { return .bytes(scales) }
        if name.hasSuffix(QuantizationConfig.scaleSuffix), case let weight = String(name.dropLast(QuantizationConfig.scaleSuffix.count)), quantized.contains(weight) {
            // Asked before its weight (scales precede codes in a file: F32 sorts before F8), or without
            // it when resuming after the weight's shard was kept: the block scales alone.
            _ = try quantize(weight, codes: false)
            return .bytes(pendingScales.removeValue(forKey: name)!)
        }
        guard byName[name] != nil else { throw DeepSeekModelError.missingTensor(file: source.directory.path, tensor: name, expectedShape: []) }
        if quantized.contains(name) { return .bytes(try quantize(name, codes: true)) }
        return try source.payload(name)
    }

    /// Codes of weight `name` (none if `codes` is false); its scales wait in `pendingScales`.
    private func quantize(_ name: String, codes wantCodes: Bool) throws -> [UInt8] {
        let shape = byName[name]!.shape
        let rows = shape[shape.count - 2], cols = shape[shape.count - 1], matrices = shape.dropLast(2).reduce(1, *)
        let perMatrix = quantizer.scaleShape(rows: rows, cols: cols).reduce(1, *)
        let count = wantCodes ? matrices * rows * cols : 0
        var codes = [UInt8](unsafeUninitializedCapacity: count) { _, initialized in initialized = count }  // every byte is written below
        var finite = true
        // bf16 goes straight into the kernel; the scales of a scales-only pass are kept, so the codes
        // pass does not compute them again.
        let bf16 = source.info(name)?.dtype == .bf16
        let known = bf16 && wantCodes ? knownScales.removeValue(forKey: name) : nil
        var scales = known ?? [Float](repeating: 1, count: matrices * perMatrix)
        if bf16 {
            let payload = try source.payload(name)
            func run(_ raw: UnsafeRawBufferPointer) {
                let x = raw.baseAddress!.assumingMemoryBound(to: UInt16.self)
                codes.withUnsafeMutableBufferPointer { cp in scales.withUnsafeMutableBufferPointer { sp in
                    for m in 0..<matrices where finite {
                        finite = quantizer.quantize(bf16: x + m * rows * cols, rows: rows, cols: cols,
                                                    codes: wantCodes ? cp.baseAddress! + m * rows * cols : nil, scales: sp.baseAddress! + m * perMatrix,
                                                    scalesGiven: known != nil)
                    }
                } }
            }
            switch payload {
            case let .view(view) where Int(bitPattern: view.bytes.baseAddress) % 2 == 0: run(view.bytes)
            case let .view(view): Array(view.bytes).withUnsafeBytes(run)
            case .bytes, .pieces: try payload.withBytes(run)
            }
        } else {
            let values = try source.floats(name)
            finite = values.allSatisfy(\.isFinite)
            if finite {
                values.withUnsafeBufferPointer { vp in codes.withUnsafeMutableBufferPointer { cp in scales.withUnsafeMutableBufferPointer { sp in
                    for m in 0..<matrices {
                        quantizer.quantize(vp.baseAddress! + m * rows * cols, rows: rows, cols: cols,
                                           codes: wantCodes ? cp.baseAddress! + m * rows * cols : nil, scales: sp.baseAddress! + m * perMatrix)
                    }
                } } }
            }
        }
        source.release(name)
        guard finite else {
            throw ConversionError.unsupportedInput(path: source.path(of: name), reason: "tensor '\(name)' holds NaN or Inf; refusing to quantize it")
        }
        pendingScales = [name + QuantizationConfig.scaleSuffix: scales.withUnsafeBytes { Array($0) }]
        if bf16 && !wantCodes { knownScales[name] = scales }
        return codes
    }

    public func release(_ name: String) {
        if pendingScales.removeValue(forKey: name) == nil { source.release(name) }
    }
}

/// `--skip` patterns are matched by the tokenizer's matcher (bounded work, see `NamePattern`).
extension NamePattern: TensorNamePattern {}

