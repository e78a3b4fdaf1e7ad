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

    /// The bf16 bytes of a dequantized weight, straight from its codes and scales (no f32 copy: at
    /// V3's shapes a dense MLP weight would take 528 MB in f32).
    public func payload(_ name: String) throws -> TensorPayload {
        guard dequantized.contains(name), let info = source.info(name), let format = FP8Format(dtype: info.dtype),
              let block = source.config.quantization?.block else { return try source.payload(name) }
        let shape = info.shape, scaleName = name + QuantizationConfig.scaleSuffix
        let scales = try source.floats(scaleName)
        source.release(scaleName)
        if let i = scales.withUnsafeBufferPointer(FP8Integrity.firstInvalidScale) {
            throw DeepSeekModelError.invalidScale(file: source.path(of: scaleName), tensor: scaleName, index: i, value: scales[i])
        }
        let rows = shape[shape.count - 2], cols = shape[shape.count - 1], count = shape.reduce(1, *)
        let quantizer = FP8BlockQuantizer(format: format, block: block)
        let perMatrix = quantizer.scaleShape(rows: rows, cols: cols).reduce(1, *)
        guard scales.count == perMatrix * (count / max(rows * cols, 1)) else {
            throw DeepSeekModelError.wrongScale(file: source.path(of: scaleName), tensor: scaleName, expected: QuantizationConfig.scaleShape(of: shape, block: block),
                                                actual: source.info(scaleName)?.shape ?? [], dtype: "F32")
        }
        var out = [UInt8](unsafeUninitializedCapacity: 2 * count) { _, initialized in initialized = 2 * count }  // every element is written below
        func run(_ codes: UnsafeRawBufferPointer) throws {
            let finite = out.withUnsafeMutableBytes { raw in scales.withUnsafeBufferPointer { sp in
                let dst = raw.baseAddress!.assumingMemoryBound(to: UInt16.self), src = codes.baseAddress!.assumingMemoryBound(to: UInt8.self)
                return stride(from: 0, to: count, by: max(rows * cols, 1)).allSatisfy { start in
                    quantizer.dequantizeToBF16(codes: src + start, scales: sp.baseAddress! + start / (rows * cols) * perMatrix, rows: rows, cols: cols, into: dst + start)
                }
            } }
            if !finite {
                try scales.withUnsafeBufferPointer { sp in
                    try FP8Integrity.check(codes: codes, format: format, codesFile: source.path(of: name), weight: name, scales: sp, scalesFile: source.path(of: scaleName))
                }
                // Finite codes and scales whose product overflows f32.
                throw ConversionError.nonFiniteResult(path: source.path(of: name), tensor: name, dtype: "bf16")
            }
        }
        if count > 0 {
            switch try source.payload(name) {
            case let .view(view): try run(view.bytes)
            case let .bytes(bytes): try bytes.withUnsafeBytes(run)
            }
        }
        return .bytes(out)
    }

    /// The exact f32 product for dequantized weights (a later fold rounds once, from these).
    public func floats(_ name: String) throws -> [Float] { try source.floats(name) }

    public func release(_ name: String) { source.release(name) }
}
