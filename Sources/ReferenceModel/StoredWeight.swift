import CKernels
import DeepSeekModel
import Foundation
import Numerics
import SafeTensors

/// A matrix weight as its checkpoint stores it (mapped bf16, f16, f32, or FP8 with block scales),
/// multiplied without ever being held whole in fp32.
///
/// A routed expert sees few tokens (V3 at 512 tokens: ~16), so widening its weight first moves 4
/// bytes per parameter through memory (written, then read by the product) for as little as 32
/// FLOPs: the product waits on memory. `product` converts the weight inside the product
/// (`dsconvert_stored_gemm`: FP8 and f16 6 rows x 256-512 columns at a time into a small buffer, bf16
/// and f32 at AVX-512 as the micro-kernel reads them), so only the stored bytes come from memory: 1
/// per parameter in FP8.
public struct StoredWeight {
    /// How the elements are stored; FP8 with block scales.
    public enum Elements: Sendable {
        case f32, bf16, f16
        case fp8(FP8Format)
    }

    /// The matrix's rows (output features) and columns (input features).
    public let rows: Int
    public let cols: Int
    public let elements: Elements
    /// An FP8 weight's scale block (rows of `widen` start on one); 128 for the others.
    public let block: Int
    /// Lends the stored bytes and (FP8) the scales, valid during `body`.
    private let lend: ((UnsafeRawPointer, UnsafePointer<Float>?) -> Int32) -> Int32
    /// Throws the error that names what a kernel flagged (an FP8 code that is NaN or Inf, or a
    /// product that is not finite).
    private let flagged: () throws -> Never

    /// A weight whose bytes (row-major, `rows` x `cols` elements, and for FP8 the scales, row-major
    /// ceil(rows / block) x ceil(cols / block)) `lend` passes to its body. `flagged` throws the error
    /// naming a NaN/Inf code or a product that overflows (only FP8 weights are ever flagged).
    public init(rows: Int, cols: Int, elements: Elements, block: Int = 128,
                lend: @escaping ((UnsafeRawPointer, UnsafePointer<Float>?) -> Int32) -> Int32,
                flagged: @escaping () throws -> Never = { preconditionFailure("only FP8 codes are flagged") }) {
        self.rows = rows
        self.cols = cols
        precondition(rows >= 0 && cols >= 0 && block > 0, "a \(rows)x\(cols) weight in blocks of \(block)")
        self.elements = elements
        self.block = block
        self.lend = lend
        self.flagged = flagged
    }

    /// Writes rows `range` (whole scale blocks of rows, or the last partial one) as fp32 into `destination`,
    /// row-major, `range.count` x `cols`.
    public func widen(_ range: Range<Int>, into destination: UnsafeMutablePointer<Float>) throws {
        let (rows, cols, block, elements) = (rows, cols, block, elements)
        let status = lend { bytes, scales in
            let count = range.count * cols
            switch elements {
            case let .fp8(format):
                return Self.dequantize(codes: bytes.assumingMemoryBound(to: UInt8.self), scales: scales!, rows: rows, cols: cols, block: block,
                                       format: format, range: range, into: destination) ? 0 : 1
            case .f32, .bf16, .f16:
                let size = elements.byteSize
                let source = UnsafeRawBufferPointer(start: bytes + range.lowerBound * cols * size, count: count * size)
                _ = TensorView.widen(source, dtype: elements.dtype, count: count, into: UnsafeMutableBufferPointer(start: destination, count: count))
                return 0
            }
        }
        if status != 0 { try flagged() }
    }

    /// y[i * ldy + n] = Σ_k x[i, k] · w[n, k] for rows i < `rows` of x ([rows, cols], row-major) and
    /// output columns n in `columns`, in one thread, in the fixed order `dsconvert_stored_gemm`
    /// defines: the same bits at every instruction-set level and for any split of the columns.
    public func product(_ x: UnsafePointer<Float>, rows m: Int, columns: Range<Int>, into y: UnsafeMutablePointer<Float>, ldy: Int,
                        level: Int32 = FP8BlockQuantizer.kernelLevel) throws {
        precondition(m >= 0 && columns.lowerBound >= 0 && columns.upperBound <= rows && ldy >= columns.upperBound,
                     "rows \(m), columns \(columns) of a \(rows)x\(cols) weight into rows \(ldy) apart")
        let (rows, cols, block, kind) = (rows, cols, block, elements.kernelKind)
        let status = lend { bytes, scales in
            var matrix = dsconvert_stored_matrix(kind: kind, data: bytes, rows: rows, cols: cols, scales: scales, block: block)
            return dsconvert_stored_gemm(level, &matrix, x, m, columns.lowerBound, columns.upperBound, y, ldy)
        }
        switch status {
        case 0: return
        case 1: try flagged()
        case 2: preconditionFailure("no memory for a product's working floats (up to 1 MB of x and its sums)")  // as Swift's own allocations fail
        default: preconditionFailure("stored product refused its weight's description (FP8 without scales?)")
        }
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
        return StoredWeight(rows: rows, cols: cols, elements: .fp8(format), block: block) { body in
            scales.withUnsafeBufferPointer { body(view.bytes.baseAddress!, $0.baseAddress!) }
        } flagged: {
            try scales.withUnsafeBufferPointer {
                try FP8Integrity.check(codes: view.bytes, format: format, codesFile: codesFile, weight: view.name, scales: $0, scalesFile: scalesFile)
            }
            throw DeepSeekModelError.unreadableTensor(file: codesFile, tensor: view.name, reason: "code x scale overflows f32")
        }
    }

    /// Dequantizes rows `range` (whole block rows, or the last partial one) of [rows, cols] FP8 codes
    /// with their block scales into `destination`; false if a code is NaN or a product not finite.
    /// Each block row is handed to the kernel as a matrix of its own (its codes, its scales, block
    /// row 0), written at its place in `destination`: no pointer ever points outside its buffer.
    static func dequantize(codes: UnsafePointer<UInt8>, scales: UnsafePointer<Float>, rows: Int, cols: Int, block: Int, format: FP8Format,
                           range: Range<Int>, into destination: UnsafeMutablePointer<Float>) -> Bool {
        precondition(range.lowerBound % block == 0 && (range.upperBound % block == 0 || range.upperBound == rows) && range.upperBound <= rows,
                     "ranges are whole block rows")
        let perRow = (cols + block - 1) / block, e5m2: Int32 = format == .e5m2 ? 1 : 0
        var finite = true
        for r0 in stride(from: range.lowerBound, to: range.upperBound, by: block) {
            finite = dsconvert_fp8_dequantize_block_row_f32(FP8BlockQuantizer.kernelLevel, codes + r0 * cols, min(block, rows - r0), cols, block, 0, e5m2,
                                                            scales + (r0 / block) * perRow, destination + (r0 - range.lowerBound) * cols) == 0 && finite
        }
        return finite
    }

    /// A bf16, f16 or f32 weight as mapped.
    static func floating(_ view: TensorView) -> StoredWeight? {
        guard view.shape.count == 2, let elements = Elements(dtype: view.dtype), elements.byteSize > 1, let base = view.bytes.baseAddress else { return nil }
        return StoredWeight(rows: view.shape[0], cols: view.shape[1], elements: elements) { body in
            withExtendedLifetime(view) { body(base, nil) }
        }
    }

    /// An fp32 matrix in memory, for products that must give the bits a stored weight's would.
    static func floats(_ values: UnsafeBufferPointer<Float>, rows: Int, cols: Int) -> StoredWeight {
        precondition(values.count >= rows * cols, "\(values.count) values for \(rows)x\(cols)")
        return StoredWeight(rows: rows, cols: cols, elements: .f32) { body in body(UnsafeRawPointer(values.baseAddress!), nil) }
    }
}

extension StoredWeight.Elements {
    /// The widened dtypes (nil for any other).
    init?(dtype: DType) {
        switch dtype {
        case .f32: self = .f32
        case .bf16: self = .bf16
        case .f16: self = .f16
        default:
            guard let format = FP8Format(dtype: dtype) else { return nil }
            self = .fp8(format)
        }
    }

    var dtype: DType {
        switch self {
        case .f32: return .f32
        case .bf16: return .bf16
        case .f16: return .f16
        case let .fp8(format): return format.dtype
        }
    }

    var byteSize: Int {
        switch self {
        case .f32: return 4
        case .bf16, .f16: return 2
        case .fp8: return 1
        }
    }

    /// The C kernel's constant for this storage.
    var kernelKind: Int32 {
        switch self {
        case .f32: return Int32(DSCONVERT_STORED_F32)
        case .bf16: return Int32(DSCONVERT_STORED_BF16)
        case .f16: return Int32(DSCONVERT_STORED_F16)
        case let .fp8(format): return Int32(format == .e5m2 ? DSCONVERT_STORED_FP8_E5M2 : DSCONVERT_STORED_FP8_E4M3)
        }
    }
}
