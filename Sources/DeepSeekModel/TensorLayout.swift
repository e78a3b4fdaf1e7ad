/// Which part of the model a tensor belongs to, for accounting.
public enum TensorRole: String, Codable, Sendable {
    case embedding, lmHead = "lm_head", norm, attention, denseMLP = "dense_mlp", router, routedExpert = "routed_expert", sharedExpert = "shared_expert"
}

/// A tensor the config implies, with its shape.
public struct ExpectedTensor: Equatable, Sendable {
    public let name: String
    public let shape: [Int]
    public let role: TensorRole
    /// The decoder layer, nil for embeddings, the final norm and lm_head.
    public let layer: Int?
    /// The routed expert index, for routed expert weights.
    public let expert: Int?

    /// The number of elements, checked: a config the validator accepted always fits (it computes
    /// every count through here), anything else throws instead of trapping.
    public func elementCount() throws -> Int {
        try CheckedSize.product(shape, of: "the element count of '\(name)' \(shape)")
    }
}

/// Hub tensor names of DeepSeek-V2 (`modeling_deepseek.py` and transformers' `DeepseekV2ForCausalLM`).
/// All linear weights are [out, in].
public enum TensorNames {
    public static let embedding = "model.embed_tokens.weight"
    public static let finalNorm = "model.norm.weight"
    public static let lmHead = "lm_head.weight"
    public static func layer(_ i: Int) -> String { "model.layers.\(i)." }
    public static func expert(_ layer: Int, _ j: Int, _ projection: String) -> String {
        "model.layers.\(layer).mlp.experts.\(j).\(projection).weight"
    }

    /// The decoder layer a tensor name belongs to, if any.
    public static func layerIndex(of name: String) -> Int? {
        guard name.hasPrefix("model.layers.") else { return nil }
        let rest = name.dropFirst("model.layers.".count)
        guard let dot = rest.firstIndex(of: ".") else { return nil }
        return Int(rest[..<dot])
    }

    /// The routed expert a tensor name belongs to, if any.
    public static func expertIndex(of name: String) -> Int? {
        guard let range = name.range(of: ".mlp.experts.") else { return nil }
        let rest = name[range.upperBound...]
        guard let dot = rest.firstIndex(of: ".") else { return nil }
        return Int(rest[..<dot])
    }
}

extension DeepSeekConfig {
    /// Every tensor this config implies, in model order (embeddings, layers, final norm, lm_head);
    /// on a device checkpoint of a sharded output, the ones that device holds.
    public func expectedTensors() -> [ExpectedTensor] {
        let all = globalExpectedTensors()
        guard let p = placement else { return all }
        let range = p.expertRange[0]..<p.expertRange[1]
        return all.filter { t in
            if let e = t.expert { return range.contains(e) }
            return p.holdsDense
        }
    }

    /// Every tensor of the whole model, whatever device this config describes.
    public func globalExpectedTensors() -> [ExpectedTensor] {
        var out: [ExpectedTensor] = []
        func add(_ name: String, _ shape: [Int], _ role: TensorRole, layer: Int? = nil, expert: Int? = nil) {
            out.append(ExpectedTensor(name: name, shape: shape, role: role, layer: layer, expert: expert))
        }
        let h = hiddenSize, heads = numAttentionHeads
        add(TensorNames.embedding, [vocabSize, h], .embedding)
        for i in 0..<numHiddenLayers {
            let p = TensorNames.layer(i)
            add(p + "input_layernorm.weight", [h], .norm, layer: i)
            add(p + "post_attention_layernorm.weight", [h], .norm, layer: i)
            let form = attentionForm
            let keepKVB = absorption?.keepsKVB ?? false
            let inQ = qLoraRank ?? h
            if let q = qLoraRank {
                add(p + "self_attn.q_a_proj.weight", [q, h], .attention, layer: i)
                // absorb folds q_a_layernorm's gain into the query weights and drops it.
                if form == .mla { add(p + "self_attn.q_a_layernorm.weight", [q], .norm, layer: i) }
            }
            switch form {
            case .mla, .split:
                add(p + (qLoraRank == nil ? "self_attn.q_proj.weight" : "self_attn.q_b_proj.weight"), [heads * qkHeadDim, inQ], .attention, layer: i)
            case .fold:
                add(p + "self_attn." + TensorNames.qAbsorbed, [heads * kvLoraRank, inQ], .attention, layer: i)
                add(p + "self_attn." + TensorNames.qRope, [heads * qkRopeHeadDim, inQ], .attention, layer: i)
            }
            add(p + "self_attn.kv_a_proj_with_mqa.weight", [kvLoraRank + qkRopeHeadDim, h], .attention, layer: i)
            if hasLatentGain { add(p + "self_attn.kv_a_layernorm.weight", [kvLoraRank], .norm, layer: i) }
            if form == .mla || keepKVB {
                add(p + "self_attn.kv_b_proj.weight", [heads * (qkNopeHeadDim + vHeadDim), kvLoraRank], .attention, layer: i)
            }
            switch form {
            case .mla:
                add(p + "self_attn.o_proj.weight", [h, heads * vHeadDim], .attention, layer: i)
            case .split:
                add(p + "self_attn." + TensorNames.wUK, [heads, qkNopeHeadDim, kvLoraRank], .attention, layer: i)
                add(p + "self_attn." + TensorNames.wUV, [heads, vHeadDim, kvLoraRank], .attention, layer: i)
                add(p + "self_attn.o_proj.weight", [h, heads * vHeadDim], .attention, layer: i)
            case .fold:
                add(p + "self_attn." + TensorNames.oAbsorbed, [h, heads * kvLoraRank], .attention, layer: i)
            }
            if isMoELayer(i) {
                let e = nRoutedExperts ?? 0, m = moeIntermediateSize
                add(p + "mlp.gate.weight", [e, h], .router, layer: i)
                for j in 0..<e {
                    add(TensorNames.expert(i, j, "gate_proj"), [m, h], .routedExpert, layer: i, expert: j)
                    add(TensorNames.expert(i, j, "up_proj"), [m, h], .routedExpert, layer: i, expert: j)
                    add(TensorNames.expert(i, j, "down_proj"), [h, m], .routedExpert, layer: i, expert: j)
                }
                // Present (even 0, which gives zero-row tensors) means a shared-expert MLP exists, as in
                // DeepSeek's modeling code (`if config.n_shared_experts is not None`) and transformers.
                if let s = nSharedExperts {
                    add(p + "mlp.shared_experts.gate_proj.weight", [m * s, h], .sharedExpert, layer: i)
                    add(p + "mlp.shared_experts.up_proj.weight", [m * s, h], .sharedExpert, layer: i)
                    add(p + "mlp.shared_experts.down_proj.weight", [h, m * s], .sharedExpert, layer: i)
                }
            } else {
                add(p + "mlp.gate_proj.weight", [intermediateSize, h], .denseMLP, layer: i)
                add(p + "mlp.up_proj.weight", [intermediateSize, h], .denseMLP, layer: i)
                add(p + "mlp.down_proj.weight", [h, intermediateSize], .denseMLP, layer: i)
            }
        }
        add(TensorNames.finalNorm, [h], .norm)
        if !tieWordEmbeddings { add(TensorNames.lmHead, [vocabSize, h], .lmHead) }
        return out
    }
}
