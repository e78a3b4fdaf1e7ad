import CKernels
import COpenBLAS
import Foundation
import Numerics

/// Matrix products of the reference forward, all through `cblas_sgemm` (row-major, fp32).
public enum Linear {
    /// y[rows, out] (+)= x[rows, in] · wᵀ, with w stored [out, in] as every checkpoint linear weight is.
    static func forward(_ x: UnsafePointer<Float>, rows: Int, inFeatures: Int,
                        weight: UnsafePointer<Float>, outFeatures: Int,
                        into y: UnsafeMutablePointer<Float>, accumulate: Bool = false) {
        guard rows > 0, outFeatures > 0 else { return }
        _ = BLASCore.selection
        if inFeatures == 0 {
            if !accumulate { y.update(repeating: 0, count: rows * outFeatures) }
            return
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(rows), Int32(outFeatures), Int32(inFeatures),
                    1, x, Int32(inFeatures), weight, Int32(inFeatures), accumulate ? 1 : 0, y, Int32(outFeatures))
    }

    /// y = x · wᵀ for whole arrays.
    static func forward(_ x: [Float], rows: Int, weight: [Float], inFeatures: Int, outFeatures: Int) -> [Float] {
        var y = [Float](repeating: 0, count: rows * outFeatures)
        x.withUnsafeBufferPointer { xp in weight.withUnsafeBufferPointer { wp in y.withUnsafeMutableBufferPointer { yp in
            forward(xp.baseAddress!, rows: rows, inFeatures: inFeatures, weight: wp.baseAddress!, outFeatures: outFeatures, into: yp.baseAddress!)
        } } }
        return y
    }

    /// y = x · wᵀ with w widened into an arena buffer.
    static func forward(_ x: [Float], rows: Int, weight: WeightMatrix, inFeatures: Int, outFeatures: Int) -> [Float] {
        precondition(weight.count == inFeatures * outFeatures, "weight of \(weight.count) values for \(outFeatures)x\(inFeatures)")
        var y = [Float](repeating: 0, count: rows * outFeatures)
        x.withUnsafeBufferPointer { xp in weight.withUnsafeBufferPointer { wp in y.withUnsafeMutableBufferPointer { yp in
            forward(xp.baseAddress!, rows: rows, inFeatures: inFeatures, weight: wp.baseAddress!, outFeatures: outFeatures, into: yp.baseAddress!)
        } } }
        return y
    }

    /// y = x · wᵀ with w as stored, converted a few rows at a time inside the product
    /// (`StoredWeight.product`, one thread: the routed experts run one per core).
    static func forward(_ x: [Float], rows: Int, stored w: StoredWeight, inFeatures: Int, outFeatures: Int) throws -> [Float] {
        precondition(w.rows == outFeatures && w.cols == inFeatures && x.count >= rows * inFeatures,
                     "stored weight \(w.rows)x\(w.cols) for \(outFeatures)x\(inFeatures)")
        // Not zeroed first: the product writes every output (a routed expert's outputs are fresh
        // memory each time, and zeroing them was most of what its allocation cost).
        return try [Float](unsafeUninitializedCapacity: rows * outFeatures) { yp, count in
            try x.withUnsafeBufferPointer { xp in
                try w.product(xp.baseAddress!, rows: rows, columns: 0..<outFeatures, into: yp.baseAddress!, ldy: outFeatures)
            }
            count = rows * outFeatures
        }
    }

    /// y = x · wᵀ for an fp32 weight in memory, computed as `forward(_:rows:stored:…)` computes it:
    /// the same products, bit for bit, whether a provider lends the weight as stored or only as fp32.
    static func forwardAsStored(_ x: [Float], rows: Int, weight: WeightMatrix, inFeatures: Int, outFeatures: Int) -> [Float] {
        precondition(weight.count == inFeatures * outFeatures, "weight of \(weight.count) values for \(outFeatures)x\(inFeatures)")
        return weight.withUnsafeBufferPointer { wp in
            // An fp32 weight is never flagged: only FP8 codes are.
            try! forward(x, rows: rows, stored: .floats(wp, rows: outFeatures, cols: inFeatures), inFeatures: inFeatures, outFeatures: outFeatures)
        }
    }

    /// General strided product c[m, n] = alpha · a[m, k] · op(b) + beta · c, with leading dimensions
    /// (row-major; op(b) is b[k, n], or bᵀ for b[n, k] with `transposeB`).
    public static func gemm(transposeB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                     a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                     beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        guard m > 0, n > 0 else { return }
        _ = BLASCore.selection
        cblas_sgemm(CblasRowMajor, CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans, Int32(m), Int32(n), Int32(k),
                    alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }
}

/// OpenBLAS's thread count, for code whose results are written (calibration statistics): a
/// single-threaded sgemm reduces in a fixed order, so its output does not depend on the machine's
/// core count (README "Guarantees", deterministic bytes).
public enum BLASThreads {
    public static func withSingleThread<T>(_ body: () throws -> T) rethrows -> T {
        _ = BLASCore.selection
        let previous = openblas_get_num_threads()
        openblas_set_num_threads(1)
        parkWorkers()
        defer { openblas_set_num_threads(previous) }
        return try body()
    }

    /// Stops OpenBLAS's idle workers before work that runs one task per core (routed experts,
    /// attention heads): after a multi-threaded product they spin on sched_yield for ~0.1 s and take
    /// turns on the cores with that work. The next multi-threaded product starts them again.
    static func parkWorkers() {
        _ = BLASCore.selection
        _ = dsconvert_openblas_park_threads()
    }
}

/// Element-wise pieces of the forward pass.
enum Elementwise {
    /// RMSNorm over rows of width `width`: x / sqrt(mean(x²) + eps) · γ (fp32, sum of squares in f64,
    /// added in order). Rows are independent, so large inputs take a chunk of rows per core: the same
    /// bits on any number of cores.
    static func rmsNorm(_ x: [Float], width: Int, gamma: [Float], eps: Double) -> [Float] {
        var out = [Float](repeating: 0, count: x.count)
        let rows = width == 0 ? 0 : x.count / width
        guard rows > 0 else { return out }
        precondition(gamma.count == width, "gain of \(gamma.count) values for rows of \(width)")
        // A chunk is ~64 K values: large enough that handing it to a core costs nothing in comparison.
        let chunk = max(1, (1 << 16) / width)
        x.withUnsafeBufferPointer { xp in gamma.withUnsafeBufferPointer { gp in out.withUnsafeMutableBufferPointer { op in
            let source = xp.baseAddress!, gains = gp.baseAddress!, destination = SharedPointer(op.baseAddress!)
            Parallel.forEachChunk(of: rows, size: chunk) { range in
                let first = range.lowerBound, end = range.upperBound
                var sums = [Double](repeating: 0, count: end - first)
                sumsOfSquares(source + first * width, rows: end - first, width: width, into: &sums)
                for r in first..<end {
                    let row = source + r * width, target = destination.pointer + r * width
                    let scale = Float(1.0 / (sums[r - first] / Double(width) + eps).squareRoot())
                    for i in 0..<width { target[i] = gains[i] * (row[i] * scale) }
                }
            }
        } } }
        return out
    }

    /// Each row's Σ x² in f64, added in order (a multiply, then an add: never fused). Four rows at a
    /// time: one row's sum is a chain of dependent adds that leaves the core mostly waiting (V3's
    /// 7,168 per row), and four chains side by side fill the wait; each sum is still its own row's,
    /// in its own order.
    private static func sumsOfSquares(_ x: UnsafePointer<Float>, rows: Int, width: Int, into sums: inout [Double]) {
        var r = 0
        while r + 4 <= rows {
            let a = x + r * width, b = a + width, c = b + width, d = c + width
            var (sa, sb, sc, sd) = (0.0, 0.0, 0.0, 0.0)
            for i in 0..<width {
                let (va, vb, vc, vd) = (Double(a[i]), Double(b[i]), Double(c[i]), Double(d[i]))
                sa += va * va
                sb += vb * vb
                sc += vc * vc
                sd += vd * vd
            }
            (sums[r], sums[r + 1], sums[r + 2], sums[r + 3]) = (sa, sb, sc, sd)
            r += 4
        }
        for row in r..<rows {
            var sum = 0.0
            for i in 0..<width { sum += Double(x[row * width + i]) * Double(x[row * width + i]) }
            sums[row] = sum
        }
    }

    /// x += y element by element (the residual connection), large arrays a chunk per core: each
    /// element is its own sum, so the bits are the same on any number of cores. (V3's residual
    /// stream at 512 tokens is 3.7 M values, ~1 ms on one core, four times per layer.)
    static func add(_ y: [Float], into x: inout [Float]) {
        precondition(x.count == y.count, "\(x.count) values plus \(y.count)")
        x.withUnsafeMutableBufferPointer { xp in y.withUnsafeBufferPointer { yp in
            guard let xb = xp.baseAddress, let yb = yp.baseAddress else { return }
            let target = SharedPointer(xb)
            Parallel.forEachChunk(of: xp.count, size: 1 << 16) { range in
                for i in range { target.pointer[i] += yb[i] }
            }
        } }
    }

    /// silu(gate) ⊙ up = gate / (1 + e^-gate) · up, element by element, written over `gate`
    /// (`dsconvert_silu_mul`: its e^x is the same bits at every instruction-set level); `onEveryCore`,
    /// large arrays a chunk per core. In place: a fresh array of the MLP's width (V3's dense MLP: 37 MB
    /// at 512 tokens) cost more in page faults than the function itself.
    static func siluTimes(_ gate: inout [Float], _ up: [Float], onEveryCore: Bool) {
        precondition(gate.count == up.count, "gate of \(gate.count) values, up of \(up.count)")
        let count = gate.count, chunk = onEveryCore ? 1 << 16 : max(1, gate.count)
        gate.withUnsafeMutableBufferPointer { gp in up.withUnsafeBufferPointer { upp in
            guard count > 0 else { return }
            let values = SharedPointer(gp.baseAddress!)
            // Each chunk reads and writes its own elements: the same bits on any number of cores.
            Parallel.forEachChunk(of: count, size: chunk) { range in
                let at = values.pointer + range.lowerBound
                dsconvert_silu_mul(FP8BlockQuantizer.kernelLevel, at, upp.baseAddress! + range.lowerBound, at, range.count)
            }
        } }
    }

    /// Softmax of one row in place (max-subtracted, sum in f64).
    static func softmax(_ row: UnsafeMutablePointer<Float>, count: Int) {
        guard count > 0 else { return }
        var m = -Float.infinity
        for i in 0..<count { m = max(m, row[i]) }
        var sum = 0.0
        for i in 0..<count {
            let e = expf(row[i] - m)
            row[i] = e
            sum += Double(e)
        }
        let inv = Float(1.0 / sum)
        for i in 0..<count { row[i] *= inv }
    }
}

#if canImport(Glibc)
import Glibc
#endif
