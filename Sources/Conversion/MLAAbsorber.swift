import DeepSeekModel
import Foundation

/// The two forms `dsconvert absorb` writes (`--mode`).
public enum AbsorbMode: String, CaseIterable, Sendable {
    /// kv_b_proj split into per-head W_UK and W_UV; queries absorbed at run time.
    case split
    /// W_UKᵀ·W_UQ and W_O·W_UV folded per head into the query and output projections.
    case fold

    /// The attention form of the output.
    public var form: AttentionForm {
        switch self {
        case .split: .split
        case .fold: .fold
        }
    }
}

/// Options of `dsconvert absorb`.
public struct AbsorbOptions: Sendable {
    public var mode: AbsorbMode
    public var keepKVB: Bool
    /// Overrides the folded softmax scale; only tests use it, to prove a wrong scale is caught.
    public var softmaxScaleOverride: Double?

    public init(mode: AbsorbMode, keepKVB: Bool = false, softmaxScaleOverride: Double? = nil) {
        self.mode = mode
        self.keepKVB = keepKVB
        self.softmaxScaleOverride = softmaxScaleOverride
    }

    /// The attention form of the output.
    public var form: AttentionForm { mode.form }
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
    public static func record(_ config: DeepSeekConfig, options: AbsorbOptions, dtype: AbsorbedDType) -> AbsorptionRecord {
        var folds: [AbsorptionRecord.Fold] = [.kvALayernormGamma]
        if config.qLoraRank != nil { folds.append(.qALayernormGamma) }
        folds.append(.softmaxScale)
        let inQ = config.qLoraRank != nil ? "q_lora_rank (input of q_b_proj, after the un-gained q_a RMSNorm)" : "hidden"
        var layouts: [String: String]
        switch options.mode {
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
        if options.mode == .fold { weights.append(.oProj) }
        return weights.map { TensorNames.name($0, layer: i) }
    }

    /// The tensors absorb computes for layer `i`, as f64 (rounded once by the writer), with their names.
    /// - Parameter load: fp32 values of an input tensor of the given shape.
    public static func absorbLayer(_ config: DeepSeekConfig, layer i: Int, options: AbsorbOptions,
                                   load: (String, [Int]) throws -> [Float]) throws -> [(name: String, values: [Double])] {
        func name(_ weight: LayerWeight) -> String { TensorNames.name(weight, layer: i) }
        let inputs = try LayerInputs(config, layer: i, scale: options.softmaxScaleOverride ?? config.softmaxScale, load: load)
        var out: [(name: String, values: [Double])] = []
        if options.keepKVB {
            var kept = inputs.kvB
            for r in 0..<(inputs.heads * (inputs.nope + inputs.dv)) { for c in 0..<inputs.kvl { kept[r * inputs.kvl + c] *= inputs.gammaKV[c] } }
            out.append((name(.kvBProj), kept))
        }
        switch options.mode {
        case .split:
            out += splitTensors(inputs, name: name)
        case .fold:
            let o = try load(name(.oProj), [config.hiddenSize, inputs.heads * inputs.dv]).map(Double.init)
            out += foldTensors(inputs, oProj: o, name: name)
        }
        return out
    }

    /// A layer's weights absorb reads, as f64, with the widths its folds use.
    private struct LayerInputs {
        let heads: Int, nope: Int, rope: Int, dq: Int, dv: Int, kvl: Int, h: Int, inQ: Int
        /// The softmax scale folded into the query rows.
        let scale: Double
        /// kv_a_layernorm's and q_a_layernorm's gains (ones without query compression).
        let gammaKV: [Double], gammaQ: [Double]
        /// kv_b_proj [heads·(nope + v), kv_lora] and the query projection [heads·dq, inQ].
        let kvB: [Double], wq: [Double]
        let queryName: String

        init(_ config: DeepSeekConfig, layer i: Int, scale: Double, load: (String, [Int]) throws -> [Float]) throws {
            func name(_ weight: LayerWeight) -> String { TensorNames.name(weight, layer: i) }
            (heads, nope, rope) = (config.numAttentionHeads, config.qkNopeHeadDim, config.qkRopeHeadDim)
            (dq, dv, kvl, h) = (config.qkHeadDim, config.vHeadDim, config.kvLoraRank, config.hiddenSize)
            self.scale = scale
            inQ = config.qLoraRank ?? config.hiddenSize
            gammaKV = try load(name(.kvANorm), [kvl]).map(Double.init)
            kvB = try load(name(.kvBProj), [heads * (nope + dv), kvl]).map(Double.init)
            gammaQ = try config.qLoraRank.map { try load(name(.qANorm), [$0]).map(Double.init) } ?? [Double](repeating: 1, count: inQ)
            queryName = name(config.queryProjection)
            wq = try load(queryName, [heads * dq, inQ]).map(Double.init)
        }
    }

    /// The split form: the query rows carrying q_a_layernorm's gain and the softmax scale, and per
    /// head W_UK [nope, kv_lora] and W_UV [v, kv_lora] carrying kv_a_layernorm's gain.
    private static func splitTensors(_ x: LayerInputs, name: (LayerWeight) -> String) -> [(name: String, values: [Double])] {
        let (heads, nope, dv, kvl, inQ) = (x.heads, x.nope, x.dv, x.kvl, x.inQ)
        var query = x.wq
        for r in 0..<(heads * x.dq) { for j in 0..<inQ { query[r * inQ + j] = x.wq[r * inQ + j] * x.gammaQ[j] * x.scale } }
        var wUK = [Double](repeating: 0, count: heads * nope * kvl)
        var wUV = [Double](repeating: 0, count: heads * dv * kvl)
        for head in 0..<heads {
            for n in 0..<nope { for c in 0..<kvl { wUK[(head * nope + n) * kvl + c] = x.kvB[(head * (nope + dv) + n) * kvl + c] * x.gammaKV[c] } }
            for v in 0..<dv { for c in 0..<kvl { wUV[(head * dv + v) * kvl + c] = x.kvB[(head * (nope + dv) + nope + v) * kvl + c] * x.gammaKV[c] } }
        }
        return [(x.queryName, query), (name(.wUK), wUK), (name(.wUV), wUV)]
    }

    /// The fold form: per head W_UKᵀ·W_UQ and the rope query rows (both carrying the gains and the
    /// softmax scale), and W_O·W_UV carrying kv_a_layernorm's gain.
    private static func foldTensors(_ x: LayerInputs, oProj o: [Double], name: (LayerWeight) -> String) -> [(name: String, values: [Double])] {
        let (heads, nope, rope, dq, dv, kvl, h, inQ) = (x.heads, x.nope, x.rope, x.dq, x.dv, x.kvl, x.h, x.inQ)
        var qAbsorbed = [Double](repeating: 0, count: heads * kvl * inQ)
        var qRope = [Double](repeating: 0, count: heads * rope * inQ)
        var oAbsorbed = [Double](repeating: 0, count: h * heads * kvl)
        for head in 0..<heads {
            // W_UK[h]ᵀ [kv_lora, nope] · W_UQ[h] [nope, inQ]
            var ukT = [Double](repeating: 0, count: kvl * nope)
            for n in 0..<nope { for c in 0..<kvl { ukT[c * nope + n] = x.kvB[(head * (nope + dv) + n) * kvl + c] } }
            let uq = Array(x.wq[(head * dq * inQ)..<((head * dq + nope) * inQ)])
            let product = DeterministicMatmul.multiply(ukT, uq, m: kvl, k: nope, n: inQ)
            for c in 0..<kvl { for j in 0..<inQ {
                qAbsorbed[(head * kvl + c) * inQ + j] = product[c * inQ + j] * x.gammaKV[c] * x.gammaQ[j] * x.scale
            } }
            for r in 0..<rope { for j in 0..<inQ {
                qRope[(head * rope + r) * inQ + j] = x.wq[(head * dq + nope + r) * inQ + j] * x.gammaQ[j] * x.scale
            } }
            // W_O[h] [hidden, v] · W_UV[h] [v, kv_lora]
            var oh = [Double](repeating: 0, count: h * dv)
            for row in 0..<h { for v in 0..<dv { oh[row * dv + v] = o[row * heads * dv + head * dv + v] } }
            let uv = Array(x.kvB[((head * (nope + dv) + nope) * kvl)..<((head * (nope + dv) + nope + dv) * kvl)])
            let folded = DeterministicMatmul.multiply(oh, uv, m: h, k: dv, n: kvl)
            for row in 0..<h { for c in 0..<kvl {
                oAbsorbed[row * heads * kvl + head * kvl + c] = folded[row * kvl + c] * x.gammaKV[c]
            } }
        }
        return [(name(.qAbsorbed), qAbsorbed), (name(.qRope), qRope), (name(.oAbsorbed), oAbsorbed)]
    }
}
