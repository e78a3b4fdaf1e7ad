import DeepSeekModel
import Foundation
import Numerics
import SafeTensors

/// `dsconvert absorb`: streams a checkpoint layer by layer, replacing each layer's attention
/// weights with their absorbed form and copying every other tensor through byte for byte.
public enum AbsorbStage {
    public struct Summary: Sendable {
        public let output: URL
        public let tensors: Int
        public let files: Int
        public let config: DeepSeekConfig
    }

    public static func run(input: URL, output: URL, options: AbsorbOptions, dtype: AbsorbedDType, force: Bool,
                           shardSize: ShardSize = .likeInput, resume: Bool = false,
                           progress: ((String) -> Void)? = nil) throws -> Summary {
        let source = try CheckpointSource(directory: input)
        let step = try AbsorbStep(source: source, options: options, dtype: dtype)
        let layout = try ConversionOutput.write(step, to: output, inputStages: source.stages, force: force, shardSize: shardSize,
                                                resume: resume, label: "absorb", progress: progress)
        return Summary(output: output, tensors: step.planned.count, files: layout.shards.count, config: step.config)
    }

    /// f64 values rounded once to the storage dtype, as little-endian bytes.
    static func encode(_ values: [Double], as dtype: DType) -> [UInt8] {
        switch dtype {
        case .f32:
            return values.map { Float($0) }.withUnsafeBytes { Array($0) }
        default:
            return values.map { FloatConversion.doubleToBF16($0) }.withUnsafeBytes { Array($0) }
        }
    }
}

extension AbsorbStage {
    /// `encode`, refusing results that round to NaN or Inf in `dtype`: finite inputs can fold into
    /// products beyond its range (weights of 1e36 and more), which must not be written silently.
    static func encodeFinite(_ values: [Double], as dtype: DType, tensor: String, path: String) throws -> [UInt8] {
        let bytes = encode(values, as: dtype)
        let finite = bytes.withUnsafeBytes { raw in
            dtype == .f32 ? raw.bindMemory(to: UInt32.self).allSatisfy { $0 & 0x7F80_0000 != 0x7F80_0000 }
                          : raw.bindMemory(to: UInt16.self).allSatisfy { $0 & 0x7F80 != 0x7F80 }
        }
        guard finite else { throw ConversionError.nonFiniteResult(path: path, tensor: tensor, dtype: dtype.rawValue) }
        return bytes
    }
}

/// The absorb step: each layer's attention weights replaced by their absorbed form, computed a
/// layer at a time when the first of them is asked for; every other tensor passes through unchanged.
public final class AbsorbStep: TensorSource {
    public let source: TensorSource
    public let options: AbsorbOptions
    public let document: ConfigDocument
    public let stages: [ConversionManifest.Stage]
    public let planned: [PlannedTensor]
    public var directory: URL { source.directory }
    private let computed: Set<String>
    private let byName: [String: PlannedTensor]
    /// Absorbed tensors computed and not yet written, by layer. The writer keeps a shard per core
    /// open, so requests alternate between as many layers; a few are kept (oldest dropped first: a
    /// dropped layer is recomputed if asked again, never wrong).
    private var cache: [Int: [String: [UInt8]]] = [:]
    private var cacheOrder: [Int] = []
    private let cachedLayers = 2 * WriteSchedule.defaultLanes

    public init(source: TensorSource, options: AbsorbOptions, dtype: AbsorbedDType) throws {
        let input = source.config
        guard input.attentionForm == .mla else {
            throw ConversionError.unsupportedInput(path: source.directory.path, reason: "attention is already absorbed (\(input.attentionForm.rawValue))")
        }
        self.source = source
        self.options = options
        var document = try source.document.setting(AbsorptionRecord.configKey, to: MLAAbsorber.record(input, options: options, dtype: dtype))
        if let record = input.kvCache, record.format == KVCacheFormat.mlaKV6C.rawValue {
            // The absorbed cache holds the latent without kv_a_layernorm's gain γ (folded into W_UK/W_UV):
            // each latent channel's calibrated step is divided by its γ, so the codes stay the same.
            // Layers the checkpoint holds only: a V3 checkpoint saved without its MTP layer keeps that
            // layer's calibration, and has no gain for it.
            let held = (record.channels ?? []).map(\.layer).filter(input.allLayers.contains)
            let gains = Dictionary(try held.map { ($0, try source.floats(TensorNames.name(.kvANorm, layer: $0))) }, uniquingKeysWith: { first, _ in first })
            document = try document.setting(KVCacheRecord.configKey, to: KVChannelCalibration.withoutLatentGain(record, gains: gains,
                                                                                                           path: source.directory.appendingPathComponent("config.json").path))
        }
        self.document = document
        let config = document.model
        let storage = dtype.storage
        // Tensors absorb computes take the storage dtype, the rest keep theirs.
        var computed = Set<String>()
        // The multi-token-prediction layers' attention is absorbed like any other layer's.
        for layer in input.allLayers {
            var weights: [LayerWeight]
            switch options.mode {
            case .split: weights = [.wUK, .wUV, input.queryProjection]
            case .fold: weights = [.qAbsorbed, .qRope, .oAbsorbed]
            }
            if options.keepKVB { weights.append(.kvBProj) }
            computed.formUnion(weights.map { TensorNames.name($0, layer: layer) })
        }
        self.computed = computed
        // Weights absorb leaves alone keep their dtype; FP8 ones keep their scales (an FP8 input stays
        // FP8 where absorb does not compute; what it computes, from the exact dequantized values, is
        // stored in the storage dtype).
        planned = try config.expectedTensors().flatMap { t -> [PlannedTensor] in
            if computed.contains(t.name) { return [PlannedTensor(name: t.name, dtype: storage, shape: t.shape)] }
            guard let info = source.info(t.name) else {
                throw DeepSeekModelError.missingTensor(file: source.directory.path, tensor: t.name, expectedShape: t.shape)
            }
            guard info.dtype.isBlockFP8 else { return [PlannedTensor(name: t.name, dtype: info.dtype, shape: t.shape)] }
            guard let scale = source.info(t.name + QuantizationConfig.scaleSuffix) else {
                throw DeepSeekModelError.missingScale(file: source.path(of: t.name), tensor: t.name, expectedShape: [])
            }
            return [PlannedTensor(name: t.name, dtype: info.dtype, shape: t.shape), scale]
        }
        byName = Dictionary(uniqueKeysWithValues: planned.map { ($0.name, $0) })
        var stageOptions = ["mode": options.mode.rawValue, "keep_kv_b": String(options.keepKVB), "dtype": dtype.rawValue]
        if let scale = options.softmaxScaleOverride { stageOptions["softmax_scale_override"] = String(scale) }
        stages = source.stages + [.init(stage: .absorb, options: stageOptions, input: source.directory.path)]
    }

    public func info(_ name: String) -> PlannedTensor? { byName[name] }
    public func path(of name: String) -> String { source.path(of: name) }

    public func payload(_ name: String) throws -> TensorPayload {
        guard computed.contains(name), let layer = TensorNames.layerIndex(of: name) else { return try source.payload(name) }
        if cache[layer]?[name] == nil {
            let results = try MLAAbsorber.absorbLayer(source.config, layer: layer, options: options) { name, shape in
                guard let info = source.info(name), info.shape == shape else {
                    throw DeepSeekModelError.missingTensor(file: source.directory.path, tensor: name, expectedShape: shape)
                }
                defer { source.release(name) }
                let values = try source.floats(name)
                guard values.allSatisfy(\.isFinite) else {
                    throw ConversionError.unsupportedInput(path: source.path(of: name), reason: "tensor '\(name)' holds NaN or Inf; refusing to fold it")
                }
                return values
            }
            cacheOrder.removeAll { $0 == layer }
            cacheOrder.append(layer)
            if cacheOrder.count > cachedLayers { cache[cacheOrder.removeFirst()] = nil }
            // Every layer reads its kv_b_proj: the file named when a product overflows.
            let path = source.path(of: TensorNames.name(.kvBProj, layer: layer))
            cache[layer] = Dictionary(uniqueKeysWithValues: try results.map { result in
                let dtype = byName[result.name]!.dtype
                return (result.name, try AbsorbStage.encodeFinite(result.values, as: dtype, tensor: result.name, path: path))
            })
        }
        guard let bytes = cache[layer]?[name] else { throw DeepSeekModelError.missingTensor(file: source.directory.path, tensor: name, expectedShape: byName[name]?.shape ?? []) }
        return .bytes(bytes)
    }

    public func release(_ name: String) {
        guard let layer = TensorNames.layerIndex(of: name), cache[layer]?.removeValue(forKey: name) != nil else {
            source.release(name)
            return
        }
        if cache[layer]?.isEmpty == true {
            cache[layer] = nil
            cacheOrder.removeAll { $0 == layer }
        }
    }
}
