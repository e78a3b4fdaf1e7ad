/// A weight of one decoder layer, by what it is; its raw value is its name under `model.layers.{i}.`
/// as the hub files and transformers' `DeepseekV2ForCausalLM`/`DeepseekV3ForCausalLM` spell it.
///
/// This is the one place a weight's name is written: every stage, the checker and the forward pass
/// name tensors through `TensorNames` with these cases. Routed experts are `ExpertWeight`s.
public enum LayerWeight: String, CaseIterable, Sendable {
    case inputNorm = "input_layernorm.weight"
    case postAttentionNorm = "post_attention_layernorm.weight"
    // MLA attention, as published.
    /// The query projection of models without query compression (`q_lora_rank: null`, V2-Lite).
    case qProj = "self_attn.q_proj.weight"
    case qAProj = "self_attn.q_a_proj.weight"
    case qANorm = "self_attn.q_a_layernorm.weight"
    case qBProj = "self_attn.q_b_proj.weight"
    case kvAProj = "self_attn.kv_a_proj_with_mqa.weight"
    case kvANorm = "self_attn.kv_a_layernorm.weight"
    case kvBProj = "self_attn.kv_b_proj.weight"
    case oProj = "self_attn.o_proj.weight"
    // What `absorb` writes (README "Absorption").
    /// Split form: per-head W_UK [heads, qk_nope_head_dim, kv_lora_rank].
    case wUK = "self_attn.w_uk.weight"
    /// Split form: per-head W_UV [heads, v_head_dim, kv_lora_rank].
    case wUV = "self_attn.w_uv.weight"
    /// Fold form: W_UK[h]ᵀ·W_UQ[h] per head, the query straight into latent space.
    case qAbsorbed = "self_attn.q_absorbed.weight"
    /// Fold form: the rope rows of W_UQ.
    case qRope = "self_attn.q_rope.weight"
    /// Fold form: W_O[h]·W_UV[h] per head.
    case oAbsorbed = "self_attn.o_absorbed.weight"
    // Dense MLP (layers before `first_k_dense_replace`).
    case denseGate = "mlp.gate_proj.weight"
    case denseUp = "mlp.up_proj.weight"
    case denseDown = "mlp.down_proj.weight"
    // MoE: the router, the V3 family's selection bias, the shared experts.
    case router = "mlp.gate.weight"
    /// `noaux_tc` routing's bias, added to the scores only to choose experts (F32 in the published files).
    case routerBias = "mlp.gate.e_score_correction_bias"
    case sharedGate = "mlp.shared_experts.gate_proj.weight"
    case sharedUp = "mlp.shared_experts.up_proj.weight"
    case sharedDown = "mlp.shared_experts.down_proj.weight"
    // Multi-token prediction layers (V3: `model.layers.61`), on top of a full decoder layer.
    case mtpEmbedding = "embed_tokens.weight"
    /// RMSNorm of the next token's embedding.
    case mtpEmbeddingNorm = "enorm.weight"
    /// RMSNorm of the main model's hidden state.
    case mtpHiddenNorm = "hnorm.weight"
    /// [hidden, 2·hidden]: the two normalized halves concatenated, projected back to hidden.
    case mtpProjection = "eh_proj.weight"
    case mtpHeadNorm = "shared_head.norm.weight"
    case mtpHead = "shared_head.head.weight"

    /// The weights an MTP layer has beside its decoder block, in the order its pass uses them.
    public static let mtpModule: [LayerWeight] = [.mtpEmbedding, .mtpEmbeddingNorm, .mtpHiddenNorm, .mtpProjection, .mtpHeadNorm, .mtpHead]

    /// An RMSNorm gain.
    public var isNorm: Bool {
        switch self {
        case .inputNorm, .postAttentionNorm, .qANorm, .kvANorm, .mtpEmbeddingNorm, .mtpHiddenNorm, .mtpHeadNorm: return true
        default: return false
        }
    }

    /// A linear weight [out, in] (or per head [heads, out, in]) that `quantize --fp8` may turn into FP8
    /// blocks: every attention and MLP projection. The router, its bias, norms, the MTP layer's own
    /// embedding, head and `eh_proj` stay as they are (the published V3 files keep them in bf16).
    public var isBlockQuantizable: Bool {
        switch self {
        case .qProj, .qAProj, .qBProj, .kvAProj, .kvBProj, .oProj, .wUK, .wUV, .qAbsorbed, .qRope, .oAbsorbed,
             .denseGate, .denseUp, .denseDown, .sharedGate, .sharedUp, .sharedDown:
            return true
        case .inputNorm, .postAttentionNorm, .qANorm, .kvANorm, .router, .routerBias,
             .mtpEmbedding, .mtpEmbeddingNorm, .mtpHiddenNorm, .mtpProjection, .mtpHeadNorm, .mtpHead:
            return false
        }
    }

    /// How vLLM's DeepSeek models split the weight under tensor parallelism.
    public var tensorParallelSplit: TensorParallelSplit {
        switch self {
        case .oProj, .oAbsorbed, .denseDown, .sharedDown: return .rows
        case .qAProj, .kvAProj, .router: return .replicated
        default: return .columns
        }
    }
}

/// How a linear weight is partitioned under tensor parallelism.
public enum TensorParallelSplit: Sendable {
    /// Output rows split across ranks (column-parallel).
    case columns
    /// Input columns split across ranks (row-parallel).
    case rows
    case replicated
}

/// The three projections of an MLP (dense, shared experts or one routed expert).
public enum MLPProjection: String, CaseIterable, Sendable {
    case gate = "gate_proj", up = "up_proj", down = "down_proj"

    public var tensorParallelSplit: TensorParallelSplit { self == .down ? .rows : .columns }
}

/// Which MLP of a layer: the dense one, the shared experts, or routed expert j.
public enum MLPBlock: Equatable, Sendable {
    case dense, shared, expert(Int)
}

/// A tensor name, decoded once: what it is and where it sits.
public enum TensorName: Equatable, Sendable {
    case embedding, finalNorm, lmHead
    case layer(Int, LayerWeight)
    case expert(layer: Int, expert: Int, MLPProjection)

    public var layer: Int? {
        switch self {
        case .embedding, .finalNorm, .lmHead: return nil
        case let .layer(i, _), let .expert(i, _, _): return i
        }
    }
}

/// The hub's tensor names (README "Config and tensors"). All linear weights are [out, in].
public enum TensorNames {
    public static let embedding = "model.embed_tokens.weight"
    public static let finalNorm = "model.norm.weight"
    public static let lmHead = "lm_head.weight"
    /// Suffix of the scale companion of an FP8 weight (DeepSeek-V3 names it `weight_scale_inv`).
    public static let scaleSuffix = "_scale_inv"

    /// The prefix of layer `i`'s tensors.
    public static func layer(_ i: Int) -> String { "model.layers.\(i)." }
    public static func name(_ weight: LayerWeight, layer i: Int) -> String { layer(i) + weight.rawValue }
    public static func expert(_ layer: Int, _ j: Int, _ projection: MLPProjection) -> String {
        "model.layers.\(layer).mlp.experts.\(j).\(projection.rawValue).weight"
    }

    /// The name of a projection of one of layer `i`'s MLPs.
    public static func mlp(_ block: MLPBlock, _ projection: MLPProjection, layer i: Int) -> String {
        switch (block, projection) {
        case let (.expert(j), _): return expert(i, j, projection)
        case (.dense, .gate): return name(.denseGate, layer: i)
        case (.dense, .up): return name(.denseUp, layer: i)
        case (.dense, .down): return name(.denseDown, layer: i)
        case (.shared, .gate): return name(.sharedGate, layer: i)
        case (.shared, .up): return name(.sharedUp, layer: i)
        case (.shared, .down): return name(.sharedDown, layer: i)
        }
    }

    private static let layerWeights = Dictionary(uniqueKeysWithValues: LayerWeight.allCases.map { ($0.rawValue, $0) })
    private static let projections = Dictionary(uniqueKeysWithValues: MLPProjection.allCases.map { ($0.rawValue + ".weight", $0) })

    /// What a tensor name denotes, or nil for a name the catalog does not know (a scale companion
    /// is not a weight: strip `scaleSuffix` first).
    public static func parse(_ name: String) -> TensorName? {
        switch name {
        case embedding: return .embedding
        case finalNorm: return .finalNorm
        case lmHead: return .lmHead
        default: break
        }
        guard let i = layerIndex(of: name) else { return nil }
        let rest = String(name.dropFirst(layer(i).count))
        if let weight = layerWeights[rest] { return .layer(i, weight) }
        guard rest.hasPrefix("mlp.experts.") else { return nil }
        let tail = rest.dropFirst("mlp.experts.".count)
        guard let dot = tail.firstIndex(of: "."), let j = Int(tail[..<dot]), j >= 0,
              let projection = projections[String(tail[tail.index(after: dot)...])] else { return nil }
        return .expert(layer: i, expert: j, projection)
    }

    /// A rotary-embedding buffer some exports save (`self_attn.rotary_emb.inv_freq`): computed from
    /// the config, never a weight; engines (vLLM's loaders, llama.cpp's converter) skip it, the checker
    /// accepts it and the stages, which write what the config implies, leave it out.
    public static func isIgnoredBuffer(_ name: String) -> Bool {
        guard let i = layerIndex(of: name) else { return false }
        return name == layer(i) + "self_attn.rotary_emb.inv_freq"
    }

    /// The decoder layer a tensor name belongs to, if any.
    public static func layerIndex(of name: String) -> Int? {
        guard name.hasPrefix("model.layers.") else { return nil }
        let rest = name.dropFirst("model.layers.".count)
        guard let dot = rest.firstIndex(of: ".") else { return nil }
        return Int(rest[..<dot])
    }

    /// The routed expert a tensor name (or its scale companion) belongs to, if any.
    public static func expertIndex(of name: String) -> Int? {
        guard let range = name.range(of: ".mlp.experts.") else { return nil }
        let rest = name[range.upperBound...]
        guard let dot = rest.firstIndex(of: ".") else { return nil }
        return Int(rest[..<dot])
    }
}

extension DeepSeekConfig {
    /// The query projection of this model: `q_proj`, or `q_b_proj` after the query compression.
    public var queryProjection: LayerWeight { qLoraRank == nil ? .qProj : .qBProj }
}
