import DeepSeekModel
import Foundation
import ReferenceModel

extension KVChannelCalibration {
    /// Per head, the metric G_h = M_hᵀ·M_h of the map M_h = W_O,h·W_UV,h from a head's latent context to
    /// the attention block's output: |M_h·x|² = xᵀ·G_h·x for a latent vector x. Read from the layer's
    /// weights in whichever form the checkpoint is (kv_b_proj and o_proj; w_uv and o_proj; o_absorbed).
    struct ValueMetrics {
        let config: DeepSeekConfig
        let weights: WeightProvider

        func metric(layer: Int) throws -> [[Float]] {
            let heads = config.numAttentionHeads, l = config.kvLoraRank, h = config.hiddenSize
            let nope = config.qkNopeHeadDim, dv = config.vHeadDim
            func load(_ w: LayerWeight, _ shape: [Int]) throws -> [Float] { try weights.floats(TensorNames.name(w, layer: layer), shape: shape) }
            switch config.attentionForm {
            case .fold:
                let oAbsorbed = try load(.oAbsorbed, [h, heads * l])
                return (0..<heads).map { head in
                    let mT = Self.transposedColumns(oAbsorbed, rows: h, stride: heads * l, from: head * l, count: l)
                    return Self.gram(mT, rows: l, columns: h)
                }
            case .mla, .split:
                let oProj = try load(.oProj, [h, heads * dv])
                let (wUV, offset): ([Float], (Int) -> Int) = config.attentionForm == .mla
                    ? (try load(.kvBProj, [heads * (nope + dv), l]), { ($0 * (nope + dv) + nope) * l })
                    : (try load(.wUV, [heads, dv, l]), { $0 * dv * l })
                return (0..<heads).map { head in
                    let oT = Self.transposedColumns(oProj, rows: h, stride: heads * dv, from: head * dv, count: dv)
                    let k = Self.gram(oT, rows: dv, columns: h)  // W_Oᵀ·W_O, [dv, dv]
                    let v = Array(wUV[offset(head)..<(offset(head) + dv * l)])  // W_UV, [dv, l]
                    var kv = [Float](repeating: 0, count: dv * l)
                    var vT = [Float](repeating: 0, count: l * dv)
                    for i in 0..<dv { for j in 0..<l { vT[j * dv + i] = v[i * l + j] } }
                    var g = [Float](repeating: 0, count: l * l)
                    k.withUnsafeBufferPointer { kp in v.withUnsafeBufferPointer { vp in kv.withUnsafeMutableBufferPointer { kvp in
                        Linear.gemm(transposeB: false, m: dv, n: l, k: dv, alpha: 1, a: kp.baseAddress!, lda: dv, b: vp.baseAddress!, ldb: l,
                                    beta: 0, c: kvp.baseAddress!, ldc: l)
                    } } }
                    vT.withUnsafeBufferPointer { tp in kv.withUnsafeBufferPointer { kvp in g.withUnsafeMutableBufferPointer { gp in
                        Linear.gemm(transposeB: false, m: l, n: l, k: dv, alpha: 1, a: tp.baseAddress!, lda: dv, b: kvp.baseAddress!, ldb: l,
                                    beta: 0, c: gp.baseAddress!, ldc: l)
                    } } }
                    return g
                }
            }
        }

        /// Columns [from, from + count) of a row-major [rows, stride] matrix, transposed: [count, rows].
        static func transposedColumns(_ a: [Float], rows: Int, stride: Int, from: Int, count: Int) -> [Float] {
            var out = [Float](repeating: 0, count: count * rows)
            for i in 0..<rows { for j in 0..<count { out[j * rows + i] = a[i * stride + from + j] } }
            return out
        }

        /// a·aᵀ for a row-major [rows, columns] a.
        static func gram(_ a: [Float], rows: Int, columns: Int) -> [Float] {
            var out = [Float](repeating: 0, count: rows * rows)
            a.withUnsafeBufferPointer { ap in out.withUnsafeMutableBufferPointer { op in
                Linear.gemm(transposeB: true, m: rows, n: rows, k: columns, alpha: 1, a: ap.baseAddress!, lda: columns, b: ap.baseAddress!, ldb: columns,
                            beta: 0, c: op.baseAddress!, ldc: rows)
            } }
            return out
        }
    }

    /// The output sensitivity of one head on one calibration sequence (see `KVChannelCalibration`).
    enum AttentionSensitivity {
        static func add(_ o: KVCacheObservation, head: Int, sequence b: Int, metric g: [Float], into sensitivity: inout [Double]) {
            let l = o.latent.count / (o.batch * o.seq), r = o.rope.count / (o.batch * o.seq), width = l + r, seq = o.seq
            let heads = o.queries.count / (o.batch * seq * width)
            var cache = [Float](repeating: 0, count: seq * width)
            for i in 0..<seq {
                for c in 0..<l { cache[i * width + c] = o.latent[(b * seq + i) * l + c] }
                for c in 0..<r { cache[i * width + l + c] = o.rope[(b * seq + i) * r + c] }
            }
            let latent = Array(o.latent[(b * seq * l)..<((b + 1) * seq * l)])
            let queryOffset = (b * seq * heads + head) * width
            var p = [Float](repeating: 0, count: seq * seq)
            o.queries.withUnsafeBufferPointer { qp in cache.withUnsafeBufferPointer { cp in p.withUnsafeMutableBufferPointer { pp in
                Linear.gemm(transposeB: true, m: seq, n: seq, k: width, alpha: o.softmaxScale, a: qp.baseAddress! + queryOffset, lda: heads * width,
                            b: cp.baseAddress!, ldb: width, beta: 0, c: pp.baseAddress!, ldc: seq)
            } } }
            causalSoftmax(&p, seq: seq)
            let p2 = p.map { $0 * $0 }
            let y = product(latent, g, m: seq, n: l, k: l)           // C·G
            let pc = product(p, latent, m: seq, n: l, k: seq)        // c̄ = P·C
            let py = product(p, y, m: seq, n: l, k: seq)             // G·c̄ (rows)
            let u = product(p2, latent, m: seq, n: l, k: seq)        // Σ_t p_t² c_t
            var gDiag = [Double](repeating: 0, count: l)
            for c in 0..<l { gDiag[c] = Double(g[c * l + c]) }
            let scale2 = Double(o.softmaxScale) * Double(o.softmaxScale)
            // c_jᵀ·G·c_j once per key.
            let cgc = (0..<seq).map { j in (0..<l).reduce(0.0) { $0 + Double(latent[j * l + $1]) * Double(y[j * l + $1]) } }
            for i in 0..<seq {
                var term1 = 0.0, term2 = 0.0, term3 = 0.0, b2 = 0.0
                for j in 0...i {
                    term1 += Double(p2[i * seq + j]) * cgc[j]
                    b2 += Double(p2[i * seq + j])
                }
                for c in 0..<l {
                    term2 += Double(py[i * l + c]) * Double(u[i * l + c])
                    term3 += Double(pc[i * l + c]) * Double(py[i * l + c])
                }
                // Σ_t p_t² (c_t − c̄)ᵀ G (c_t − c̄), non-negative up to rounding.
                let a = max(0, term1 - 2 * term2 + b2 * term3)
                for c in 0..<width {
                    let q = Double(o.queries[queryOffset + i * heads * width + c])
                    sensitivity[c] += scale2 * q * q * a
                }
                for c in 0..<l { sensitivity[c] += gDiag[c] * b2 }
            }
        }

        /// Row-wise softmax of p[seq, seq] over keys j ≤ i (later keys get 0).
        static func causalSoftmax(_ p: inout [Float], seq: Int) {
            for i in 0..<seq {
                var m = -Float.infinity
                for j in 0...i { m = max(m, p[i * seq + j]) }
                var sum: Float = 0
                for j in 0...i { let e = Foundation.exp(p[i * seq + j] - m); p[i * seq + j] = e; sum += e }
                for j in 0...i { p[i * seq + j] /= sum }
                for j in (i + 1)..<seq { p[i * seq + j] = 0 }
            }
        }

        static func product(_ a: [Float], _ b: [Float], m: Int, n: Int, k: Int) -> [Float] {
            var c = [Float](repeating: 0, count: m * n)
            a.withUnsafeBufferPointer { ap in b.withUnsafeBufferPointer { bp in c.withUnsafeMutableBufferPointer { cp in
                Linear.gemm(transposeB: false, m: m, n: n, k: k, alpha: 1, a: ap.baseAddress!, lda: k, b: bp.baseAddress!, ldb: n,
                            beta: 0, c: cp.baseAddress!, ldc: n)
            } } }
            return c
        }
    }
}
