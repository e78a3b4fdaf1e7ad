/// Which part of the model a tensor belongs to, for accounting.
public enum TensorRole: String, Codable, Sendable {
    case embedding, lmHead = "lm_head", norm, attention, denseMLP = "dense_mlp", router, routedExpert = "routed_expert", sharedExpert = "shared_expert"
    /// A multi-token-prediction layer's `eh_proj`.
    case mtpProjection = "mtp_projection"
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

    /// Every tensor of the whole model, whatever device this config describes: the main stack in
    /// model order, then the multi-token-prediction layers.
    public func globalExpectedTensors() -> [ExpectedTensor] {
        var out: [ExpectedTensor] = []
        let h = hiddenSize
        out.append(ExpectedTensor(name: TensorNames.embedding, shape: [vocabSize, h], role: .embedding, layer: nil, expert: nil))
        for i in 0..<numHiddenLayers { out += layerTensors(i) }
        out.append(ExpectedTensor(name: TensorNames.finalNorm, shape: [h], role: .norm, layer: nil, expert: nil))
        if !tieWordEmbeddings { out.append(ExpectedTensor(name: TensorNames.lmHead, shape: [vocabSize, h], role: .lmHead, layer: nil, expert: nil)) }
        for i in mtpLayers { out += layerTensors(i) }
        return out
    }

    /// The tensors of layer `i` (a multi-token-prediction layer has its own embedding, norms, `eh_proj`
    /// and head before its decoder layer's weights), with their shapes.
    public func layerTensors(_ i: Int) -> [ExpectedTensor] {
        var out: [ExpectedTensor] = []
        func add(_ weight: LayerWeight, _ shape: [Int], _ role: TensorRole) {
            out.append(ExpectedTensor(name: TensorNames.name(weight, layer: i), shape: shape, role: role, layer: i, expert: nil))
        }
        let h = hiddenSize
        if isMTPLayer(i) {
            add(.mtpEmbedding, [vocabSize, h], .embedding)
            add(.mtpEmbeddingNorm, [h], .norm)
            add(.mtpHiddenNorm, [h], .norm)
            add(.mtpProjection, [h, 2 * h], .mtpProjection)
            add(.mtpHeadNorm, [h], .norm)
            add(.mtpHead, [vocabSize, h], .lmHead)
        }
        add(.inputNorm, [h], .norm)
        add(.postAttentionNorm, [h], .norm)
        for (weight, shape, role) in attentionTensors() { add(weight, shape, role) }
        if isMoELayer(i) {
            let e = nRoutedExperts ?? 0, m = moeIntermediateSize
            add(.router, [e, h], .router)
            if hasRouterBias { add(.routerBias, [e], .router) }
            for j in 0..<e {
                for (projection, shape) in [(MLPProjection.gate, [m, h]), (.up, [m, h]), (.down, [h, m])] {
                    out.append(ExpectedTensor(name: TensorNames.expert(i, j, projection), shape: shape, role: .routedExpert, layer: i, expert: j))
                }
            }
            // Present (even 0, which gives zero-row tensors) means a shared-expert MLP exists, as in
            // DeepSeek's modeling code (`if config.n_shared_experts is not None`) and transformers.
            if let s = nSharedExperts {
                add(.sharedGate, [m * s, h], .sharedExpert)
                add(.sharedUp, [m * s, h], .sharedExpert)
                add(.sharedDown, [h, m * s], .sharedExpert)
            }
        } else {
            add(.denseGate, [intermediateSize, h], .denseMLP)
            add(.denseUp, [intermediateSize, h], .denseMLP)
            add(.denseDown, [h, intermediateSize], .denseMLP)
        }
        return out
    }

    /// A layer's attention weights in this checkpoint's form, in order: the published form's
    /// projections, or absorb's split form (W_UK and W_UV per head) or fold form (W_UKᵀ·W_UQ and
    /// W_O·W_UV), with the norms the form keeps.
    private func attentionTensors() -> [(LayerWeight, [Int], TensorRole)] {
        let h = hiddenSize, heads = numAttentionHeads, form = attentionForm
        let keepKVB = absorption?.keepsKVB ?? false
        let inQ = qLoraRank ?? h
        var out: [(LayerWeight, [Int], TensorRole)] = []
        if let q = qLoraRank {
            out.append((.qAProj, [q, h], .attention))
            // absorb folds q_a_layernorm's gain into the query weights and drops it.
            if form == .mla { out.append((.qANorm, [q], .norm)) }
        }
        switch form {
        case .mla, .split:
            out.append((queryProjection, [heads * qkHeadDim, inQ], .attention))
        case .fold:
            out += [(.qAbsorbed, [heads * kvLoraRank, inQ], .attention), (.qRope, [heads * qkRopeHeadDim, inQ], .attention)]
        }
        out.append((.kvAProj, [kvLoraRank + qkRopeHeadDim, h], .attention))
        if hasLatentGain { out.append((.kvANorm, [kvLoraRank], .norm)) }
        if form == .mla || keepKVB { out.append((.kvBProj, [heads * (qkNopeHeadDim + vHeadDim), kvLoraRank], .attention)) }
        switch form {
        case .mla:
            out.append((.oProj, [h, heads * vHeadDim], .attention))
        case .split:
            out += [(.wUK, [heads, qkNopeHeadDim, kvLoraRank], .attention), (.wUV, [heads, vHeadDim, kvLoraRank], .attention), (.oProj, [h, heads * vHeadDim], .attention)]
        case .fold:
            out.append((.oAbsorbed, [h, heads * kvLoraRank], .attention))
        }
        return out
    }
}
