import DeepSeekModel
import Foundation
import Numerics
import SafeTensors

/// The dequantize step: FP8 block weights as bf16, each the f32 product code · scale rounded once to
/// bf16 (what DeepSeek's GPU-only `fp8_cast_bf16.py` writes, computed on the CPU); their `_scale_inv`
/// companions and `quantization_config` are dropped; every other tensor passes through unchanged.
public final class DequantizeStep: TensorSource {
    public let source: TensorSource
    public let document: ConfigDocument
    public let stages: [ConversionManifest.Stage]
    public let planned: [PlannedTensor]
    public var directory: URL { source.directory }
    /// The FP8 weights this step turns into bf16.
    public let dequantized: Set<String>
    private let byName: [String: PlannedTensor]

    public init(source: TensorSource) throws {
        let fp8 = source.planned.filter { $0.dtype.isBlockFP8 }
        guard let first = fp8.first else { throw ConversionError.unsupportedInput(path: source.directory.path, reason: "no FP8 tensors to dequantize") }
        guard let quantization = source.config.quantization else {
            throw DeepSeekModelError.fp8WithoutQuantizationConfig(file: source.path(of: first.name), tensor: first.name)
        }
        self.source = source
        let names = Set(fp8.map(\.name))
        let scales = Set(fp8.map { $0.name + QuantizationConfig.scaleSuffix })
        dequantized = names
        planned = source.planned.filter { !scales.contains($0.name) }.map { t in
            names.contains(t.name) ? PlannedTensor(name: t.name, dtype: .bf16, shape: t.shape) : t
        }
        byName = Dictionary(uniqueKeysWithValues: planned.map { ($0.name, $0) })
        document = try source.document.removing("quantization_config")
        stages = source.stages + [.init(stage: "quantize", options: ["dequantize": "bf16", "block": String(quantization.block)], input: source.directory.path)]
    }

    public func info(_ name: String) -> PlannedTensor? { byName[name] }
    public func path(of name: String) -> String { source.path(of: name) }

    public func payload(_ name: String) throws -> TensorPayload {
        guard dequantized.contains(name) else { return try source.payload(name) }
        let values = try source.floats(name)
        var bf16 = [UInt16](repeating: 0, count: values.count)
        values.withUnsafeBufferPointer { src in bf16.withUnsafeMutableBufferPointer { FloatConversion.floatToBF16(src.baseAddress!, $0.baseAddress!, count: values.count) } }
        return .bytes(bf16.withUnsafeBytes { Array($0) })
    }

    /// The exact f32 product for dequantized weights (a later fold rounds once, from these).
    public func floats(_ name: String) throws -> [Float] { try source.floats(name) }

    public func release(_ name: String) { source.release(name) }
}
