import DeepSeekModel
import Foundation
import Numerics
import SafeTensors
import Validation

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

    public struct Summary: Sendable {
        public let tensors: Int
        public let quantized: Int
        public let files: Int
        public let bytesIn: Int
        public let bytesOut: Int
    }

    /// Weights to FP8 with block scales, in the DeepSeek-V3 / Hugging Face convention.
    public static func quantize(input: URL, output: URL, options: FP8Options, force: Bool,
                                maxShardSize: Int = CheckpointLayout.defaultMaxShardSize,
                                progress: ((String) -> Void)? = nil) throws -> Summary {
        let config = try DeepSeekV2Config.load(directory: input)
        guard config.quantization == nil else {
            throw ConversionError.unsupportedInput(path: input.path, reason: "the checkpoint is already FP8 (quantization_config present); --dequantize first")
        }
        let checkpoint = try Checkpoint(directory: input)
        if let problem = CheckpointChecker.check(config: config, checkpoint: checkpoint).problems.first { throw problem }
        let quantizer = FP8BlockQuantizer(format: options.format, block: options.block)
        let fp8DType: DType = options.format == .e4m3 ? .f8E4M3 : .f8E5M2

        var planned: [PlannedTensor] = []
        var quantized = Set<String>()
        for t in config.expectedTensors() {
            let info = checkpoint.info(t.name)!
            if options.policy.shouldQuantize(name: t.name, shape: t.shape) {
                quantized.insert(t.name)
                planned.append(PlannedTensor(name: t.name, dtype: fp8DType, shape: t.shape))
                planned.append(PlannedTensor(name: t.name + QuantizationConfig.scaleSuffix, dtype: .f32,
                                             shape: QuantizationConfig.scaleShape(of: t.shape, block: options.block)))
            } else {
                planned.append(PlannedTensor(name: t.name, dtype: info.dtype, shape: t.shape))
            }
        }
        let layout = CheckpointLayout(tensors: planned, maxShardSize: maxShardSize)
        let out = try ConversionOutput(input: input, output: output, force: force, layout: layout)
        let names = config.expectedTensors().map(\.name)
        for (i, name) in names.enumerated() {
            let view = try checkpoint.view(name)
            if quantized.contains(name) {
                let values = try view.floats()
                guard values.allSatisfy(\.isFinite) else {
                    throw ConversionError.unsupportedInput(path: checkpoint.path(of: name), reason: "tensor '\(name)' holds NaN or Inf; refusing to quantize it")
                }
                let shape = view.shape
                let rows = shape[shape.count - 2], cols = shape[shape.count - 1]
                var codes: [UInt8] = [], scales: [Float] = []
                values.withUnsafeBufferPointer { vp in
                    for m in 0..<shape.dropLast(2).reduce(1, *) {
                        let (c, s) = quantizer.quantize(vp.baseAddress! + m * rows * cols, rows: rows, cols: cols)
                        codes += c
                        scales += s
                    }
                }
                try out.writer.write(name, bytes: codes)
                try out.writer.write(name + QuantizationConfig.scaleSuffix, bytes: scales.withUnsafeBytes { Array($0) })
            } else {
                try out.writer.write(name, bytes: view.bytes)
            }
            checkpoint.release(name)
            if i % 32 == 0 || i == names.count - 1 { progress?("quantize: \(i + 1)/\(names.count) tensors") }
        }
        try out.copySideFiles()
        let raw = try ConfigEditor.setting(try ConfigEditor.load(input), key: "quantization_config",
                                           to: QuantizationConfig(fmt: options.format.rawValue, block: options.block))
        try out.writeFile("config.json", data: ConfigEditor.data(raw))
        var stageOptions = ["fp8": options.format.rawValue, "block": String(options.block), "fp8_absorbed": String(options.policy.quantizeAbsorbed)]
        if !options.policy.skip.isEmpty { stageOptions["skip"] = options.policy.skip.joined(separator: " ") }
        try out.commit(stage: .init(stage: "quantize", options: stageOptions, input: input.path))
        return Summary(tensors: planned.count, quantized: quantized.count, files: layout.shards.count,
                       bytesIn: checkpoint.totalTensorBytes, bytesOut: layout.totalTensorBytes)
    }

    /// FP8 block weights back to bf16 on the CPU (the replacement for DeepSeek's GPU-only
    /// `fp8_cast_bf16.py`): w = q · scale in f32, rounded to bf16, as that script does. Works on any
    /// architecture: every F8 tensor needs its `_scale_inv`; the block size comes from config.json.
    public static func dequantize(input: URL, output: URL, force: Bool, maxShardSize: Int = CheckpointLayout.defaultMaxShardSize,
                                  progress: ((String) -> Void)? = nil) throws -> Summary {
        let checkpoint = try Checkpoint(directory: input)
        let rawConfig = try ConfigEditor.load(input)
        var block = 128
        if case let .array(sizes)? = rawConfig["quantization_config"]?["weight_block_size"], let b = sizes.first?.uint64 { block = Int(b) }
        let fp8 = checkpoint.tensors.filter { FP8Format(dtype: $0.dtype) != nil }
        guard !fp8.isEmpty else { throw ConversionError.unsupportedInput(path: input.path, reason: "no FP8 tensors to dequantize") }
        guard rawConfig["quantization_config"] != nil else {
            throw DeepSeekModelError.fp8WithoutQuantizationConfig(file: checkpoint.path(of: fp8[0].name), tensor: fp8[0].name)
        }
        var scaleNames = Set<String>()
        for t in fp8 {
            let scaleName = t.name + QuantizationConfig.scaleSuffix
            let expected = QuantizationConfig.scaleShape(of: t.shape, block: block)
            guard let scale = checkpoint.info(scaleName) else {
                throw DeepSeekModelError.missingScale(file: checkpoint.path(of: t.name), tensor: t.name, expectedShape: expected)
            }
            guard scale.shape == expected, scale.dtype == .f32 else {
                throw DeepSeekModelError.wrongScale(file: checkpoint.path(of: scaleName), tensor: scaleName, expected: expected, actual: scale.shape, dtype: scale.dtype.rawValue)
            }
            scaleNames.insert(scaleName)
        }
        let fp8Names = Set(fp8.map(\.name))
        let kept = checkpoint.tensors.filter { !scaleNames.contains($0.name) }
        let planned = kept.map { PlannedTensor(name: $0.name, dtype: fp8Names.contains($0.name) ? .bf16 : $0.dtype, shape: $0.shape) }
        let layout = CheckpointLayout(tensors: planned, maxShardSize: maxShardSize)
        let out = try ConversionOutput(input: input, output: output, force: force, layout: layout)
        let weights = CheckpointWeights(checkpoint: checkpoint, fp8Block: block)
        for (i, t) in kept.enumerated() {
            if fp8Names.contains(t.name) {
                let values = try weights.floats(t.name, shape: t.shape)
                var bf16 = [UInt16](repeating: 0, count: values.count)
                values.withUnsafeBufferPointer { src in bf16.withUnsafeMutableBufferPointer { FloatConversion.floatToBF16(src.baseAddress!, $0.baseAddress!, count: values.count) } }
                try out.writer.write(t.name, bytes: bf16.withUnsafeBytes { Array($0) })
                weights.release(t.name)
            } else {
                try out.writer.write(t.name, bytes: try checkpoint.view(t.name).bytes)
                checkpoint.release(t.name)
            }
            if i % 32 == 0 || i == kept.count - 1 { progress?("dequantize: \(i + 1)/\(kept.count) tensors") }
        }
        try out.copySideFiles()
        guard case let .object(entries) = rawConfig else { throw ConversionError.unsupportedInput(path: input.path, reason: "config.json is not an object") }
        try out.writeFile("config.json", data: ConfigEditor.data(.object(entries.filter { $0.0 != "quantization_config" })))
        try out.commit(stage: .init(stage: "quantize", options: ["dequantize": "bf16", "block": String(block)], input: input.path))
        return Summary(tensors: planned.count, quantized: fp8.count, files: layout.shards.count,
                       bytesIn: checkpoint.totalTensorBytes, bytesOut: layout.totalTensorBytes)
    }
}
