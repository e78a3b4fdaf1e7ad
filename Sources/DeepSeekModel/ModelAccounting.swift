import SafeTensors

/// Parameter, byte and cache accounting of a DeepSeek-V2/V3-family checkpoint.
public struct ModelAccounting: Codable, Equatable, Sendable {
    public struct LayerKinds: Codable, Equatable, Sendable {
        public var dense: [Int]
        public var moe: [Int]
    }

    public struct Routing: Codable, Equatable, Sendable {
        public var method: String
        public var routedExperts: Int
        public var sharedExperts: Int
        public var expertsPerToken: Int
        public var groups: Int
        public var topkGroups: Int
        public var expertsPerGroup: Int
        /// The most devices one token's routed experts can touch when each group sits on its own
        /// device (DeepSeek-V2's M; equal to `expertsPerToken` for plain greedy routing).
        public var deviceBoundM: Int
        public var routedScalingFactor: Double
        public var normTopkProb: Bool

        enum CodingKeys: String, CodingKey {
            case method
            case routedExperts = "routed_experts"
            case sharedExperts = "shared_experts"
            case expertsPerToken = "experts_per_token"
            case groups
            case topkGroups = "topk_groups"
            case expertsPerGroup = "experts_per_group"
            case deviceBoundM = "device_bound_m"
            case routedScalingFactor = "routed_scaling_factor"
            case normTopkProb = "norm_topk_prob"
        }
    }

    public struct KVCache: Codable, Equatable, Sendable {
        public var format: String
        public var bytesPerTokenPerLayer: Int
        public var bytesPerToken: Int
        public var bitsPerElement: Double
        /// 1 − bytes / DeepSeek 67B's bf16 GQA cache per token (the paper's 93.3% is mla-kv6 on V2).
        public var reductionVsDeepSeek67B: Double
        /// 1 − bytes / an MHA cache of the same dimensions (K and V per head, bf16).
        public var reductionVsMHA: Double

        enum CodingKeys: String, CodingKey {
            case format
            case bytesPerTokenPerLayer = "bytes_per_token_per_layer"
            case bytesPerToken = "bytes_per_token"
            case bitsPerElement = "bits_per_element"
            case reductionVsDeepSeek67B = "reduction_vs_deepseek_67b"
            case reductionVsMHA = "reduction_vs_mha"
        }
    }

    /// DeepSeek LLM 67B's KV cache per token: 95 layers, 8 KV heads of 128 (GQA), K and V in bf16.
    public static let deepSeek67BKVBytesPerToken = 95 * 8 * 128 * 2 * 2

    /// Parameters of the main model implied by the config (the multi-token-prediction layers apart).
    public var totalParameters: Int
    /// Parameters of the multi-token-prediction layers (V3: one layer, ~14B), 0 when there are none.
    public var mtpParameters: Int
    /// Parameters a token's forward pass uses, excluding the embedding table (a lookup, not a
    /// product). This is the convention of DeepSeek's "21B activated" (V2) and "2.4B" (V2-Lite).
    public var activeParameters: Int
    /// The same, with the embedding table counted.
    public var activeParametersWithEmbedding: Int
    public var parametersByRole: [String: Int]
    public var layerKinds: LayerKinds
    public var routing: Routing?
    public var kvCache: [KVCache]
    /// K and V per head in bf16 over all layers: what the same model would cache with MHA.
    public var mhaKVBytesPerToken: Int
    public var deepSeek67BKVBytesPerToken: Int

    enum CodingKeys: String, CodingKey {
        case totalParameters = "total_parameters"
        case mtpParameters = "mtp_parameters"
        case activeParameters = "active_parameters"
        case activeParametersWithEmbedding = "active_parameters_with_embedding"
        case parametersByRole = "parameters_by_role"
        case layerKinds = "layer_kinds"
        case routing
        case kvCache = "kv_cache"
        case mhaKVBytesPerToken = "mha_kv_bytes_per_token"
        case deepSeek67BKVBytesPerToken = "deepseek_67b_kv_bytes_per_token"
    }

    /// Counts everything with checked arithmetic; throws `SizeOverflow` naming the quantity that
    /// does not fit (the config validator runs this, so a loaded config never throws here).
    public init(config: DeepSeekConfig) throws {
        let tensors = config.expectedTensors()
        var byRole: [String: Int] = [:]
        var total = 0, mtp = 0
        for t in tensors {
            let count = try t.elementCount()
            if let layer = t.layer, config.isMTPLayer(layer) {
                mtp = try CheckedSize.sum(mtp, count, of: "MTP parameters")
                continue
            }
            byRole[t.role.rawValue] = try CheckedSize.sum(byRole[t.role.rawValue] ?? 0, count, of: "parameters of role \(t.role.rawValue)")
            total = try CheckedSize.sum(total, count, of: "total parameters")
        }
        totalParameters = total
        mtpParameters = mtp
        parametersByRole = byRole

        // Every role's count is part of the total, so the differences below cannot overflow.
        let routedTotal = byRole[TensorRole.routedExpert.rawValue] ?? 0
        let perExpert = try CheckedSize.product(3, config.hiddenSize, config.moeIntermediateSize, of: "parameters per routed expert")
        let activeRouted = try CheckedSize.product(config.moeLayerCount, config.numExpertsPerTok ?? 0, perExpert, of: "active routed parameters")
        activeParametersWithEmbedding = try CheckedSize.sum(total - routedTotal, activeRouted, of: "active parameters")
        activeParameters = activeParametersWithEmbedding - (byRole[TensorRole.embedding.rawValue] ?? 0)

        let layers = 0..<config.numHiddenLayers
        layerKinds = LayerKinds(dense: layers.filter { !config.isMoELayer($0) }, moe: layers.filter(config.isMoELayer))
        routing = Self.routing(config)

        let mha = try CheckedSize.product(config.numHiddenLayers, config.numAttentionHeads, config.qkHeadDim + config.vHeadDim, 2, of: "MHA KV bytes per token")
        mhaKVBytesPerToken = mha
        deepSeek67BKVBytesPerToken = Self.deepSeek67BKVBytesPerToken
        kvCache = try KVCacheFormat.allCases.map { format in
            let perLayer = try format.checkedBytesPerTokenPerLayer(kvLoraRank: config.kvLoraRank, ropeDim: config.qkRopeHeadDim)
            let total = try CheckedSize.product(perLayer, config.numHiddenLayers, of: "\(format.rawValue) KV bytes per token")
            return KVCache(format: format.rawValue, bytesPerTokenPerLayer: perLayer, bytesPerToken: total,
                           bitsPerElement: format.bitsPerElement(kvLoraRank: config.kvLoraRank, ropeDim: config.qkRopeHeadDim),
                           reductionVsDeepSeek67B: 1 - Double(total) / Double(Self.deepSeek67BKVBytesPerToken),
                           reductionVsMHA: 1 - Double(total) / Double(mha))
        }
    }

    private static func routing(_ config: DeepSeekConfig) -> Routing? {
        guard config.hasMoE else { return nil }
        let e = config.nRoutedExperts ?? 0, k = config.numExpertsPerTok ?? 0
        let grouped = config.topkMethod.isGroupLimited
        let g = grouped ? (config.nGroup ?? 1) : 1
        let tg = grouped ? (config.topkGroup ?? 1) : 1
        return Routing(method: config.topkMethod.rawValue, routedExperts: e, sharedExperts: config.nSharedExperts ?? 0,
                       expertsPerToken: k, groups: g, topkGroups: tg, expertsPerGroup: e / g,
                       deviceBoundM: grouped && g > 1 ? min(tg, k) : k, routedScalingFactor: config.routedScalingFactor,
                       normTopkProb: config.normTopkProb)
    }
}
