import DeepSeekModel
import Foundation
import Numerics
import SafeTensors

/// `dsconvert absorb`: streams a checkpoint layer by layer, replacing each layer's attention
/// weights with their absorbed form and copying every other tensor through byte for byte.
public enum AbsorbStage {
    public enum StorageDType: String, Sendable { case bf16, f32 }

    public struct Summary: Sendable {
        public let output: URL
        public let tensors: Int
        public let files: Int
        public let config: DeepSeekV2Config
    }

    public static func run(input: URL, output: URL, options: AbsorbOptions, dtype: StorageDType, force: Bool,
                           maxShardSize: Int = CheckpointLayout.defaultMaxShardSize, resume: Bool = false,
                           progress: ((String) -> Void)? = nil) throws -> Summary {
        let config = try DeepSeekV2Config.load(directory: input)
        guard config.attentionForm == .mla else {
            throw ConversionError.unsupportedInput(path: input.path, reason: "attention is already absorbed (\(config.attentionForm.rawValue))")
        }
        let checkpoint = try Checkpoint(directory: input)
        if let problem = CheckpointChecker.check(config: config, checkpoint: checkpoint).problems.first { throw problem }
        let outConfig = MLAAbsorber.outputConfig(config, options: options, dtype: dtype.rawValue)
        let storage: DType = dtype == .bf16 ? .bf16 : .f32

        // Output in model order; tensors absorb computes take the storage dtype, the rest keep theirs.
        var computed = Set<String>()
        for layer in 0..<config.numHiddenLayers {
            let p = TensorNames.layer(layer) + "self_attn."
            switch options.form {
            case .split: computed.formUnion([p + TensorNames.wUK, p + TensorNames.wUV, p + (config.qLoraRank == nil ? "q_proj.weight" : "q_b_proj.weight")])
            case .fold: computed.formUnion([p + TensorNames.qAbsorbed, p + TensorNames.qRope, p + TensorNames.oAbsorbed])
            case .mla: break
            }
            if options.keepKVB { computed.insert(p + "kv_b_proj.weight") }
        }
        let planned = try outConfig.expectedTensors().map { t in
            if computed.contains(t.name) { return PlannedTensor(name: t.name, dtype: storage, shape: t.shape) }
            guard let info = checkpoint.info(t.name) else {
                throw DeepSeekModelError.missingTensor(file: checkpoint.directory.path, tensor: t.name, expectedShape: t.shape)
            }
            return PlannedTensor(name: t.name, dtype: info.dtype, shape: t.shape)
        }
        let layout = CheckpointLayout(tensors: planned, maxShardSize: maxShardSize)
        var stageOptions = ["mode": options.form == .split ? "split" : "fold", "keep_kv_b": String(options.keepKVB), "dtype": dtype.rawValue]
        if let scale = options.softmaxScaleOverride { stageOptions["softmax_scale_override"] = String(scale) }
        let out = try ConversionOutput(input: input, output: output, force: force, layout: layout,
                                       stage: .init(stage: "absorb", options: stageOptions, input: input.path), resume: resume)
        let shapes = Dictionary(uniqueKeysWithValues: planned.map { ($0.name, $0) })

        func copy(_ name: String) throws {
            if out.writer.isWritten(name) { return }
            try out.writer.write(name, view: try checkpoint.view(name))
            checkpoint.release(name)
        }
        for name in planned.map(\.name) where TensorNames.layerIndex(of: name) == nil { try copy(name) }
        for layer in 0..<config.numHiddenLayers {
            progress?("absorb: layer \(layer + 1)/\(config.numHiddenLayers)")
            let layerNames = planned.map(\.name).filter { TensorNames.layerIndex(of: $0) == layer }
            if layerNames.allSatisfy(out.writer.isWritten) { continue }
            let results = try MLAAbsorber.absorbLayer(config, layer: layer, options: options) { name, shape in
                guard let info = checkpoint.info(name), info.shape == shape else {
                    throw DeepSeekModelError.missingTensor(file: checkpoint.directory.path, tensor: name, expectedShape: shape)
                }
                defer { checkpoint.release(name) }
                let values = try checkpoint.view(name).floats()
                guard values.allSatisfy(\.isFinite) else {
                    throw ConversionError.unsupportedInput(path: checkpoint.path(of: name), reason: "tensor '\(name)' holds NaN or Inf; refusing to fold it")
                }
                return values
            }
            for (name, values) in results {
                guard let plan = shapes[name], !out.writer.isWritten(name) else { continue }
                try out.writer.write(name, bytes: encode(values, as: plan.dtype))
            }
            let produced = Set(results.map(\.name))
            for name in planned.map(\.name) where TensorNames.layerIndex(of: name) == layer && !produced.contains(name) { try copy(name) }
        }
        try out.copySideFiles()
        let rawConfig = try ConfigEditor.setting(try ConfigEditor.load(input), key: AbsorptionRecord.configKey, to: outConfig.absorption!)
        try out.writeFile("config.json", data: ConfigEditor.data(rawConfig))
        try out.commit()
        return Summary(output: output, tensors: planned.count, files: layout.shards.count, config: outConfig)
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
