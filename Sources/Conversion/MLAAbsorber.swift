import DeepSeekModel
import Foundation

/// Options of `dsconvert absorb`.
public struct AbsorbOptions: Sendable {
    public var form: AttentionForm
    public var keepKVB: Bool
    /// Overrides the folded softmax scale; only tests use it, to prove a wrong scale is caught.
    public var softmaxScaleOverride: Double?

    public init(form: AttentionForm, keepKVB: Bool = false, softmaxScaleOverride: Double? = nil) {
        precondition(form != .mla, "absorb writes split or fold")
        self.form = form
        self.keepKVB = keepKVB
        self.softmaxScaleOverride = softmaxScaleOverride
    }
}

/// MLA weight absorption (README "Absorption") as pure functions over one layer's weights.
///
/// Per head h: q_nope·k_nope = (W_UQ_h c_q)ᵀ(W_UK_h c) = (W_UK_hᵀ W_UQ_h c_q)ᵀ c, and
/// o = Σ_h W_O_h W_UV_h (Σ_t a_t c_t), so attention runs MQA-style on the cached latent.
/// Exact extra folds: c = RMSNorm(c_kv)·γ_kv, so γ_kv moves into the latent columns of W_UK/W_UV
/// and the cache holds the un-scaled normalized latent; γ_q moves into the columns of W_UQ; the
/// softmax scale (with YaRN mscale²) moves into the query rows, nope and rope alike (RoPE is linear).
/// Every product is taken in f64 in a fixed order and rounded once to the storage dtype.
public enum MLAAbsorber {
    public static func record(_ config: DeepSeekConfig, options: AbsorbOptions, dtype: String) -> AbsorptionRecord {
        var folds: [AbsorptionRecord.Fold] = [.kvALayernormGamma]
        if config.qLoraRank != nil { folds.append(.qALayernormGamma) }
        folds.append(.softmaxScale)
        let inQ = config.qLoraRank != nil ? "q_lora_rank (input of q_b_proj, after the un-gained q_a RMSNorm)" : "hidden"
        var layouts: [String: String]
        switch options.form {
        case .split:
            layouts = [
                LayerWeight.wUK.rawValue: "[heads, qk_nope_head_dim, kv_lora_rank]: per head, k_nope = W_UK[h] · c; absorbed query q_lat[h] = W_UK[h]ᵀ · q_nope[h] (vLLM W_UK_T; llama.cpp attn_k_b transposed)",
                LayerWeight.wUV.rawValue: "[heads, v_head_dim, kv_lora_rank]: per head, v = W_UV[h] · c; output of head h = W_UV[h] · (Σ_t a_t c_t) (llama.cpp attn_v_b)",
                "q_proj/q_b_proj": "rows scaled by the softmax scale (nope and rope parts); q_b_proj columns carry q_a_layernorm γ",
            ]
        case .fold:
            layouts = [
                LayerWeight.qAbsorbed.rawValue: "[heads·kv_lora_rank, \(inQ)]: rows h·kv_lora..<(h+1)·kv_lora are W_UK[h]ᵀ·W_UQ[h] (softmax scale and γ folded); gives the query in latent space",
                LayerWeight.qRope.rawValue: "[heads·qk_rope_head_dim, \(inQ)]: the rope rows of W_UQ (softmax scale and γ folded), rotated as before",
                LayerWeight.oAbsorbed.rawValue: "[hidden, heads·kv_lora_rank]: columns h·kv_lora..<(h+1)·kv_lora are W_O[h]·W_UV[h]; applied to the per-head attention-weighted latent",
            ]
        case .mla:
            layouts = [:]
        }
        layouts["cache"] = "per token: c = RMSNorm(c_kv) without gain [kv_lora_rank] and the rotated k_pe [qk_rope_head_dim]; scores = q_lat·c + q_pe·k_pe times softmax_scale"
        if options.keepKVB { layouts[LayerWeight.kvBProj.rawValue] = "kept, kv_a_layernorm γ folded into its columns: expands the gain-free cached latent to per-head k_nope, v for MHA prefill" }
        return AbsorptionRecord(attentionForm: options.form, folds: folds, softmaxScale: 1.0, originalSoftmaxScale: config.softmaxScale,
                                keepsKVB: options.keepKVB, dtype: dtype, layouts: layouts)
    }

    /// Input tensors of layer `i` that absorb replaces (everything else is copied through).
    public static func consumedNames(_ config: DeepSeekConfig, layer i: Int, options: AbsorbOptions) -> [String] {
        var weights: [LayerWeight] = [.kvANorm, .kvBProj]
        if config.qLoraRank != nil { weights.append(.qANorm) }
        weights.append(config.queryProjection)
        if options.form == .fold { weights.append(.oProj) }
        return weights.map { TensorNames.name($0, layer: i) }
    }

    /// The tensors absorb computes for layer `i`, as f64 (rounded once by the writer), with their names.
    /// - Parameter load: fp32 values of an input tensor of the given shape.
    public static func absorbLayer(_ config: DeepSeekConfig, layer i: Int, options: AbsorbOptions,
                                   load: (String, [Int]) throws -> [Float]) throws -> [(name: String, values: [Double])] {
        func name(_ weight: LayerWeight) -> String { TensorNames.name(weight, layer: i) }
        let heads = config.numAttentionHeads, nope = config.qkNopeHeadDim, rope = config.qkRopeHeadDim
        let dq = config.qkHeadDim, dv = config.vHeadDim, kvl = config.kvLoraRank, h = config.hiddenSize
        let scale = options.softmaxScaleOverride ?? config.softmaxScale
        let gammaKV = try load(name(.kvANorm), [kvl]).map(Double.init)
        let kvB = try load(name(.kvBProj), [heads * (nope + dv), kvl]).map(Double.init)
        let inQ = config.qLoraRank ?? h
        let gammaQ: [Double] = try config.qLoraRank.map { try load(name(.qANorm), [$0]).map(Double.init) } ?? [Double](repeating: 1, count: inQ)
        let qName = name(config.queryProjection)
        let wq = try load(qName, [heads * dq, inQ]).map(Double.init)

        var out: [(name: String, values: [Double])] = []
        if options.keepKVB {
            var kept = kvB
            for r in 0..<(heads * (nope + dv)) { for c in 0..<kvl { kept[r * kvl + c] *= gammaKV[c] } }
            out.append((name(.kvBProj), kept))
        }

        switch options.form {
        case .split:
            var query = wq
            for r in 0..<(heads * dq) { for j in 0..<inQ { query[r * inQ + j] = wq[r * inQ + j] * gammaQ[j] * scale } }
            out.append((qName, query))
            var wUK = [Double](repeating: 0, count: heads * nope * kvl)
            var wUV = [Double](repeating: 0, count: heads * dv * kvl)
            for head in 0..<heads {
                for n in 0..<nope { for c in 0..<kvl { wUK[(head * nope + n) * kvl + c] = kvB[(head * (nope + dv) + n) * kvl + c] * gammaKV[c] } }
                for v in 0..<dv { for c in 0..<kvl { wUV[(head * dv + v) * kvl + c] = kvB[(head * (nope + dv) + nope + v) * kvl + c] * gammaKV[c] } }
            }
            out.append((name(.wUK), wUK))
            out.append((name(.wUV), wUV))

        case .fold:
            let o = try load(name(.oProj), [h, heads * dv]).map(Double.init)
            var qAbsorbed = [Double](repeating: 0, count: heads * kvl * inQ)
            var qRope = [Double](repeating: 0, count: heads * rope * inQ)
            var oAbsorbed = [Double](repeating: 0, count: h * heads * kvl)
            for head in 0..<heads {
                // W_UK[h]ᵀ [kv_lora, nope] · W_UQ[h] [nope, inQ]
                var ukT = [Double](repeating: 0, count: kvl * nope)
                for n in 0..<nope { for c in 0..<kvl { ukT[c * nope + n] = kvB[(head * (nope + dv) + n) * kvl + c] } }
                let uq = Array(wq[(head * dq * inQ)..<((head * dq + nope) * inQ)])
                let product = DeterministicMatmul.multiply(ukT, uq, m: kvl, k: nope, n: inQ)
                for c in 0..<kvl { for j in 0..<inQ {
                    qAbsorbed[(head * kvl + c) * inQ + j] = product[c * inQ + j] * gammaKV[c] * gammaQ[j] * scale
                } }
                for r in 0..<rope { for j in 0..<inQ {
                    qRope[(head * rope + r) * inQ + j] = wq[(head * dq + nope + r) * inQ + j] * gammaQ[j] * scale
                } }
                // W_O[h] [hidden, v] · W_UV[h] [v, kv_lora]
                var oh = [Double](repeating: 0, count: h * dv)
                for row in 0..<h { for v in 0..<dv { oh[row * dv + v] = o[row * heads * dv + head * dv + v] } }
                let uv = Array(kvB[((head * (nope + dv) + nope) * kvl)..<((head * (nope + dv) + nope + dv) * kvl)])
                let folded = DeterministicMatmul.multiply(oh, uv, m: h, k: dv, n: kvl)
                for row in 0..<h { for c in 0..<kvl {
                    oAbsorbed[row * heads * kvl + head * kvl + c] = folded[row * kvl + c] * gammaKV[c]
                } }
            }
            out.append((name(.qAbsorbed), qAbsorbed))
            out.append((name(.qRope), qRope))
            out.append((name(.oAbsorbed), oAbsorbed))
        case .mla:
            break
        }
        return out
    }
}
