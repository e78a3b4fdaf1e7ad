import DeepSeekModel
import GGUF

extension GGUFExport {
    /// The `deepseek2` metadata in the order llama.cpp's converter writes it: general keys, the generic
    /// hyperparameters, the file type, DeepSeek's own (MLA dimensions, experts, YaRN's log multiplier
    /// 0.1 · mscale_all_dim), the quantization version, then the vocabulary; for the k-quant types the
    /// quantization version and file type last, where llama-quantize puts them. `general.name` is the
    /// checkpoint directory's name (the converter's own name and `general.size_label` come from heuristics
    /// on the directory name and parameter counts, which this does not imitate).
    static func metadata(config c: DeepSeekConfig, fileType: GGUFFileType, name: String, sizeLabel: String?,
                         vocabulary: [GGUFMetadata]) -> [GGUFMetadata] {
        let arch = "deepseek2"
        var m = [GGUFMetadata("general.architecture", .string(arch)), GGUFMetadata("general.type", .string("model")),
                 GGUFMetadata("general.name", .string(name))]
        if let sizeLabel { m.append(GGUFMetadata("general.size_label", .string(sizeLabel))) }
        func u32(_ key: String, _ v: Int) { m.append(GGUFMetadata("\(arch).\(key)", .uint32(UInt32(v)))) }
        func f32(_ key: String, _ v: Double) { m.append(GGUFMetadata("\(arch).\(key)", .float32(Float(v)))) }
        u32("block_count", c.numHiddenLayers)
        if let ctx = c.maxPositionEmbeddings { u32("context_length", ctx) }
        u32("embedding_length", c.hiddenSize)
        u32("feed_forward_length", c.intermediateSize)
        u32("attention.head_count", c.numAttentionHeads)
        // MLA runs as multi-query attention over the cached latent: one KV head.
        u32("attention.head_count_kv", 1)
        if let rope = c.ropeScaling, rope.isYaRN, let factor = rope.factor {
            m.append(GGUFMetadata("\(arch).rope.scaling.type", .string("yarn")))
            f32("rope.scaling.factor", factor)
            if let original = rope.originalMaxPositionEmbeddings { u32("rope.scaling.original_context_length", original) }
            if let fast = rope.betaFast { f32("rope.scaling.yarn_beta_fast", fast) }
            if let slow = rope.betaSlow { f32("rope.scaling.yarn_beta_slow", slow) }
        }
        f32("rope.freq_base", c.ropeTheta)
        f32("attention.layer_norm_rms_epsilon", c.rmsNormEps)
        if let experts = c.nRoutedExperts { u32("expert_count", experts) }
        if let used = c.numExpertsPerTok { u32("expert_used_count", used) }
        if let groups = c.nGroup { u32("expert_group_count", groups) }
        if let used = c.topkGroup { u32("expert_group_used_count", used) }
        // llama.cpp's gating function ids: softmax 1, sigmoid 2.
        u32("expert_gating_func", c.scoringFunc == .sigmoid ? 2 : 1)
        // The converter's generic pass writes transformers' head_dim here; its DeepSeek pass then
        // overwrites the values in place with MLA's cached widths.
        u32("attention.key_length", c.kvLoraRank + c.qkRopeHeadDim)
        u32("attention.value_length", c.kvLoraRank)
        let fileTypeEntry = GGUFMetadata("general.file_type", .uint32(fileType.llamaFileType))
        let quantizationVersion = GGUFMetadata("general.quantization_version", .uint32(2))
        // llama-quantize moves both to the end of the file it writes (k-quant types); the converter has them here.
        let requantized = fileType == .q6_k || fileType == .q4_k_m
        if !requantized { m.append(fileTypeEntry) }
        u32("leading_dense_block_count", c.firstKDenseReplace)
        u32("vocab_size", c.vocabSize)
        if let ql = c.qLoraRank { u32("attention.q_lora_rank", ql) }
        u32("attention.kv_lora_rank", c.kvLoraRank)
        u32("attention.key_length_mla", c.qkNopeHeadDim + c.qkRopeHeadDim)
        u32("attention.value_length_mla", c.vHeadDim)
        u32("expert_feed_forward_length", c.moeIntermediateSize)
        u32("expert_shared_count", c.nSharedExperts ?? 0)
        f32("expert_weights_scale", c.routedScalingFactor)
        if c.normTopkProb { m.append(GGUFMetadata("\(arch).expert_weights_norm", .bool(true))) }
        u32("rope.dimension_count", c.qkRopeHeadDim)
        if let all = c.ropeScaling?.mscaleAllDim { f32("rope.scaling.yarn_log_multiplier", 0.1 * all) }
        if !requantized { m.append(quantizationVersion) }
        return m + vocabulary + (requantized ? [quantizationVersion, fileTypeEntry] : [])
    }
}
