import Foundation
import Numerics

/// The checks `DeepSeekConfig.decode` runs on every config before anything computes with it: a
/// config that passes can be laid out, counted and accounted without overflow, every number the
/// forward pass divides by or takes a logarithm of is positive and finite, and every real, and the
/// softmax scale they give, fits f32.
extension DeepSeekConfig {
    /// Bound on every dimension, far above any real model (DeepSeek-V3's largest is 129,280), so a
    /// hostile config cannot make shapes overflow; products of dimensions are checked separately.
    public static let dimensionLimit = 1 << 24

    func validate(path: String) throws {
        func bad(_ reason: String) -> DeepSeekModelError { .invalidConfig(path: path, reason: reason) }
        // A model_type of the other family is a mislabelled file: its routing would be misread.
        if let modelType, let family = ModelArchitecture(modelType: modelType), family != architecture {
            throw bad("model_type '\(modelType)' contradicts architectures \(architecture.rawValue)")
        }
        try validateDimensions(path: path)
        try validateFamily(path: path)
        if hasMoE { try validateRouting(path: path) }
        try validateReals(path: path)
        if let q = quantization {
            guard q.quantMethod == "fp8" else { throw bad("quantization_config quant_method '\(q.quantMethod)' is not supported (fp8 block scaling)") }
            guard q.fmt == nil || q.fmt.flatMap(FP8Format.init(rawValue:)) != nil else { throw bad("quantization_config fmt '\(q.fmt!)' is not supported (e4m3 or e5m2)") }
            _ = try QuantizationConfig.validatedBlock(q.weightBlockSize, path: path)
        }
        if let record = placement { try validatePlacement(record, path: path) }
        try validateSizes(path: path)
        if kvCache != nil { _ = try KVCacheSetting(declaredBy: self, path: path) }
    }

    private func validateDimensions(path: String) throws {
        func bad(_ reason: String) -> DeepSeekModelError { .invalidConfig(path: path, reason: reason) }
        let positives: [(String, Int)] = [
            ("vocab_size", vocabSize), ("hidden_size", hiddenSize), ("intermediate_size", intermediateSize),
            ("num_hidden_layers", numHiddenLayers), ("num_attention_heads", numAttentionHeads),
            ("kv_lora_rank", kvLoraRank), ("qk_nope_head_dim", qkNopeHeadDim), ("qk_rope_head_dim", qkRopeHeadDim),
            ("v_head_dim", vHeadDim), ("moe_intermediate_size", moeIntermediateSize), ("moe_layer_freq", moeLayerFreq),
        ]
        for (key, value) in positives where value <= 0 { throw bad("'\(key)' must be positive, is \(value)") }
        // Layers ≤ 1024 and layers × routed experts ≤ 100,000 (DeepSeek-V2: 60 x 160 = 9,600; V3:
        // 61 x 256 = 15,616), so laying out the tensor names stays fast (found by fuzzing: 4066
        // layers x 160 experts took seconds).
        let limit = Self.dimensionLimit
        let dimensions = positives + [("q_lora_rank", qLoraRank ?? 1), ("n_routed_experts", nRoutedExperts ?? 0),
                                      ("n_shared_experts", nSharedExperts ?? 0), ("num_experts_per_tok", numExpertsPerTok ?? 0),
                                      ("first_k_dense_replace", firstKDenseReplace), ("n_group", nGroup ?? 0), ("topk_group", topkGroup ?? 0),
                                      ("max_position_embeddings", maxPositionEmbeddings ?? 1),
                                      ("original_max_position_embeddings", ropeScaling?.originalMaxPositionEmbeddings ?? 1)]
        for (key, value) in dimensions where value > limit || value < 0 { throw bad("'\(key)' = \(value) is outside 0...\(limit)") }
        if numHiddenLayers > 1024 { throw bad("num_hidden_layers = \(numHiddenLayers) is outside 1...1024") }
        let layers = numHiddenLayers + min(max(numNextnPredictLayers ?? 0, 0), 8)  // more than 8 is refused below
        if layers * max(nRoutedExperts ?? 1, 1) > 100_000 { throw bad("num_hidden_layers (+ MTP layers) x n_routed_experts = \(layers * max(nRoutedExperts ?? 1, 1)) exceeds 100000") }
        if let q = qLoraRank, q <= 0 { throw bad("'q_lora_rank' must be positive or null, is \(q)") }
        if let m = maxPositionEmbeddings, m <= 0 { throw bad("'max_position_embeddings' must be positive, is \(m)") }
        if qkRopeHeadDim % 2 != 0 { throw bad("'qk_rope_head_dim' must be even for rotary pairs, is \(qkRopeHeadDim)") }
    }

    private func validateRouting(path: String) throws {
        func bad(_ reason: String) -> DeepSeekModelError { .invalidConfig(path: path, reason: reason) }
        guard let e = nRoutedExperts, e > 0 else { throw bad("'n_routed_experts' must be positive when MoE layers exist") }
        guard let k = numExpertsPerTok, k > 0, k <= e else { throw bad("'num_experts_per_tok' must be in 1...n_routed_experts") }
        switch topkMethod {
        case .greedy: break
        case .groupLimitedGreedy, .noauxTC:
            let method = topkMethod.rawValue
            guard let g = nGroup, g > 0, e % g == 0 else { throw bad("'n_group' must divide n_routed_experts for \(method)") }
            guard let tg = topkGroup, tg > 0, tg <= g else { throw bad("'topk_group' must be in 1...n_group") }
            guard tg * (e / g) >= k else { throw bad("topk_group groups hold fewer experts than num_experts_per_tok") }
            // A group scores the sum of its two best experts.
            if topkMethod == .noauxTC, e / g < 2 { throw bad("noaux_tc needs at least 2 experts per group, n_group \(g) leaves \(e / g)") }
        }
    }

    /// What each class computes: V2 routes with softmax (greedy or group-limited) and has no MTP
    /// layers; the V3 family routes with sigmoid scores and `noaux_tc` (the only routing transformers'
    /// `DeepseekV3ForCausalLM` implements, whatever the config says).
    private func validateFamily(path: String) throws {
        func bad(_ reason: String) -> DeepSeekModelError { .invalidConfig(path: path, reason: reason) }
        if hiddenAct != "silu" { throw bad("hidden_act '\(hiddenAct)' is not supported (DeepSeek models use silu)") }
        switch architecture {
        case .deepseekV2:
            if scoringFunc != .softmax { throw bad("scoring_func '\(scoringFunc.rawValue)' is not supported by DeepseekV2ForCausalLM (softmax)") }
            if topkMethod == .noauxTC { throw bad("topk_method 'noaux_tc' is not supported by DeepseekV2ForCausalLM (greedy or group_limited_greedy)") }
        case .deepseekV3:
            // First: `hasMoE` counts the MTP layers, so their number must be a valid range's.
            if let n = numNextnPredictLayers, !(0...8).contains(n) { throw bad("'num_nextn_predict_layers' = \(n) is outside 0...8") }
            if hasMoE, scoringFunc != .sigmoid { throw bad("scoring_func '\(scoringFunc.rawValue)' is not supported by DeepseekV3ForCausalLM (sigmoid)") }
            if hasMoE, topkMethod != .noauxTC { throw bad("topk_method '\(topkMethod.rawValue)' is not supported by DeepseekV3ForCausalLM (noaux_tc)") }
        }
    }

    /// Real numbers the forward pass divides by, takes roots or logarithms of: positive and finite,
    /// and within f32's range, as is the softmax scale they give. YaRN's mscale and mscale_all_dim are
    /// checked when present (absent, transformers uses 1 and 0).
    private func validateReals(path: String) throws {
        var positives: [(String, Double?)] = [("rope_theta", ropeTheta), ("rms_norm_eps", rmsNormEps),
                                              ("routed_scaling_factor", routedScalingFactor)]
        if let scaling = ropeScaling {
            guard scaling.isYaRN else {
                throw DeepSeekModelError.invalidConfig(path: path, reason: "rope scaling type '\(scaling.type)' is not supported (DeepSeek-V2 uses yarn)")
            }
            guard scaling.factor != nil, scaling.originalMaxPositionEmbeddings ?? 0 > 0 else {
                throw DeepSeekModelError.invalidConfig(path: path, reason: "yarn rope scaling needs a positive 'factor' and 'original_max_position_embeddings'")
            }
            positives += [("rope_scaling.factor", scaling.factor), ("rope_scaling.mscale", scaling.mscale),
                          ("rope_scaling.mscale_all_dim", scaling.mscaleAllDim)]
            for (key, value) in [("rope_scaling.beta_fast", scaling.betaFast), ("rope_scaling.beta_slow", scaling.betaSlow)] {
                if let value, !value.isFinite { throw DeepSeekModelError.nonFiniteNumber(path: path, key: key) }
            }
        }
        for case let (key, value?) in positives where !(value > 0 && value.isFinite) {
            throw DeepSeekModelError.notPositive(path: path, key: key, value: value)
        }
        // The forward pass and GGUF's metadata use these as f32, where a larger one is Inf, and so
        // may the softmax scale they give (found by an audit: mscale_all_dim 1e200 gave a scale of Inf
        // that GGUF wrote and the forward pass met only in its logits).
        func bad(_ reason: String) -> DeepSeekModelError { .invalidConfig(path: path, reason: reason) }
        let reals = positives + [("rope_scaling.beta_fast", ropeScaling?.betaFast), ("rope_scaling.beta_slow", ropeScaling?.betaSlow)]
        for case let (key, value?) in reals where abs(value) > Double(Float.greatestFiniteMagnitude) {
            throw bad("'\(key)' = \(value) is beyond the range of f32, in which the forward pass and GGUF use it")
        }
        // And one too small for f32 is 0 there: rms_norm_eps 1e-50 is what transformers adds in f32
        // and GGUF writes, and an all-zero row then divides by zero.
        for case let (key, value?) in positives where Float(value) == 0 {
            throw bad("'\(key)' = \(value) is 0 in f32, in which engines and GGUF use it (the smallest positive f32 is 1.4e-45)")
        }
        let scale = softmaxScale
        guard scale > 0, Float(scale).isFinite, Float(scale) > 0 else {
            throw bad("the softmax scale (qk_head_dim and rope_scaling's mscale_all_dim give \(scale)) is not a positive finite f32")
        }
    }

    /// A device checkpoint's placement must describe this model and this device exactly: the
    /// forward pass divides by its device count and indexes experts by its ranges.
    private func validatePlacement(_ record: PlacementRecord, path: String) throws {
        func bad(_ reason: String) -> DeepSeekModelError { .inconsistentPlacement(path: path, reason: reason) }
        let p = record.placement
        guard p.experts == nRoutedExperts ?? 0, p.experts > 0 else {
            throw bad("placement.experts = \(p.experts), the config has \(nRoutedExperts ?? 0) routed experts")
        }
        guard p.devices >= 1, p.devices <= p.experts, p.experts % p.devices == 0 else {
            throw bad("placement.devices = \(p.devices) does not split \(p.experts) experts evenly")
        }
        guard p.groups >= 1, p.deviceBoundM >= 1, p.deviceBoundM <= p.devices else {
            throw bad("groups = \(p.groups) and device_bound_m = \(p.deviceBoundM) must be positive, M at most \(p.devices)")
        }
        guard (0..<p.devices).contains(record.rank) else { throw bad("rank \(record.rank) is outside 0..<\(p.devices)") }
        let range = p.range(device: record.rank)
        guard record.expertRange == [range.lowerBound, range.upperBound] else {
            throw bad("expert_range \(record.expertRange) is not rank \(record.rank)'s [\(range.lowerBound), \(range.upperBound)]")
        }
    }

    /// Every count the layout and the accounting compute, with checked arithmetic: what `inspect`,
    /// `absorb` and the stages later print or allocate fits in 64 bits.
    private func validateSizes(path: String) throws {
        do {
            _ = try ModelAccounting(config: self)
            _ = try AbsorptionCost(config: self)
        } catch let overflow as SizeOverflow {
            throw DeepSeekModelError.sizeOverflow(path: path, quantity: overflow.quantity)
        }
    }
}
