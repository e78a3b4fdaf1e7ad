import CKernels
import DeepSeekModel
import Foundation
import Numerics
import SafeTensors

/// A matrix weight as its checkpoint stores it (mapped bf16, f16, f32, or FP8 with block scales),
/// widened to fp32 a panel of rows at a time by products that never hold it whole in fp32.
///
/// A routed expert sees few tokens (V3 at 512 tokens: ~16), so widening its weight whole and then
/// multiplying moves 4 bytes per parameter through memory twice (written, then packed by sgemm) for
/// 32 FLOPs: the product waits on memory. Widening 128 rows into a buffer that stays in the core's
/// cache and multiplying them at once reads only the stored bytes from memory: 1.7-2x faster at 16
/// and 48 rows on this machine, dequantization included.
public struct StoredWeight {
    /// The matrix's rows (output features) and columns (input features).
    public let rows: Int
    public let cols: Int
    /// Rows per call of `widen` (an FP8 weight's scale block, so each call is whole block rows).
    public let panel: Int
    private let widenRows: (Range<Int>, UnsafeMutablePointer<Float>) throws -> Void

    /// A weight whose `widen` writes rows of a range (whole panels, or the last partial one) as fp32.
    public init(rows: Int, cols: Int, panel: Int, widen: @escaping (Range<Int>, UnsafeMutablePointer<Float>) throws -> Void) {
        self.rows = rows
        self.cols = cols
        self.panel = panel
        widenRows = widen
    }

    /// Writes rows `range` (whole panels, or the last partial one) as fp32 into `destination`,
    /// row-major, `range.count` x `cols`.
    public func widen(_ range: Range<Int>, into destination: UnsafeMutablePointer<Float>) throws {
        try widenRows(range, destination)
    }

    /// The FP8 weight `view` with its block scales, after the scales' check; a code that is NaN or a
    /// product that is not finite is reported by `FP8Integrity` naming the file and the code.
    static func fp8(_ view: TensorView, format: FP8Format, scales: [Float], block: Int, codesFile: String, scalesFile: String) throws -> StoredWeight {
        guard view.shape.count == 2 else {
            throw DeepSeekModelError.unreadableTensor(file: codesFile, tensor: view.name, reason: "FP8 weight of shape \(view.shape) is not a matrix")
        }
        let rows = view.shape[0], cols = view.shape[1]
        let perRow = (cols + block - 1) / block
        guard view.bytes.count == rows * cols else {
            throw DeepSeekModelError.unreadableTensor(file: codesFile, tensor: view.name, reason: "\(view.bytes.count) bytes of codes for shape \(view.shape)")
        }
        guard scales.count == ((rows + block - 1) / block) * perRow else {
            throw DeepSeekModelError.wrongScale(file: scalesFile, tensor: view.name + QuantizationConfig.scaleSuffix,
                                                expected: QuantizationConfig.scaleShape(of: view.shape, block: block), actual: [scales.count], dtype: "F32")
        }
        if let i = scales.withUnsafeBufferPointer(FP8Integrity.firstInvalidScale) {
            throw DeepSeekModelError.invalidScale(file: scalesFile, tensor: view.name + QuantizationConfig.scaleSuffix, index: i, value: scales[i])
        }
        return StoredWeight(rows: rows, cols: cols, panel: block) { range, destination in
            let codes = view.bytes.baseAddress!.assumingMemoryBound(to: UInt8.self)
            let finite = scales.withUnsafeBufferPointer {
                dequantize(codes: codes, scales: $0.baseAddress!, rows: rows, cols: cols, block: block, format: format, range: range, into: destination)
            }
            if !finite {
                try scales.withUnsafeBufferPointer {
                    try FP8Integrity.check(codes: view.bytes, format: format, codesFile: codesFile, weight: view.name, scales: $0, scalesFile: scalesFile)
                }
                throw DeepSeekModelError.unreadableTensor(file: codesFile, tensor: view.name, reason: "code x scale overflows f32")
            }
        }
    }

    /// Dequantizes rows `range` (whole block rows, or the last partial one) of [rows, cols] FP8 codes
    /// with their block scales into `destination`; false if a code is NaN or a product not finite.
    /// Each block row is handed to the kernel as a matrix of its own (its codes, its scales, block
    /// row 0), written at its place in `destination`: no pointer ever points outside its buffer.
    static func dequantize(codes: UnsafePointer<UInt8>, scales: UnsafePointer<Float>, rows: Int, cols: Int, block: Int, format: FP8Format,
                           range: Range<Int>, into destination: UnsafeMutablePointer<Float>) -> Bool {
        precondition(range.lowerBound % block == 0 && (range.upperBound % block == 0 || range.upperBound == rows) && range.upperBound <= rows,
                     "panels are whole block rows")
        let perRow = (cols + block - 1) / block, e5m2: Int32 = format == .e5m2 ? 1 : 0
        var finite = true
        for r0 in stride(from: range.lowerBound, to: range.upperBound, by: block) {
            finite = dsconvert_fp8_dequantize_block_row_f32(FP8BlockQuantizer.kernelLevel, codes + r0 * cols, min(block, rows - r0), cols, block, 0, e5m2,
                                                            scales + (r0 / block) * perRow, destination + (r0 - range.lowerBound) * cols) == 0 && finite
        }
        return finite
    }

    /// A bf16, f16 or f32 weight, widened 128 rows at a time.
    static func floating(_ view: TensorView) -> StoredWeight? {
        guard view.shape.count == 2, let size = view.dtype.byteSize, [.bf16, .f16, .f32].contains(view.dtype) else { return nil }
        let rows = view.shape[0], cols = view.shape[1]
        return StoredWeight(rows: rows, cols: cols, panel: 128) { range, destination in
            let bytes = UnsafeRawBufferPointer(rebasing: view.bytes[(range.lowerBound * cols * size)..<(range.upperBound * cols * size)])
            _ = TensorView.widen(bytes, dtype: view.dtype, count: range.count * cols, into: UnsafeMutableBufferPointer(start: destination, count: range.count * cols))
        }
    }
}
