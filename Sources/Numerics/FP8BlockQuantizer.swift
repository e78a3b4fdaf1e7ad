import CKernels
import Dispatch
import Foundation
import Synchronization

/// Block-scaled FP8 quantization in the DeepSeek-V3 / Hugging Face convention read by vLLM and SGLang.
///
/// A matrix [rows, cols] is cut into block×block tiles (the last ones partial); each tile gets
/// scale = amax/max_finite over its real elements (f32 division), and each element becomes
/// fp8(x / scale) computed in f32 — DeepSeek's `weight_quant` kernel, so the bytes match torch's cast.
/// The stored companion `<name>_scale_inv` holds these scales (the dequantization multipliers,
/// despite the name): w ≈ q · scale. An all-zero tile gets scale 1 (0/0 would be NaN).
///
/// Every finite tile gets a positive, finite scale: when amax / max_finite rounds to zero in f32
/// (amax below about 6e-43, only reachable from f32 subnormals: bf16's smallest is 9e-41), the tile
/// is flushed to a zero tile and gets scale 1, the all-zero tile's scale. With scale 1 each code is
/// fp8(x) = ±0 (|x| is far below FP8's smallest subnormal), so the flush needs no separate code
/// path and dequantizes to ±0, an absolute error under 6e-43; every tile torch's cast handles
/// (scale > 0) keeps its bytes. The C kernel applies the same rule (`fp8BlockScale`).
public struct FP8BlockQuantizer: Sendable {
    public let format: FP8Format
    public let block: Int

    public init(format: FP8Format = .e4m3, block: Int = 128) {
        self.format = format
        self.block = block
    }

    /// [ceil(rows/block), ceil(cols/block)], without the `rows + block − 1` that overflows for a block near `Int.max`.
    public func scaleShape(rows: Int, cols: Int) -> [Int] {
        [rows / block + (rows % block == 0 ? 0 : 1), cols / block + (cols % block == 0 ? 0 : 1)]
    }

    /// Quantizes a row-major matrix of finite values (callers check: NaN would poison the block's
    /// amax); returns the FP8 codes and the row-major scales.
    public func quantize(_ x: UnsafePointer<Float>, rows: Int, cols: Int) -> (codes: [UInt8], scales: [Float]) {
        let shape = scaleShape(rows: rows, cols: cols)
        var codes = [UInt8](repeating: 0, count: rows * cols)
        var scales = [Float](repeating: 1, count: shape[0] * shape[1])
        codes.withUnsafeMutableBufferPointer { cp in scales.withUnsafeMutableBufferPointer { sp in
            quantize(x, rows: rows, cols: cols, codes: cp.baseAddress!, scales: sp.baseAddress!)
        } }
        return (codes, scales)
    }

    /// `quantize` into caller-owned buffers of rows·cols codes and scaleShape scales; without
    /// `codes`, only the scales are computed.
    public func quantize(_ x: UnsafePointer<Float>, rows: Int, cols: Int, codes: UnsafeMutablePointer<UInt8>?, scales: UnsafeMutablePointer<Float>) {
        let input = SharedPointer(UnsafeMutableRawPointer(mutating: x).assumingMemoryBound(to: UInt32.self))
        run(rows: rows, cols: cols, codes: codes, scales: scales) { r, c0, c1 in
            // amax as the largest magnitude bit pattern: exact for finite inputs, and it vectorizes.
            let row = input.pointer + r * cols
            var largest: UInt32 = 0
            for c in c0..<c1 { largest = max(largest, row[c] & 0x7FFF_FFFF) }
            return largest
        } encode: { r, c0, c1, scale, dst in
            let row = UnsafeRawPointer(input.pointer + r * cols).assumingMemoryBound(to: Float.self)
            switch format {
            case .e4m3: for c in c0..<c1 { dst[c] = FP8Codec.encodeE4M3(row[c] / scale) }
            case .e5m2: for c in c0..<c1 { dst[c] = FP8Codec.encodeE5M2(row[c] / scale) }
            }
        }
    }

    /// `quantize` straight from bf16 storage: each element widened exactly to f32 in the kernel, so
    /// the codes and scales are those of the f32 path without an f32 copy of the tensor. Returns
    /// false, leaving the outputs unspecified, if the input holds NaN or Inf.
    ///
    /// Runs the C kernel at the best instruction-set level of this CPU (`kernelLevel`); every level
    /// gives the same bytes (tested against the Swift codec and torch's goldens).
    ///
    /// With `scalesGiven`, `scales` already holds this matrix's scales (from a scales-only call on
    /// the same data, which also did the finiteness check) and only the codes are computed.
    public func quantize(bf16 x: UnsafePointer<UInt16>, rows: Int, cols: Int, codes: UnsafeMutablePointer<UInt8>?, scales: UnsafeMutablePointer<Float>,
                         scalesGiven: Bool = false, level: Int32 = FP8BlockQuantizer.kernelLevel) -> Bool {
        let input = SharedPointer(UnsafeMutablePointer(mutating: x))
        let out = codes.map(SharedPointer.init), sc = SharedPointer(scales)
        let nonFinite = NonFiniteFlag()
        let block = block, e5m2: Int32 = format == .e5m2 ? 1 : 0, given: Int32 = scalesGiven ? 1 : 0
        // Tasks own disjoint block rows: results do not depend on the thread count.
        Parallel.forEach(scaleShape(rows: rows, cols: cols)[0]) { br in
            if dsconvert_fp8_quantize_block_row_bf16(level, input.pointer, rows, cols, block, br, e5m2, out?.pointer, sc.pointer, given) != 0 {
                nonFinite.set()
            }
        }
        return !nonFinite.isSet
    }

    /// The instruction-set level the bf16 kernel runs at: the CPU's best, or lower with
    /// `DSCONVERT_FP8_ISA=baseline|avx2` (for comparing levels).
    public static let kernelLevel: Int32 = {
        let best = dsconvert_fp8_best_isa()
        switch ProcessInfo.processInfo.environment["DSCONVERT_FP8_ISA"] {
        case "baseline": return Int32(DSCONVERT_ISA_BASELINE)
        case "avx2": return min(best, Int32(DSCONVERT_ISA_AVX2))
        default: return best
        }
    }()

    /// The level `kernelLevel` names and how FP8 codes are decoded at it, as the benchmarks report
    /// it (their figures depend on it: the same code runs the 16-row V3 expert product at about half
    /// the speed at AVX2).
    public static var kernelDescription: String {
        let level: String
        switch kernelLevel {
        case Int32(DSCONVERT_ISA_AVX512): level = "AVX-512"
        case Int32(DSCONVERT_ISA_AVX2): level = "AVX2"
        default: level = "baseline (plain C)"
        }
        switch Int(dsconvert_fp8_decoder(kernelLevel)) {
        case Int(DSCONVERT_FP8_DECODER_VBMI): return "\(level), FP8 decoded by VBMI byte permutes"
        case Int(DSCONVERT_FP8_DECODER_F16C): return "\(level), FP8 decoded through f16"
        default: return "\(level), FP8 decoded by the generic decoder"
        }
    }

    /// The levels this CPU runs, lowest first.
    public static var availableKernelLevels: [Int32] { Array(0...dsconvert_fp8_best_isa()) }

    /// The f32 path's block loop (bf16 runs the C kernel): per block, the amax over its rows (as a
    /// magnitude bit pattern), scale = amax / max_finite, then every element encoded.
    @inline(__always)
    private func run(rows: Int, cols: Int, codes: UnsafeMutablePointer<UInt8>?, scales: UnsafeMutablePointer<Float>,
                     amaxBits: @escaping @Sendable (_ row: Int, _ c0: Int, _ c1: Int) -> UInt32,
                     encode: @escaping @Sendable (_ row: Int, _ c0: Int, _ c1: Int, _ scale: Float, _ dst: UnsafeMutablePointer<UInt8>) -> Void) {
        let shape = scaleShape(rows: rows, cols: cols)
        let out = codes.map(SharedPointer.init), sc = SharedPointer(scales)
        let maxFinite = format.maxFinite, block = block
        // Tasks own disjoint block rows: results do not depend on the thread count.
        Parallel.forEach(shape[0]) { br in
            for bc in 0..<shape[1] {
                let r0 = br * block, r1 = min(rows, r0 + block), c0 = bc * block, c1 = min(cols, c0 + block)
                var largest: UInt32 = 0
                for r in r0..<r1 { largest = max(largest, amaxBits(r, c0, c1)) }
                let amax = Float(bitPattern: largest)
                let scale = Self.blockScale(amax: amax, maxFinite: maxFinite)
                sc.pointer[br * shape[1] + bc] = scale
                if let out { for r in r0..<r1 { encode(r, c0, c1, scale, out.pointer + r * cols) } }
            }
        }
    }

    /// scale = amax / max_finite, or 1 when that is 0 (an all-zero tile, or one of f32 subnormals
    /// too small for the division): never 0, so codes are never 0/0.
    @inline(__always)
    static func blockScale(amax: Float, maxFinite: Float) -> Float {
        let scale = amax / maxFinite
        return scale == 0 ? 1 : scale
    }

    /// w = q · scale per block rounded once to bf16 (to nearest even), straight from the codes: the
    /// f32 product, then torch's `.to(torch.bfloat16)`, which is DeepSeek's `fp8_cast_bf16.py` (its
    /// `weight_dequant` then the cast). Runs the C kernel at `level` over block rows in parallel;
    /// every level and thread count gives the same bytes. Returns false if a product is not finite
    /// (the output is then unspecified; the caller names the code or the scale).
    public func dequantizeToBF16(codes: UnsafePointer<UInt8>, scales: UnsafePointer<Float>, rows: Int, cols: Int,
                                 into out: UnsafeMutablePointer<UInt16>, level: Int32 = FP8BlockQuantizer.kernelLevel) -> Bool {
        let input = SharedPointer(UnsafeMutablePointer(mutating: codes)), sc = SharedPointer(UnsafeMutablePointer(mutating: scales))
        let dst = SharedPointer(out), block = block, e5m2: Int32 = format == .e5m2 ? 1 : 0
        return allBlockRowsFinite(rows: rows, cols: cols) { br in
            dsconvert_fp8_dequantize_block_row_bf16(level, input.pointer, rows, cols, block, br, e5m2, sc.pointer, dst.pointer)
        }
    }

    /// w = q · scale per block, in f32: the C kernel at `level` over block rows in parallel (the same
    /// values at every level and thread count). Returns false if a code is NaN/Inf or a product is not
    /// finite (the output is then unspecified; the caller names the code or the scale).
    /// With `streaming`, written with streaming stores where the CPU allows
    /// (`dsconvert_fp8_dequantize_block_row_f32_streaming`): for a weight larger than the caches keep,
    /// widened for the product that reads it next. The same values.
    public func dequantize(codes: UnsafePointer<UInt8>, scales: UnsafePointer<Float>, rows: Int, cols: Int, into out: UnsafeMutablePointer<Float>,
                           streaming: Bool = false, level: Int32 = FP8BlockQuantizer.kernelLevel) -> Bool {
        let input = SharedPointer(UnsafeMutablePointer(mutating: codes)), sc = SharedPointer(UnsafeMutablePointer(mutating: scales))
        let dst = SharedPointer(out), block = block, e5m2: Int32 = format == .e5m2 ? 1 : 0
        return allBlockRowsFinite(rows: rows, cols: cols) { br in
            streaming ? dsconvert_fp8_dequantize_block_row_f32_streaming(level, input.pointer, rows, cols, block, br, e5m2, sc.pointer, dst.pointer)
                      : dsconvert_fp8_dequantize_block_row_f32(level, input.pointer, rows, cols, block, br, e5m2, sc.pointer, dst.pointer)
        }
    }

    /// Runs `kernel` (non-zero when it met a non-finite value) on every block row in parallel; tasks
    /// own disjoint block rows, so results do not depend on the thread count. True if none did.
    private func allBlockRowsFinite(rows: Int, cols: Int, _ kernel: @escaping (Int) -> Int32) -> Bool {
        let nonFinite = NonFiniteFlag()
        Parallel.forEach(scaleShape(rows: rows, cols: cols)[0]) { br in
            if kernel(br) != 0 { nonFinite.set() }
        }
        return !nonFinite.isSet
    }
}


/// Set by any task that meets a non-finite input (a benign race: every writer stores true).
private final class NonFiniteFlag: Sendable {
    private let flag = Mutex(false)
    func set() { flag.withLock { $0 = true } }
    var isSet: Bool { flag.withLock { $0 } }
}
