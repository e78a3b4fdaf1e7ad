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
    /// About this many bytes of bf16 are produced at a time (whole block rows, at least one).
    private let pieceBytes: Int

    public init(source: TensorSource, pieceBytes: Int = 32 << 20) throws {
        self.pieceBytes = pieceBytes
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
        stages = source.stages + [.init(stage: .quantize, options: ["dequantize": "bf16", "block": String(quantization.block)], input: source.directory.path)]
    }

    public func info(_ name: String) -> PlannedTensor? { byName[name] }
    public func path(of name: String) -> String { source.path(of: name) }


    /// The bf16 bytes of a dequantized weight, straight from its codes and scales, in pieces of whole
    /// block rows as the writer takes them (no f32 copy, no whole bf16 copy: at V3's shapes a dense
    /// MLP weight would take 528 MB in f32, 264 MB in bf16).
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
        let codes = try source.payload(name)
        let codesFile = source.path(of: name), scalesFile = source.path(of: scaleName)
        // A 2-D weight in pieces of whole block rows (each a matrix of its own with its scale rows);
        // a 3-D one (per-head weights, small) in one piece.
        let rowsPerPiece = shape.count == 2 ? max(block, self.pieceBytes / max(2 * cols, 1) / block * block) : rows * (count / max(rows * cols, 1))
        let pieceBytes = shape.count == 2 ? 2 * cols * rowsPerPiece : 2 * count
        return .pieces(TensorPieces(count: 2 * count, pieceBytes: pieceBytes) { offset, buffer in
            let first = offset / 2, elements = buffer.count / 2
            try codes.withBytes { raw in
                let finite = scales.withUnsafeBufferPointer { sp in
                    let src = raw.baseAddress!.assumingMemoryBound(to: UInt8.self), dst = buffer.baseAddress!.assumingMemoryBound(to: UInt16.self)
                    if shape.count == 2 {
                        let r0 = first / cols
                        // Rows r0… start a block row: they are a matrix of their own, with its scale rows.
                        let scaleRow = sp.baseAddress! + (r0 / block) * quantizer.scaleShape(rows: rows, cols: cols)[1]
                        return quantizer.dequantizeToBF16(codes: src + first, scales: scaleRow, rows: elements / cols, cols: cols, into: dst)
                    }
                    return stride(from: 0, to: elements, by: max(rows * cols, 1)).allSatisfy { start in
                        quantizer.dequantizeToBF16(codes: src + start, scales: sp.baseAddress! + start / (rows * cols) * perMatrix, rows: rows, cols: cols, into: dst + start)
                    }
                }
                guard finite else {
                    try scales.withUnsafeBufferPointer { sp in
                        try FP8Integrity.check(codes: raw, format: format, codesFile: codesFile, weight: name, scales: sp, scalesFile: scalesFile)
                    }
                    // Finite codes and scales whose product overflows f32.
                    throw ConversionError.dequantizedOverflow(path: codesFile, tensor: name, dtype: "bf16")
                }
            }
        })
    }

    /// The exact f32 product for dequantized weights (a later fold rounds once, from these).
    public func floats(_ name: String) throws -> [Float] { try source.floats(name) }

    public func release(_ name: String) { source.release(name) }
}
