import DeepSeekModel
import Foundation
import XCTest
@testable import Conversion

/// Each fold's algebra on small random matrices, checked in f64 against the unabsorbed formulas.
final class AbsorbAlgebraTests: XCTestCase {
    struct Rng {
        var state: UInt64
        mutating func next() -> Double {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Double(Int64(bitPattern: state >> 11) - (1 << 52)) / Double(1 << 52)
        }
        mutating func floats(_ n: Int) -> [Float] { (0..<n).map { _ in Float(next()) } }
    }

    private func config(qLora: Int?) throws -> DeepSeekConfig {
        let json = """
        {"vocab_size": 10, "hidden_size": 12, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 3,
         "q_lora_rank": \(qLora.map(String.init) ?? "null"), "kv_lora_rank": 5, "qk_nope_head_dim": 4, "qk_rope_head_dim": 2, "v_head_dim": 3,
         "rope_theta": 10000, "rope_scaling": {"type": "yarn", "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
         "original_max_position_embeddings": 4096, "beta_fast": 32, "beta_slow": 1}}
        """
        return try DeepSeekConfig.decode(Data(json.utf8), path: "test")
    }

    func testFoldAndSplitIdentities() throws {
        for qLora in [nil, 7] {
            let c = try config(qLora: qLora)
            let heads = 3, nope = 4, rope = 2, dv = 3, kvl = 5, h = 12, inQ = qLora ?? h, dq = nope + rope
            var rng = Rng(state: UInt64(qLora ?? 1))
            var weights: [String: [Float]] = [
                "model.layers.0.self_attn.kv_a_layernorm.weight": rng.floats(kvl).map { 1 + $0 / 2 },
                "model.layers.0.self_attn.kv_b_proj.weight": rng.floats(heads * (nope + dv) * kvl),
                "model.layers.0.self_attn.o_proj.weight": rng.floats(h * heads * dv),
            ]
            let qName = qLora == nil ? "model.layers.0.self_attn.q_proj.weight" : "model.layers.0.self_attn.q_b_proj.weight"
            weights[qName] = rng.floats(heads * dq * inQ)
            if let q = qLora { weights["model.layers.0.self_attn.q_a_layernorm.weight"] = rng.floats(q).map { 1 + $0 / 2 } }
            let load: (String, [Int]) throws -> [Float] = { name, shape in
                let w = weights[name]!
                XCTAssertEqual(w.count, shape.reduce(1, *), name)
                return w
            }
            func d(_ name: String) -> [Double] { weights[name]!.map(Double.init) }
            let gKV = d("model.layers.0.self_attn.kv_a_layernorm.weight")
            let gQ = qLora == nil ? [Double](repeating: 1, count: inQ) : d("model.layers.0.self_attn.q_a_layernorm.weight")
            let kvB = d("model.layers.0.self_attn.kv_b_proj.weight"), wq = d(qName), o = d("model.layers.0.self_attn.o_proj.weight")
            let scale = c.softmaxScale

            // Random un-gained inputs: the normalized query input x̂_q, the cached latent ĉ, a context latent.
            let xq = (0..<inQ).map { _ in rng.next() }, cHat = (0..<kvl).map { _ in rng.next() }, ctx = (0..<(heads * kvl)).map { _ in rng.next() }

            // Original: score_h = scale · (W_UQ_h (γq ⊙ x̂q)) · (W_UK_h (γkv ⊙ ĉ)); output = W_O concat_h W_UV_h (γkv ⊙ ctx_h).
            func dot(_ a: [Double], _ b: [Double]) -> Double { zip(a, b).reduce(0) { $0 + $1.0 * $1.1 } }
            var originalScores: [Double] = [], originalRope: [[Double]] = []
            var perHeadV = [Double]()
            for head in 0..<heads {
                let qn = (0..<nope).map { n in (0..<inQ).reduce(0.0) { $0 + wq[(head * dq + n) * inQ + $1] * gQ[$1] * xq[$1] } }
                let kn = (0..<nope).map { n in (0..<kvl).reduce(0.0) { $0 + kvB[(head * (nope + dv) + n) * kvl + $1] * gKV[$1] * cHat[$1] } }
                originalScores.append(scale * dot(qn, kn))
                originalRope.append((0..<rope).map { r in scale * (0..<inQ).reduce(0.0) { $0 + wq[(head * dq + nope + r) * inQ + $1] * gQ[$1] * xq[$1] } })
                perHeadV += (0..<dv).map { v in (0..<kvl).reduce(0.0) { $0 + kvB[(head * (nope + dv) + nope + v) * kvl + $1] * gKV[$1] * ctx[head * kvl + $1] } }
            }
            let originalOut = (0..<h).map { row in (0..<(heads * dv)).reduce(0.0) { $0 + o[row * heads * dv + $1] * perHeadV[$1] } }

            // fold: score_h = (q_absorbed_h x̂q) · ĉ; rope rows = q_rope x̂q; output = o_absorbed · ctx.
            let fold = Dictionary(uniqueKeysWithValues: try MLAAbsorber.absorbLayer(c, layer: 0, options: AbsorbOptions(mode: .fold), load: load).map { ($0.name, $0.values) })
            let qAbs = fold["model.layers.0.self_attn.q_absorbed.weight"]!, qRope = fold["model.layers.0.self_attn.q_rope.weight"]!, oAbs = fold["model.layers.0.self_attn.o_absorbed.weight"]!
            for head in 0..<heads {
                let qLat = (0..<kvl).map { r in (0..<inQ).reduce(0.0) { $0 + qAbs[(head * kvl + r) * inQ + $1] * xq[$1] } }
                XCTAssertEqual(dot(qLat, cHat), originalScores[head], accuracy: 1e-12 * max(1, abs(originalScores[head])))
                for r in 0..<rope {
                    let value = (0..<inQ).reduce(0.0) { $0 + qRope[(head * rope + r) * inQ + $1] * xq[$1] }
                    XCTAssertEqual(value, originalRope[head][r], accuracy: 1e-12)
                }
            }
            for row in 0..<h {
                let value = (0..<(heads * kvl)).reduce(0.0) { $0 + oAbs[row * heads * kvl + $1] * ctx[$1] }
                XCTAssertEqual(value, originalOut[row], accuracy: 1e-12 * max(1, abs(originalOut[row])))
            }

            // split: q = scaled query weights (γq folded); q_lat_h = W_UK_hᵀ q_nope_h; output through W_UV then o_proj.
            let split = Dictionary(uniqueKeysWithValues: try MLAAbsorber.absorbLayer(c, layer: 0, options: AbsorbOptions(mode: .split, keepKVB: true), load: load).map { ($0.name, $0.values) })
            let q = split[qName]!, wUK = split["model.layers.0.self_attn.w_uk.weight"]!, wUV = split["model.layers.0.self_attn.w_uv.weight"]!
            let keptKVB = split["model.layers.0.self_attn.kv_b_proj.weight"]!
            var splitV = [Double]()
            for head in 0..<heads {
                let qn = (0..<nope).map { n in (0..<inQ).reduce(0.0) { $0 + q[(head * dq + n) * inQ + $1] * xq[$1] } }
                let qLat = (0..<kvl).map { cc in (0..<nope).reduce(0.0) { $0 + wUK[(head * nope + $1) * kvl + cc] * qn[$1] } }
                XCTAssertEqual(dot(qLat, cHat), originalScores[head], accuracy: 1e-12 * max(1, abs(originalScores[head])))
                // The rope rows carry the softmax scale too (RoPE is linear), so q_pe·k_pe needs no other factor.
                for r in 0..<rope {
                    let value = (0..<inQ).reduce(0.0) { $0 + q[(head * dq + nope + r) * inQ + $1] * xq[$1] }
                    XCTAssertEqual(value, originalRope[head][r], accuracy: 1e-12, "split rope row \(r) of head \(head)")
                }
                // kept kv_b_proj expands the gain-free latent to the same keys
                let kn = (0..<nope).map { n in (0..<kvl).reduce(0.0) { $0 + keptKVB[(head * (nope + dv) + n) * kvl + $1] * cHat[$1] } }
                XCTAssertEqual(dot(qn, kn), originalScores[head], accuracy: 1e-12 * max(1, abs(originalScores[head])))
                splitV += (0..<dv).map { v in (0..<kvl).reduce(0.0) { $0 + wUV[(head * dv + v) * kvl + $1] * ctx[head * kvl + $1] } }
            }
            for i in 0..<perHeadV.count { XCTAssertEqual(splitV[i], perHeadV[i], accuracy: 1e-12) }
        }
    }

    func testAbsorptionCostOnRealConfigs() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        for (name, ratio, extra) in [("DeepSeek-V2", 3.08, 18_622_586_880), ("DeepSeek-V2-Lite", 2.68, 622_840_320)] {
            let config = try DeepSeekConfig.load(directory: root.appendingPathComponent("Fixtures/configs/\(name)"))
            let forms = try AbsorptionCost(config: config).forms
            XCTAssertEqual((Double(forms[2].attentionParameters) / Double(forms[0].attentionParameters) * 100).rounded() / 100, ratio, name)
            XCTAssertEqual(forms[2].attentionParameters - forms[0].attentionParameters, extra, name)
            XCTAssertEqual(forms[1].kvBytesPerToken, 1152 * config.numHiddenLayers)
        }
    }
}
