import CKernels
import Foundation
import Numerics
import XCTest

/// `dsconvert_exp`, `dsconvert_silu_mul` and `dsconvert_causal_attention`: the same bits at every
/// instruction-set level, and within stated bounds of the same quantities in f64 (glibc's `exp`, a
/// plain softmax and sums).
final class AttentionKernelTests: XCTestCase {
    private let levels = FP8BlockQuantizer.availableKernelLevels

    /// Every 4099th bit pattern (both signs, subnormals, Inf, NaN) gives the baseline's bits at every level.
    func testExpSameBitsAtEveryLevel() {
        let x = stride(from: UInt64(0), through: UInt64(UInt32.max), by: 4099).map { Float(bitPattern: UInt32($0)) }
        var baseline = [Float](repeating: 0, count: x.count)
        dsconvert_exp(Int32(DSCONVERT_ISA_BASELINE), x, &baseline, x.count)
        for level in levels {
            var out = [Float](repeating: 0, count: x.count)
            dsconvert_exp(level, x, &out, x.count)
            for i in x.indices where out[i].bitPattern != baseline[i].bitPattern && !(out[i].isNaN && baseline[i].isNaN) {
                XCTFail("level \(level): e^\(x[i]) = \(out[i]), baseline \(baseline[i])")
                return
            }
        }
    }

    /// Within 2 ULP of glibc's double `exp` wherever e^x is a normal f32 (every 997th f32 in
    /// [-87.33, 88.72], both ends included); 0 below, +Inf above; NaN stays NaN; in place works.
    func testExpWithinTwoULP() {
        let lowest: Float = -87.33654475, highest: Float = 88.72283905
        let negative = stride(from: lowest.bitPattern, to: UInt32(0x8000_0000), by: -997).map(Float.init(bitPattern:))
        let positive = stride(from: UInt32(0), to: highest.bitPattern, by: 997).map(Float.init(bitPattern:))
        let x = negative + positive + [highest]
        var out = x
        dsconvert_exp(FP8BlockQuantizer.kernelLevel, out, &out, out.count)  // in place
        var worst = 0.0
        for (xi, yi) in zip(x, out) {
            let exact = Foundation.exp(Double(xi))
            guard Float(exact).isFinite else {
                XCTAssertEqual(yi, .infinity, "e^\(xi) rounds past the largest f32")
                continue
            }
            XCTAssertTrue(yi.isFinite, "e^\(xi) = \(yi)")
            worst = max(worst, abs(Double(yi) - exact) / Double(Float(exact).ulp))
        }
        XCTAssertLessThanOrEqual(worst, 2, "worst error \(worst) ULP over \(x.count) values")
        let specials: [Float] = [-.infinity, -1000, -87.34, .nan, 88.73, 1000, .infinity, 0, -0]
        var y = [Float](repeating: 0, count: specials.count)
        dsconvert_exp(FP8BlockQuantizer.kernelLevel, specials, &y, specials.count)
        XCTAssertEqual(Array(y[0..<3]), [0, 0, 0])
        XCTAssertTrue(y[3].isNaN)
        XCTAssertEqual(Array(y[4..<9]), [.infinity, .infinity, .infinity, 1, 1])
    }

    /// silu(g)·u: the same bits at every level; within 4 ULP-sized steps of the f64 formula for |g| ≤ 80.
    func testSiluTimesUp() {
        var generator = SplitMix64(seed: 7)
        let n = 10_001
        let gate = (0..<n).map { _ in Float.random(in: -80...80, using: &generator) }
        let up = (0..<n).map { _ in Float.random(in: -3...3, using: &generator) }
        var baseline = [Float](repeating: 0, count: n)
        dsconvert_silu_mul(Int32(DSCONVERT_ISA_BASELINE), gate, up, &baseline, n)
        for level in levels {
            var out = [Float](repeating: 0, count: n)
            dsconvert_silu_mul(level, gate, up, &out, n)
            XCTAssertEqual(out.map(\.bitPattern), baseline.map(\.bitPattern), "level \(level)")
        }
        for i in 0..<n {
            let g = Double(gate[i]), exact = g / (1 + Foundation.exp(-g)) * Double(up[i])
            // e^x within 2 ULP, then an add, a divide and a multiply each rounding once.
            XCTAssertLessThanOrEqual(abs(Double(baseline[i]) - exact), 6 * Double(Float(abs(exact)).ulp) + Double(Float.leastNormalMagnitude),
                                     "silu(\(gate[i])) · \(up[i])")
        }
    }

    private struct Head {
        var seq: Int, d1: Int, d2: Int, dv: Int, block: Int
        var q: [Float], k1: [Float], k2: [Float], v: [Float]
        var scale: Float
    }

    private func randomHead(seq: Int, d1: Int, d2: Int, dv: Int, block: Int) -> Head {
        var generator = SplitMix64(seed: UInt64(seq * 1_000_003 + d1 * 1009 + d2 * 101 + dv))
        func values(_ count: Int) -> [Float] { (0..<count).map { _ in Float.random(in: -2...2, using: &generator) } }
        return Head(seq: seq, d1: d1, d2: d2, dv: dv, block: block, q: values(seq * (d1 + d2)), k1: values(seq * d1), k2: values(seq * d2),
                    v: values(seq * dv), scale: 1 / Float(d1 + d2).squareRoot())
    }

    /// The kernel's output for `h`; with a `gap`, every operand's rows (and the output's) are `gap`
    /// floats further apart than their width, the floats between them NaN, as the forward pass hands
    /// it rows that are slices of wider ones.
    private func attend(_ h: Head, level: Int32, gap: Int = 0) -> [Float] {
        func spread(_ values: [Float], width: Int) -> [Float] {
            guard gap > 0, width > 0 else { return values }
            var out = [Float](repeating: .nan, count: h.seq * (width + gap))
            for j in 0..<h.seq { out.replaceSubrange((j * (width + gap))..<(j * (width + gap) + width), with: values[(j * width)..<((j + 1) * width)]) }
            return out
        }
        let dq = h.d1 + h.d2, ldo = h.dv + gap
        let (q, k1, k2, v) = (spread(h.q, width: dq), spread(h.k1, width: h.d1), spread(h.k2, width: h.d2), spread(h.v, width: h.dv))
        var out = [Float](repeating: .nan, count: h.seq * ldo)
        let status = q.withUnsafeBufferPointer { q in k1.withUnsafeBufferPointer { k1 in k2.withUnsafeBufferPointer { k2 in
            v.withUnsafeBufferPointer { v in
                dsconvert_causal_attention(level, h.seq, h.block, dsconvert_rows(data: q.baseAddress, ld: dq + gap, width: dq),
                                           dsconvert_rows(data: k1.baseAddress, ld: h.d1 + gap, width: h.d1),
                                           dsconvert_rows(data: k2.baseAddress, ld: max(h.d2 + (h.d2 > 0 ? gap : 0), 1), width: h.d2),
                                           dsconvert_rows(data: v.baseAddress, ld: h.dv + gap, width: h.dv), h.scale, &out, ldo)
            }
        } } }
        XCTAssertEqual(status, 0)
        return (0..<h.seq).flatMap { out[($0 * ldo)..<($0 * ldo + h.dv)] }
    }

    /// Rows that are slices of wider ones (the expanded form's keys and values are columns of
    /// kv_b_proj's output): the same bits as packed rows at every level, and nothing between them read.
    func testStridedRowsSameBits() {
        for (seq, d1, d2, dv, block) in [(37, 20, 12, 17, 16), (77, 128, 64, 128, 48), (9, 8, 0, 8, 128)] {
            let h = randomHead(seq: seq, d1: d1, d2: d2, dv: dv, block: block)
            let packed = attend(h, level: Int32(DSCONVERT_ISA_BASELINE))
            for level in levels {
                XCTAssertEqual(attend(h, level: level, gap: 5).map(\.bitPattern), packed.map(\.bitPattern), "level \(level), seq \(seq)")
            }
        }
    }

    /// Every level gives the same bits (on a machine without AVX2/AVX-512 only the baseline runs and
    /// this part compares it with itself), for sequences and widths with tails of the 16-wide steps, of
    /// the query blocks and of the 8 x 8 key transposes, and 1,024 keys; each output is
    /// within the first-order error bound of an f64 softmax(q·kᵀ)v:
    /// a score's sum of d products is off by at most d·u·Σ|q·k| (u = 2^-24), which moves p_j by at
    /// most twice the largest such error relative to p_j, to which exp's 2 ULP, the scale, the
    /// subtraction, the reciprocal and the product add a few u; the context's sum of n terms adds
    /// n·u; all relative to Σ_j p_j·|v_j|.
    func testCausalAttentionAgainstF64() {
        // (77, 512, 64, 512, 64): the latent forms' widths, keys packed 8 x 8 at a time up to a last group of 5.
        for (seq, d1, d2, dv, block) in [(1, 8, 0, 5, 128), (37, 20, 12, 17, 16), (130, 128, 64, 128, 128), (200, 64, 0, 33, 64),
                                         (1024, 16, 8, 16, 256), (77, 512, 64, 512, 64)] {
            let h = randomHead(seq: seq, d1: d1, d2: d2, dv: dv, block: block)
            let out = attend(h, level: Int32(DSCONVERT_ISA_BASELINE))
            for level in levels {
                XCTAssertEqual(attend(h, level: level).map(\.bitPattern), out.map(\.bitPattern), "level \(level), seq \(seq)")
            }
            let dq = d1 + d2, u = pow(2.0, -24.0)
            for i in 0..<seq {
                var scores = [Double](repeating: 0, count: i + 1), magnitude = 0.0
                for j in 0...i {
                    var s = 0.0, a = 0.0
                    for d in 0..<dq {
                        let k = d < d1 ? Double(h.k1[j * d1 + d]) : Double(h.k2[j * d2 + d - d1])
                        s += Double(h.q[i * dq + d]) * k
                        a += abs(Double(h.q[i * dq + d]) * k)
                    }
                    scores[j] = s * Double(h.scale)
                    magnitude = max(magnitude, a * Double(h.scale))
                }
                let top = scores.max()!
                let e = scores.map { Foundation.exp($0 - top) }, sum = e.reduce(0, +)
                let keys = Double((((i / block) + 1) * block + 15) / 16 * 16)
                let relative = 2 * Double(dq) * u * magnitude + 8 * u
                for c in 0..<dv {
                    var exact = 0.0, weight = 0.0
                    for j in 0...i {
                        exact += e[j] / sum * Double(h.v[j * dv + c])
                        weight += e[j] / sum * abs(Double(h.v[j * dv + c]))
                    }
                    let bound = (relative + keys * u) * weight + Double(Float.leastNormalMagnitude)
                    XCTAssertLessThanOrEqual(abs(Double(out[i * dv + c]) - exact), bound, "seq \(seq), row \(i), column \(c)")
                }
            }
        }
    }

    /// Causal: a later key or value never changes an earlier row's bits.
    func testCausalMask() {
        var h = randomHead(seq: 70, d1: 24, d2: 8, dv: 16, block: 32)
        let before = attend(h, level: FP8BlockQuantizer.kernelLevel)
        for d in 0..<24 { h.k1[69 * 24 + d] = 1e6 }
        for c in 0..<16 { h.v[69 * 16 + c] = -1e6 }
        let after = attend(h, level: FP8BlockQuantizer.kernelLevel)
        XCTAssertEqual(Array(after[0..<(69 * 16)]).map(\.bitPattern), Array(before[0..<(69 * 16)]).map(\.bitPattern))
        XCTAssertNotEqual(Array(after[(69 * 16)...]), Array(before[(69 * 16)...]))
    }
}
