import CKernels
import Foundation
import XCTest

/// `dsconvert_stored_gemm`: every instruction-set level and every split of the output columns gives
/// the sums its definition spells out (`dsconvert_stored_gemm_reference`), bit for bit; those sums are
/// the dot products within the f32 error bound; NaN codes and overflowing products are flagged. At
/// AVX-512, bf16 and f32 whole panels of 6 rows are read in place and the last partial one packed:
/// the random cases' 1-40 output columns, column tails and misaligned data cover both.
final class StoredProductTests: XCTestCase {
    private struct Case {
        var kind: Int32, m: Int, n: Int, k: Int, block: Int
        var data: [UInt8], scales: [Float], x: [Float]
        /// Each weight as the kernel must read it, widened independently (Float16 for f16, the
        /// E4M3/E5M2 formulas for FP8).
        var widened: [Double]
    }

    private var generator = SystemRandomNumberGenerator()

    /// Finite weights of every storage: f32, bf16 and f16 bit patterns with finite values, FP8 codes
    /// except NaN/Inf (subnormal ones included), block scales of 128, 32, 24, 8 or 5 (5: several blocks
    /// in one panel's rows and in one 16-column step, none ending where a 512-column block does; 24
    /// and 8: blocks ending in the middle of a 16-column step, and, with 17 or 257 columns, in the
    /// last step's padding), shapes with partial blocks and tails of the 16-column steps.
    /// `k` and `m` when given (else one of a list with every kind of tail, and 1-21 rows).
    private func randomCase(kind: Int32, k given: Int? = nil, m rows: Int? = nil) -> Case {
        let m = rows ?? Int.random(in: 1...21, using: &generator), n = Int.random(in: 1...40, using: &generator)
        let k = given ?? [1, 15, 16, 17, 255, 256, 257, 300, 700][Int.random(in: 0..<9, using: &generator)]
        let block = [128, 32, 24, 8, 5][Int.random(in: 0..<5, using: &generator)]
        var data: [UInt8] = [], widened: [Double] = []
        for _ in 0..<(n * k) {
            switch Int(kind) {
            case Int(DSCONVERT_STORED_F32):
                let v = Float.random(in: -2...2, using: &generator)
                withUnsafeBytes(of: v.bitPattern.littleEndian) { data += $0 }
                widened.append(Double(v))
            case Int(DSCONVERT_STORED_BF16), Int(DSCONVERT_STORED_F16):
                // Any finite f16; bf16 with exponents 2^-30...2^10 or subnormal (wider would overflow the sums).
                var bits: UInt16
                repeat { bits = UInt16.random(in: 0...UInt16.max, using: &generator) } while
                    kind == DSCONVERT_STORED_BF16 ? !((97...137).contains((bits >> 7) & 0xFF) || (bits >> 7) & 0xFF == 0) : (bits & 0x7C00) == 0x7C00
                withUnsafeBytes(of: bits.littleEndian) { data += $0 }
                widened.append(kind == DSCONVERT_STORED_BF16 ? Double(Float(bitPattern: UInt32(bits) << 16)) : Double(Float16(bitPattern: bits)))
            default:
                let e5m2 = kind == DSCONVERT_STORED_FP8_E5M2
                var code: UInt8
                repeat { code = UInt8.random(in: 0...255, using: &generator) } while (code & 0x7F) >= (e5m2 ? 0x7C : 0x7F)
                data.append(code)
                widened.append(Self.fp8Value(code, e5m2: e5m2))
            }
        }
        let blocks = ((n + block - 1) / block) * ((k + block - 1) / block)
        let scales = (0..<blocks).map { _ in Float.random(in: 1e-4...2, using: &generator) }
        if kind == DSCONVERT_STORED_FP8_E4M3 || kind == DSCONVERT_STORED_FP8_E5M2 {
            let perRow = (k + block - 1) / block
            for r in 0..<n { for c in 0..<k { widened[r * k + c] = Double(Float(widened[r * k + c]) * scales[(r / block) * perRow + c / block]) } }
        }
        let x = (0..<(m * k)).map { _ in Float.random(in: -1...1, using: &generator) }
        return Case(kind: kind, m: m, n: n, k: k, block: block, data: data, scales: scales, x: x, widened: widened)
    }

    /// An FP8 code's value from its fields: (-1)^s 2^(e - bias) (1 + f), or 2^(1 - bias) f subnormal.
    private static func fp8Value(_ code: UInt8, e5m2: Bool) -> Double {
        let mantissaBits = e5m2 ? 2 : 3, bias = e5m2 ? 15 : 7
        let e = Int(code & 0x7F) >> mantissaBits, f = Double(Int(code) & ((1 << mantissaBits) - 1)) / Double(1 << mantissaBits)
        let magnitude = e == 0 ? pow(2, Double(1 - bias)) * f : pow(2, Double(e - bias)) * (1 + f)
        return code & 0x80 != 0 ? -magnitude : magnitude
    }

    /// Runs the kernel on `c` with its data placed `misalign` bytes past an aligned address. The bytes
    /// around the data are 0xFF, NaN as bf16, f16 and f32 and as FP8 codes: a kernel reading past a row's
    /// last column (past the data's end, for the last row) would add fma(0, NaN, s) = NaN.
    private func product(_ c: Case, level: Int32?, columns: [Range<Int>], misalign: Int = 0) -> ([Float], Int32) {
        var y = [Float](repeating: .nan, count: c.m * c.n)
        var status: Int32 = 0
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: c.data.count + 64, alignment: 64)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0xFF, count: c.data.count + 64)
        buffer.advanced(by: misalign).copyMemory(from: c.data, byteCount: c.data.count)
        c.scales.withUnsafeBufferPointer { sp in c.x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { yp in
            var w = dsconvert_stored_matrix(kind: c.kind, data: buffer.advanced(by: misalign), rows: c.n, cols: c.k, scales: sp.baseAddress, block: c.block)
            for range in columns {
                status |= level.map { dsconvert_stored_gemm($0, &w, xp.baseAddress, c.m, range.lowerBound, range.upperBound, yp.baseAddress, c.n) }
                    ?? dsconvert_stored_gemm_reference(&w, xp.baseAddress, c.m, range.lowerBound, range.upperBound, yp.baseAddress, c.n)
            }
        } } }
        return (y, status)
    }

    private static let kinds = [DSCONVERT_STORED_F32, DSCONVERT_STORED_BF16, DSCONVERT_STORED_F16, DSCONVERT_STORED_FP8_E4M3, DSCONVERT_STORED_FP8_E5M2].map { Int32($0) }

    func testEveryLevelAndSplitGivesTheDefinedSums() {
        let best = dsconvert_fp8_best_isa()
        for kind in Self.kinds {
            for trial in 0..<24 {
                // The first three trials always have a column block of 512 and a partial one after it,
                // and a tail of the 16-column steps: FP8's blocks through VBMI are 512 columns, the other
                // kinds' 512 from 32 rows of x on (the second and third trials) and 256 below (the
                // first). The third has 53 rows: AVX2's broadcast kernel takes 48 of them for every kind
                // (FP8 from 16 rows). The fourth and fifth have 31 and 22-31 rows: AVX2's output-vector
                // kernel takes FP8 products of 5-31 rows whole (its tiles of up to 6 rows).
                let rows = [1: Int.random(in: 32...40, using: &generator), 2: 53, 3: 31, 4: Int.random(in: 22...31, using: &generator)][trial]
                let c = randomCase(kind: kind, k: trial < 3 ? 1000 : nil, m: rows)
                let (reference, flagged) = product(c, level: nil, columns: [0..<c.n])
                XCTAssertEqual(flagged, 0)
                let cut = Int.random(in: 0...c.n, using: &generator)
                for (level, vbmi) in Self.paths(best) {
                    for columns in [[0..<c.n], [0..<cut, cut..<c.n]] {
                        let (y, status) = withVBMI(vbmi) { product(c, level: level, columns: columns, misalign: trial % 3) }
                        XCTAssertEqual(status, 0)
                        XCTAssertEqual(y.map(\.bitPattern), reference.map(\.bitPattern),
                                       "kind \(kind) level \(level) vbmi \(vbmi) m \(c.m) n \(c.n) k \(c.k) block \(c.block) columns \(columns)")
                    }
                }
                // The sums are the dot products: within K·2⁻²⁴·Σ|x·w| (each of K roundings at most half
                // an ulp of a partial sum bounded by Σ|x·w|; f32 products of f32 values are exact in f64).
                for i in 0..<c.m {
                    for j in 0..<c.n {
                        var exact = 0.0, magnitude = 0.0
                        for t in 0..<c.k {
                            let term = Double(c.x[i * c.k + t]) * c.widened[j * c.k + t]
                            exact += term
                            magnitude += abs(term)
                        }
                        let bound = Double(c.k + 1) * 0x1p-24 * magnitude + 1e-38
                        XCTAssertLessThanOrEqual(abs(Double(reference[i * c.n + j]) - exact), bound, "kind \(kind) (\(i), \(j)) k \(c.k)")
                    }
                }
            }
        }
    }

    /// Output columns split where a panel's rows straddle a scale block (blocks of 32 rows, splits at 5
    /// and 29): AVX2's output-vector kernel decodes 8 rows at a time with each row's own scale.
    func testPanelsAcrossScaleBlocksGiveTheDefinedSums() {
        let best = dsconvert_fp8_best_isa()
        for kind in [DSCONVERT_STORED_FP8_E4M3, DSCONVERT_STORED_FP8_E5M2].map({ Int32($0) }) {
            let (m, n, k, block) = (13, 48, 1000, 32)
            let e5m2 = kind == DSCONVERT_STORED_FP8_E5M2
            let codes: [UInt8] = (0..<(n * k)).map { _ in
                var code: UInt8
                repeat { code = UInt8.random(in: 0...255, using: &generator) } while (code & 0x7F) >= (e5m2 ? 0x7C : 0x7F)
                return code
            }
            let c = Case(kind: kind, m: m, n: n, k: k, block: block, data: codes,
                         scales: (0..<(((n + block - 1) / block) * ((k + block - 1) / block))).map { _ in Float.random(in: 1e-3...2, using: &generator) },
                         x: (0..<(m * k)).map { _ in Float.random(in: -1...1, using: &generator) }, widened: [])
            let (reference, flagged) = product(c, level: nil, columns: [0..<c.n])
            XCTAssertEqual(flagged, 0)
            for (level, vbmi) in Self.paths(best) {
                for columns in [[0..<5, 5..<48], [0..<29, 29..<48]] {
                    let (y, status) = withVBMI(vbmi) { product(c, level: level, columns: columns) }
                    XCTAssertEqual(status, 0)
                    XCTAssertEqual(y.map(\.bitPattern), reference.map(\.bitPattern), "kind \(kind) level \(level) vbmi \(vbmi) columns \(columns)")
                }
            }
        }
    }

    /// FP8 block scales at the edges of the decoders' ranges give the defined sums at every level:
    /// subnormal and tiny scales (the AVX2 decoder's factor scale × 2^8 and its products stay normal
    /// or round once), the former limits of a decoder through f32 fields (256, 65,536), and the
    /// largest that keep every code's product finite. Blocks of 128 or 32 columns, so the AVX2
    /// decoder's groups of 32 codes take each scale.
    func testExtremeScalesGiveTheDefinedSums() {
        let best = dsconvert_fp8_best_isa()
        let edges: [Float] = [0x1p-133, 0x1p-126, 1e-3, 255.99, 256, 65535, 65536, 1e30, 5e33]
        for kind in [DSCONVERT_STORED_FP8_E4M3, DSCONVERT_STORED_FP8_E5M2].map({ Int32($0) }) {
            for trial in 0..<6 {
                var c: Case
                // At AVX2, 21 rows go to the output-vector kernel; 37 to the broadcast kernel (32) and
                // the column-vector one (5).
                repeat { c = randomCase(kind: kind, k: trial < 3 ? 1000 : 300, m: trial % 2 == 0 ? 21 : 37) } while c.block == 5
                c.scales = c.scales.indices.map { edges[($0 + trial) % edges.count] }
                c.x = c.x.map { $0 * 1e-8 }  // the sums stay finite under scales of 5e33
                let (reference, flagged) = product(c, level: nil, columns: [0..<c.n])
                XCTAssertEqual(flagged, 0)
                for (level, vbmi) in Self.paths(best) {
                    let (y, status) = withVBMI(vbmi) { product(c, level: level, columns: [0..<c.n]) }
                    XCTAssertEqual(status, 0)
                    XCTAssertEqual(y.map(\.bitPattern), reference.map(\.bitPattern),
                                   "kind \(kind) level \(level) vbmi \(vbmi) n \(c.n) k \(c.k) block \(c.block)")
                }
            }
        }
    }

    /// Every instruction-set level, and at AVX-512 the FP8 decoder with VBMI and without.
    private static func paths(_ best: Int32) -> [(Int32, Bool)] {
        (0...best).map { ($0, true) } + (best >= Int32(DSCONVERT_ISA_AVX512) ? [(best, false)] : [])
    }

    /// Runs `body` with the VBMI decoder allowed or turned off (`DSCONVERT_NO_VBMI`).
    private func withVBMI<T>(_ allowed: Bool, _ body: () -> T) -> T {
        if !allowed { setenv("DSCONVERT_NO_VBMI", "1", 1) }
        defer { unsetenv("DSCONVERT_NO_VBMI") }
        return body()
    }

    /// Rows of x beyond one chunk (1 MB of them: 36 rows at V3's 7168 columns, 32 at AVX2, whose
    /// broadcast kernel takes them 16 at a time; 13 at 20,000 columns, where AVX2's output-vector
    /// kernel takes 20 rows) give the same sums.
    func testRowsBeyondOneChunk() {
        for (kind, m, n, k) in [(DSCONVERT_STORED_FP8_E4M3, 56, 13, 7168), (DSCONVERT_STORED_BF16, 56, 13, 7168), (DSCONVERT_STORED_FP8_E4M3, 20, 21, 20000)] {
            rowsBeyondOneChunk(kind: Int32(kind), m: m, n: n, k: k)
        }
    }

    private func rowsBeyondOneChunk(kind: Int32, m: Int, n: Int, k: Int) {
        let best = dsconvert_fp8_best_isa(), block = 128
        let size = kind == DSCONVERT_STORED_BF16 ? 2 : 1
        // Bytes below 0x40: finite FP8 codes, and bf16 values of magnitude below 2^-63 or so.
        let c = Case(kind: kind, m: m, n: n, k: k, block: block, data: (0..<(n * k * size)).map { _ in UInt8.random(in: 0...0x3F) },
                     scales: [Float](repeating: 0.01, count: ((n + block - 1) / block) * ((k + block - 1) / block)),
                     x: (0..<(m * k)).map { _ in Float.random(in: -1...1) }, widened: [])
        let (reference, _) = product(c, level: nil, columns: [0..<n])
        for (level, vbmi) in Self.paths(best) {
            let (y, status) = withVBMI(vbmi) { product(c, level: level, columns: [0..<n]) }
            XCTAssertEqual(status, 0)
            XCTAssertEqual(y.map(\.bitPattern), reference.map(\.bitPattern), "kind \(kind) m \(m) k \(k) level \(level) vbmi \(vbmi)")
        }
    }

    /// A weight of no columns gives sums of +0 at every level and for every number of rows (each
    /// kernel's path: 2, 13 and 40 rows at AVX2).
    func testNoColumnsGiveZeros() {
        for kind in Self.kinds {
            for m in [2, 13, 40] {
                let c = Case(kind: kind, m: m, n: 21, k: 0, block: 128, data: [], scales: [1], x: [], widened: [])
                for (level, vbmi) in [(nil, true)] + Self.paths(dsconvert_fp8_best_isa()).map({ (Optional($0.0), $0.1) }) {
                    let (y, status) = withVBMI(vbmi) { product(c, level: level, columns: [0..<c.n]) }
                    XCTAssertEqual(status, 0)
                    XCTAssertEqual(y.map(\.bitPattern), [UInt32](repeating: 0, count: m * c.n), "kind \(kind) m \(m) level \(String(describing: level))")
                }
            }
        }
    }

    /// An unknown kind, or FP8 without scales or with a block of 0, is refused (3), never read.
    func testInvalidDescriptionsAreRefused() {
        var x: [Float] = [1, 2], y: [Float] = [0]
        let codes: [UInt8] = [0x38, 0x38], scales: [Float] = [1]
        codes.withUnsafeBytes { cp in scales.withUnsafeBufferPointer { sp in
            for (kind, scalePointer, block) in [(Int32(7), sp.baseAddress, 128), (Int32(DSCONVERT_STORED_FP8_E4M3), nil, 128),
                                               (Int32(DSCONVERT_STORED_FP8_E4M3), sp.baseAddress, 0)] {
                var w = dsconvert_stored_matrix(kind: kind, data: cp.baseAddress, rows: 1, cols: 2, scales: scalePointer, block: block)
                XCTAssertEqual(dsconvert_stored_gemm(dsconvert_fp8_best_isa(), &w, &x, 1, 0, 1, &y, 1), 3, "kind \(kind) block \(block)")
            }
        } }
    }

    /// 2 rows of x: the kernels of stored_gemm.c; 13 at AVX2: the output-vector kernel, whose 16-row
    /// panels decode whole groups of 8 rows through f16 and the rest (here rows 16-20, and the last
    /// columns) one value at a time.
    /// Blocks of 128 (the f16 decoder's path) and 5 (one value at a time throughout).
    func testNaNCodesAndOverflowingProductsAreFlagged() {
        for kind in [DSCONVERT_STORED_FP8_E4M3, DSCONVERT_STORED_FP8_E5M2].map({ Int32($0) }) {
            for rows in [2, 13] { for block in [128, 5] { checkFlags(kind: kind, rows: rows, block: block) } }
        }
    }

    private func checkFlags(kind: Int32, rows: Int, block: Int) {
        var c = randomCase(kind: kind)
        c.n = 21
        c.k = 300
        c.m = rows
        c.block = block
        c.data = [UInt8](repeating: 0x38, count: c.n * c.k)
        c.x = [Float](repeating: 1, count: c.m * c.k)
        let perRow = (c.k + c.block - 1) / c.block
        c.scales = [Float](repeating: 1, count: ((c.n + c.block - 1) / c.block) * perRow)
        for (level, vbmi) in [(nil, true)] + Self.paths(dsconvert_fp8_best_isa()).map({ (Optional($0.0), $0.1) }) {
            let label = "level \(String(describing: level)) vbmi \(vbmi) m \(rows) block \(c.block)"
            XCTAssertEqual(withVBMI(vbmi) { product(c, level: level, columns: [0..<c.n]).1 }, 0, "clean, \(label)")
            // A NaN code in a tail of 44 codes and inside a whole run of 64, in rows of both halves
            // of a 16-row panel and of the partial panel after it.
            let codes: [UInt8] = kind == DSCONVERT_STORED_FP8_E4M3 ? [0xFF, 0x7F] : [0x7D, 0x7C, 0xFC]
            for (i, (row, column)) in [(5, 299), (5, 10), (13, 10), (19, 40)].enumerated() {
                var nan = c
                let code = codes[i % codes.count]
                nan.data[row * c.k + column] = code
                XCTAssertEqual(withVBMI(vbmi) { product(nan, level: level, columns: [0..<c.n]).1 }, 1, "code \(code) at (\(row), \(column)), \(label)")
            }
            var overflow = c  // the format's largest code under a scale of 3e38
            overflow.scales[0] = 3e38
            overflow.data[0] = kind == DSCONVERT_STORED_FP8_E4M3 ? 0x7E : 0x7B
            XCTAssertEqual(withVBMI(vbmi) { product(overflow, level: level, columns: [0..<c.n]).1 }, 1, "overflow, \(label)")
            // The same huge scale on a block of zero codes overflows nothing.
            var zeros = overflow
            for r in 0..<min(c.n, c.block) { for col in 0..<min(c.k, c.block) { zeros.data[r * c.k + col] = 0 } }
            XCTAssertEqual(withVBMI(vbmi) { product(zeros, level: level, columns: [0..<c.n]).1 }, 0, "zero codes, \(label)")
        }
    }
}
