import Dispatch
import Numerics

/// C[m, n] = A[m, k] · B[k, n] in f64 with a fixed summation order (k ascending for every element).
///
/// Bytes that conversion writes must not depend on thread count or BLAS build (README "Guarantees", deterministic bytes), so folds
/// use this instead of OpenBLAS; rows are split across cores, which does not change any sum.
public enum DeterministicMatmul {
    public static func multiply(_ a: [Double], _ b: [Double], m: Int, k: Int, n: Int) -> [Double] {
        var c = [Double](repeating: 0, count: m * n)
        a.withUnsafeBufferPointer { ap in b.withUnsafeBufferPointer { bp in c.withUnsafeMutableBufferPointer { cp in
            // Each task writes its own rows only, so sharing the pointers is race-free.
            let cBase = SharedPointer(cp.baseAddress!), aBase = SharedPointer(UnsafeMutablePointer(mutating: ap.baseAddress!))
            let bBase = SharedPointer(UnsafeMutablePointer(mutating: bp.baseAddress!))
            Parallel.forEachChunk(of: m, size: 16) { rows in
                for i in rows {
                    let row = cBase.pointer + i * n
                    for p in 0..<k {
                        let scalar = aBase.pointer[i * k + p]
                        if scalar == 0 { continue }
                        let bRow = bBase.pointer + p * n
                        for j in 0..<n { row[j] += scalar * bRow[j] }
                    }
                }
            }
        } } }
        return c
    }
}
