import Foundation
import SafeTensors

/// YaRN / RoPE scaling parameters, from either the hub's `rope_scaling` or transformers 5's `rope_parameters`.
public struct RopeScaling: Codable, Equatable, Sendable {
    public var type: String
    public var factor: Double?
    public var mscale: Double?
    public var mscaleAllDim: Double?
    public var originalMaxPositionEmbeddings: Int?
    public var betaFast: Double?
    public var betaSlow: Double?

    enum CodingKeys: String, CodingKey {
        case type
        case ropeType = "rope_type"
        case factor
        case mscale
        case mscaleAllDim = "mscale_all_dim"
        case originalMaxPositionEmbeddings = "original_max_position_embeddings"
        case betaFast = "beta_fast"
        case betaSlow = "beta_slow"
    }

    public init(type: String, factor: Double? = nil, mscale: Double? = nil, mscaleAllDim: Double? = nil,
                originalMaxPositionEmbeddings: Int? = nil, betaFast: Double? = nil, betaSlow: Double? = nil) {
        self.type = type
        self.factor = factor
        self.mscale = mscale
        self.mscaleAllDim = mscaleAllDim
        self.originalMaxPositionEmbeddings = originalMaxPositionEmbeddings
        self.betaFast = betaFast
        self.betaSlow = betaSlow
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        type = try c.decodeIfPresent(String.self, forKey: .type) ?? c.decodeIfPresent(String.self, forKey: .ropeType) ?? "default"
        factor = try c.decodeIfPresent(Double.self, forKey: .factor)
        mscale = try c.decodeIfPresent(Double.self, forKey: .mscale)
        mscaleAllDim = try c.decodeIfPresent(Double.self, forKey: .mscaleAllDim)
        originalMaxPositionEmbeddings = try c.decodeIfPresent(Int.self, forKey: .originalMaxPositionEmbeddings)
        betaFast = try c.decodeIfPresent(Double.self, forKey: .betaFast)
        betaSlow = try c.decodeIfPresent(Double.self, forKey: .betaSlow)
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(type, forKey: .type)
        try c.encodeIfPresent(factor, forKey: .factor)
        try c.encodeIfPresent(mscale, forKey: .mscale)
        try c.encodeIfPresent(mscaleAllDim, forKey: .mscaleAllDim)
        try c.encodeIfPresent(originalMaxPositionEmbeddings, forKey: .originalMaxPositionEmbeddings)
        try c.encodeIfPresent(betaFast, forKey: .betaFast)
        try c.encodeIfPresent(betaSlow, forKey: .betaSlow)
    }

    /// True when YaRN is in effect (transformers treats "yarn" as the only scaling DeepSeek-V2 uses).
    public var isYaRN: Bool { type == "yarn" }
}

/// The `config.json` of a DeepSeek-V2- or V3-family checkpoint (V2, V2-Lite, V2.5; V3, R1, V3.1,
/// Kimi-K2, Moonlight), its behaviour decoded into enums once, here.
///
/// Keys follow the hub files; `rope_theta`/`rope_scaling` (hub) and `rope_parameters`
/// (transformers 5) are both accepted and normalized into `ropeTheta` and `ropeScaling`.
public struct DeepSeekConfig: Codable, Equatable, Sendable {
    public var architectures: [String]?
    public var modelType: String?
    /// The model class, from `architectures` or `model_type`.
    public var architecture: ModelArchitecture
    public var vocabSize: Int
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var moeIntermediateSize: Int
    public var numHiddenLayers: Int
    public var numAttentionHeads: Int
    public var qLoraRank: Int?
    public var kvLoraRank: Int
    public var qkNopeHeadDim: Int
    public var qkRopeHeadDim: Int
    public var vHeadDim: Int
    public var nRoutedExperts: Int?
    public var nSharedExperts: Int?
    public var numExpertsPerTok: Int?
    public var firstKDenseReplace: Int
    public var moeLayerFreq: Int
    public var topkMethod: TopkMethod
    public var nGroup: Int?
    public var topkGroup: Int?
    public var routedScalingFactor: Double
    public var normTopkProb: Bool
    public var scoringFunc: ScoringFunction
    /// Multi-token-prediction layers after the main stack (V3: 1, `model.layers.61`); nil when absent.
    public var numNextnPredictLayers: Int?
    public var rmsNormEps: Double
    public var ropeTheta: Double
    public var ropeScaling: RopeScaling?
    public var maxPositionEmbeddings: Int?
    public var tieWordEmbeddings: Bool
    public var attentionBias: Bool
    public var hiddenAct: String
    public var torchDtype: String?
    /// Present on `dsconvert absorb` outputs.
    public var absorption: AbsorptionRecord?
    /// Present on FP8 block-scaled checkpoints.
    public var quantization: QuantizationConfig?
    /// Present on one device's checkpoint of a `dsconvert shard` output.
    public var placement: PlacementRecord?
    /// Present on `quantize --kv6` outputs: the declared KV-cache format and its calibration.
    public var kvCache: KVCacheRecord?

    enum CodingKeys: String, CodingKey {
        case architectures
        case modelType = "model_type"
        case vocabSize = "vocab_size"
        case hiddenSize = "hidden_size"
        case intermediateSize = "intermediate_size"
        case moeIntermediateSize = "moe_intermediate_size"
        case numHiddenLayers = "num_hidden_layers"
        case numAttentionHeads = "num_attention_heads"
        case qLoraRank = "q_lora_rank"
        case kvLoraRank = "kv_lora_rank"
        case qkNopeHeadDim = "qk_nope_head_dim"
        case qkRopeHeadDim = "qk_rope_head_dim"
        case vHeadDim = "v_head_dim"
        case nRoutedExperts = "n_routed_experts"
        case nSharedExperts = "n_shared_experts"
        case numExpertsPerTok = "num_experts_per_tok"
        case firstKDenseReplace = "first_k_dense_replace"
        case moeLayerFreq = "moe_layer_freq"
        case topkMethod = "topk_method"
        case nGroup = "n_group"
        case topkGroup = "topk_group"
        case routedScalingFactor = "routed_scaling_factor"
        case normTopkProb = "norm_topk_prob"
        case scoringFunc = "scoring_func"
        case numNextnPredictLayers = "num_nextn_predict_layers"
        case rmsNormEps = "rms_norm_eps"
        case ropeTheta = "rope_theta"
        case ropeScaling = "rope_scaling"
        case ropeParameters = "rope_parameters"
        case maxPositionEmbeddings = "max_position_embeddings"
        case tieWordEmbeddings = "tie_word_embeddings"
        case attentionBias = "attention_bias"
        case hiddenAct = "hidden_act"
        case torchDtype = "torch_dtype"
        case dtype
        case absorption = "dsconvert_absorption"
        case quantization = "quantization_config"
        case placement = "dsconvert_placement"
        case kvCache = "dsconvert_kv_cache"
    }

    private struct RopeParameters: Decodable {
        var ropeTheta: Double?
        enum CodingKeys: String, CodingKey { case ropeTheta = "rope_theta" }
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        architectures = try c.decodeIfPresent([String].self, forKey: .architectures)
        modelType = try c.decodeIfPresent(String.self, forKey: .modelType)
        architecture = try ModelArchitecture.decode(architectures: architectures, modelType: modelType)
        vocabSize = try c.decode(Int.self, forKey: .vocabSize)
        hiddenSize = try c.decode(Int.self, forKey: .hiddenSize)
        intermediateSize = try c.decode(Int.self, forKey: .intermediateSize)
        moeIntermediateSize = try c.decodeIfPresent(Int.self, forKey: .moeIntermediateSize) ?? 1407
        numHiddenLayers = try c.decode(Int.self, forKey: .numHiddenLayers)
        numAttentionHeads = try c.decode(Int.self, forKey: .numAttentionHeads)
        qLoraRank = try c.decodeIfPresent(Int.self, forKey: .qLoraRank)
        kvLoraRank = try c.decode(Int.self, forKey: .kvLoraRank)
        qkNopeHeadDim = try c.decode(Int.self, forKey: .qkNopeHeadDim)
        qkRopeHeadDim = try c.decode(Int.self, forKey: .qkRopeHeadDim)
        vHeadDim = try c.decode(Int.self, forKey: .vHeadDim)
        nRoutedExperts = try c.decodeIfPresent(Int.self, forKey: .nRoutedExperts)
        nSharedExperts = try c.decodeIfPresent(Int.self, forKey: .nSharedExperts)
        numExpertsPerTok = try c.decodeIfPresent(Int.self, forKey: .numExpertsPerTok)
        firstKDenseReplace = try c.decodeIfPresent(Int.self, forKey: .firstKDenseReplace) ?? 0
        moeLayerFreq = try c.decodeIfPresent(Int.self, forKey: .moeLayerFreq) ?? 1
        // Absent keys take the defaults of the class's own configuration code: DeepSeek's V3
        // `configuration_deepseek.py` (and transformers' saves, which omit them) mean noaux_tc/sigmoid.
        let isV3 = architecture == .deepseekV3
        topkMethod = try Self.decodeEnum(c, .topkMethod, default: isV3 ? .noauxTC : .greedy)
        nGroup = try c.decodeIfPresent(Int.self, forKey: .nGroup)
        topkGroup = try c.decodeIfPresent(Int.self, forKey: .topkGroup)
        routedScalingFactor = try c.decodeIfPresent(Double.self, forKey: .routedScalingFactor) ?? 1.0
        normTopkProb = try c.decodeIfPresent(Bool.self, forKey: .normTopkProb) ?? false
        scoringFunc = try Self.decodeEnum(c, .scoringFunc, default: isV3 ? .sigmoid : .softmax)
        numNextnPredictLayers = try c.decodeIfPresent(Int.self, forKey: .numNextnPredictLayers)
        rmsNormEps = try c.decodeIfPresent(Double.self, forKey: .rmsNormEps) ?? 1e-6
        maxPositionEmbeddings = try c.decodeIfPresent(Int.self, forKey: .maxPositionEmbeddings)
        tieWordEmbeddings = try c.decodeIfPresent(Bool.self, forKey: .tieWordEmbeddings) ?? false
        attentionBias = try c.decodeIfPresent(Bool.self, forKey: .attentionBias) ?? false
        hiddenAct = try c.decodeIfPresent(String.self, forKey: .hiddenAct) ?? "silu"
        torchDtype = try c.decodeIfPresent(String.self, forKey: .torchDtype) ?? c.decodeIfPresent(String.self, forKey: .dtype)
        absorption = try c.decodeIfPresent(AbsorptionRecord.self, forKey: .absorption)
        quantization = try c.decodeIfPresent(QuantizationConfig.self, forKey: .quantization)
        placement = try c.decodeIfPresent(PlacementRecord.self, forKey: .placement)
        kvCache = try c.decodeIfPresent(KVCacheRecord.self, forKey: .kvCache)

        if c.contains(.ropeParameters), try !c.decodeNil(forKey: .ropeParameters) {
            let parameters = try c.decode(RopeParameters.self, forKey: .ropeParameters)
            let scaling = try c.decode(RopeScaling.self, forKey: .ropeParameters)
            ropeTheta = try parameters.ropeTheta ?? c.decodeIfPresent(Double.self, forKey: .ropeTheta) ?? 10000
            ropeScaling = scaling.type == "default" ? nil : scaling
        } else {
            ropeTheta = try c.decodeIfPresent(Double.self, forKey: .ropeTheta) ?? 10000
            let scaling = try c.decodeIfPresent(RopeScaling.self, forKey: .ropeScaling)
            ropeScaling = scaling?.type == "default" ? nil : scaling
        }
    }

    /// Encodes in the hub layout (`rope_theta` + `rope_scaling` with `type`).
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encodeIfPresent(architectures, forKey: .architectures)
        try c.encodeIfPresent(modelType, forKey: .modelType)
        try c.encode(vocabSize, forKey: .vocabSize)
        try c.encode(hiddenSize, forKey: .hiddenSize)
        try c.encode(intermediateSize, forKey: .intermediateSize)
        try c.encode(moeIntermediateSize, forKey: .moeIntermediateSize)
        try c.encode(numHiddenLayers, forKey: .numHiddenLayers)
        try c.encode(numAttentionHeads, forKey: .numAttentionHeads)
        try c.encode(qLoraRank, forKey: .qLoraRank)
        try c.encode(kvLoraRank, forKey: .kvLoraRank)
        try c.encode(qkNopeHeadDim, forKey: .qkNopeHeadDim)
        try c.encode(qkRopeHeadDim, forKey: .qkRopeHeadDim)
        try c.encode(vHeadDim, forKey: .vHeadDim)
        try c.encodeIfPresent(nRoutedExperts, forKey: .nRoutedExperts)
        try c.encodeIfPresent(nSharedExperts, forKey: .nSharedExperts)
        try c.encodeIfPresent(numExpertsPerTok, forKey: .numExpertsPerTok)
        try c.encode(firstKDenseReplace, forKey: .firstKDenseReplace)
        try c.encode(moeLayerFreq, forKey: .moeLayerFreq)
        try c.encode(topkMethod, forKey: .topkMethod)
        try c.encodeIfPresent(nGroup, forKey: .nGroup)
        try c.encodeIfPresent(topkGroup, forKey: .topkGroup)
        try c.encode(routedScalingFactor, forKey: .routedScalingFactor)
        try c.encode(normTopkProb, forKey: .normTopkProb)
        try c.encode(scoringFunc, forKey: .scoringFunc)
        try c.encodeIfPresent(numNextnPredictLayers, forKey: .numNextnPredictLayers)
        try c.encode(rmsNormEps, forKey: .rmsNormEps)
        try c.encode(ropeTheta, forKey: .ropeTheta)
        try c.encode(ropeScaling, forKey: .ropeScaling)
        try c.encodeIfPresent(maxPositionEmbeddings, forKey: .maxPositionEmbeddings)
        try c.encode(tieWordEmbeddings, forKey: .tieWordEmbeddings)
        try c.encode(attentionBias, forKey: .attentionBias)
        try c.encode(hiddenAct, forKey: .hiddenAct)
        try c.encodeIfPresent(torchDtype, forKey: .torchDtype)
        try c.encodeIfPresent(absorption, forKey: .absorption)
        try c.encodeIfPresent(quantization, forKey: .quantization)
        try c.encodeIfPresent(placement, forKey: .placement)
        try c.encodeIfPresent(kvCache, forKey: .kvCache)
    }

    /// A string-valued key decoded into its enum, or `UnsupportedValue` naming the key and the choices.
    private static func decodeEnum<E: RawRepresentable & CaseIterable>(_ c: KeyedDecodingContainer<CodingKeys>, _ key: CodingKeys,
                                                                       default value: E) throws -> E where E.RawValue == String {
        guard let text = try c.decodeIfPresent(String.self, forKey: key) else { return value }
        return try UnsupportedValue.decode(text, as: E.self, key: key.stringValue)
    }

    /// Reads and checks `config.json` in a checkpoint directory.
    public static func load(directory: URL) throws -> DeepSeekConfig {
        let url = directory.appendingPathComponent("config.json")
        let data: Data
        do { data = try FilePath.readRegularFile(url.path) } catch {
            throw DeepSeekModelError.missingConfig(path: url.path)
        }
        return try decode(data, path: url.path)
    }

    /// Parses and checks a `config.json` text; every error names `path`.
    public static func decode(_ data: Data, path: String) throws -> DeepSeekConfig {
        // Our own parser first: it refuses duplicate keys (Foundation keeps the last one silently)
        // and sees number literals Foundation would refuse as "not valid JSON" without a word why.
        let tree: JSONValue
        do { tree = try JSONParser.parse(data) } catch let error as JSONParseError {
            if let key = error.duplicateKey { throw DeepSeekModelError.duplicateKey(path: path, key: key) }
            throw DeepSeekModelError.invalidConfig(path: path, reason: "not valid JSON (\(error))")
        }
        try checkFiniteNumbers(tree, path: path, key: "")
        let config: DeepSeekConfig
        do {
            config = try JSONDecoder().decode(DeepSeekConfig.self, from: data)
        } catch let unsupported as UnsupportedArchitecture {
            throw DeepSeekModelError.unsupportedArchitecture(path: path, name: unsupported.name)
        } catch let unsupported as UnsupportedValue {
            throw DeepSeekModelError.invalidConfig(path: path, reason: "\(unsupported.key) '\(unsupported.value)' is not supported (\(unsupported.supported))")
        } catch let DecodingError.keyNotFound(key, _) {
            throw DeepSeekModelError.invalidConfig(path: path, reason: "missing key '\(key.stringValue)'")
        } catch let DecodingError.typeMismatch(_, context), let DecodingError.valueNotFound(_, context), let DecodingError.dataCorrupted(context) {
            if context.codingPath.isEmpty, let (key, literal) = nonIntegerKey(tree) {
                throw DeepSeekModelError.invalidConfig(path: path, reason: "key '\(key)': \(literal) is not a 64-bit integer")
            }
            let key = context.codingPath.map(\.stringValue).joined(separator: ".")
            throw DeepSeekModelError.invalidConfig(path: path, reason: "key '\(key)': \(context.debugDescription)")
        } catch {
            throw DeepSeekModelError.invalidConfig(path: path, reason: "not valid JSON")
        }
        try config.validate(path: path)
        return config
    }

    /// Numbers `nonIntegerKey` tries at most, each a decode of the document.
    static let nonIntegerTries = 64

    /// The key holding the number that stopped decoding, when Foundation could not say (a
    /// fractional or oversized number where an integer is expected is reported as "not valid JSON"
    /// with no key): each number that is not an Int is set to 1 in turn, and the one whose change
    /// gets decoding past that error is named, with its literal. Every try decodes the document
    /// again, so trying each of thousands of unknown keys took minutes (12,000 fractional ones: 76 s):
    /// only the top-level members decoding reads are kept, and at most `nonIntegerTries` numbers
    /// tried (a real config has about ten that are not integers); past them the error names no key.
    static func nonIntegerKey(_ document: JSONValue) -> (key: String, literal: String)? {
        guard case let .object(members) = document else { return nil }
        let tree = JSONValue.object(members.filter { CodingKeys(stringValue: $0.0) != nil })
        func candidates(_ value: JSONValue, _ prefix: String) -> [(String, String)] {
            guard case let .object(entries) = value else { return [] }
            return entries.flatMap { key, member -> [(String, String)] in
                let path = prefix.isEmpty ? key : prefix + "." + key
                if case let .number(text) = member { return Int(text) == nil ? [(path, text)] : [] }
                return candidates(member, path)
            }
        }
        func replacing(_ value: JSONValue, _ path: ArraySlice<Substring>) -> JSONValue {
            guard let first = path.first, case let .object(entries) = value else { return .number("1") }
            return .object(entries.map { $0.0 == first ? ($0.0, replacing($0.1, path.dropFirst())) : $0 })
        }
        for (key, literal) in candidates(tree, "").prefix(Self.nonIntegerTries) {
            let changed = replacing(tree, key.split(separator: ".")[...])
            do {
                _ = try JSONDecoder().decode(DeepSeekConfig.self, from: Data(changed.prettyPrinted().utf8))
                return (key, literal)
            } catch let DecodingError.dataCorrupted(context) where context.codingPath.isEmpty {
                continue
            } catch {
                return (key, literal)
            }
        }
        return nil
    }

    /// Refuses number literals that overflow a double to infinity (JSON has no NaN or Inf of its own).
    private static func checkFiniteNumbers(_ value: JSONValue, path: String, key: String) throws {
        switch value {
        case let .number(text):
            if let d = Double(text), !d.isFinite { throw DeepSeekModelError.nonFiniteNumber(path: path, key: key) }
        case let .array(items):
            for (i, item) in items.enumerated() { try checkFiniteNumbers(item, path: path, key: "\(key)[\(i)]") }
        case let .object(entries):
            for (k, v) in entries { try checkFiniteNumbers(v, path: path, key: key.isEmpty ? k : "\(key).\(k)") }
        default: break
        }
    }

    // MARK: Derived facts

    public var qkHeadDim: Int { qkNopeHeadDim + qkRopeHeadDim }
    public var attentionForm: AttentionForm { absorption?.attentionForm ?? .mla }
    /// kv_a_layernorm carries a gain: always in the original form; in absorbed forms only when
    /// `quantize --kv6` folded its equalization 1/s_c back in.
    public var hasLatentGain: Bool { attentionForm == .mla || kvCache?.equalized == true }

    /// The scale the attention kernel applies to q·k: the model's softmax scale, or what absorb
    /// left after folding it into the query weights (1).
    public var kernelSoftmaxScale: Double { absorption?.softmaxScale ?? softmaxScale }
    public var hasQueryCompression: Bool { qLoraRank != nil }

    /// Layer `i` is MoE iff routed experts exist, i ≥ first_k_dense_replace and i % moe_layer_freq == 0
    /// (DeepSeek's own modeling code; transformers' native class ignores moe_layer_freq, which is 1 in every published config).
    public func isMoELayer(_ i: Int) -> Bool {
        (nRoutedExperts ?? 0) > 0 && i >= firstKDenseReplace && i % moeLayerFreq == 0
    }

    /// Whether any layer routes tokens to experts, the MTP layers included: a V3 config whose main
    /// layers are all dense may still route in its MTP layer, and that routing is checked and run.
    public var hasMoE: Bool { allLayers.contains(where: isMoELayer) }
    public var moeLayerCount: Int { (0..<numHiddenLayers).filter(isMoELayer).count }

    /// The multi-token-prediction layers' count (0 for the V2 family, which has none).
    public var mtpLayerCount: Int { architecture == .deepseekV3 ? (numNextnPredictLayers ?? 0) : 0 }
    /// Layers `num_hidden_layers ..< num_hidden_layers + mtpLayerCount`: each a full decoder layer plus
    /// its own embedding, norms, `eh_proj` and head. Serving engines use them for speculative
    /// decoding; every stage carries them; the main model's logits do not use them.
    public var mtpLayers: Range<Int> { numHiddenLayers..<(numHiddenLayers + mtpLayerCount) }
    /// The main stack and the MTP layers: every layer a stage converts.
    public var allLayers: Range<Int> { 0..<(numHiddenLayers + mtpLayerCount) }
    public func isMTPLayer(_ i: Int) -> Bool { mtpLayers.contains(i) }
    /// The router adds `e_score_correction_bias` to choose experts (`noaux_tc`).
    public var hasRouterBias: Bool { topkMethod == .noauxTC }

    /// m(s, k) = 0.1·k·ln(s) + 1 for s > 1 (YaRN's attention temperature).
    public static func yarnMscale(scale: Double, mscale: Double) -> Double {
        scale <= 1 ? 1.0 : 0.1 * mscale * Foundation.log(scale) + 1.0
    }

    /// The attention softmax scale: (nope + rope)^-0.5 · m(factor, mscale_all_dim)², as DeepSeek's code
    /// and transformers compute it. Never from the absorbed width (576^-0.5 is a known engine bug).
    public var softmaxScale: Double {
        var scale = 1.0 / Double(qkHeadDim).squareRoot()
        if let s = ropeScaling, s.isYaRN, let all = s.mscaleAllDim, all != 0 {
            let m = Self.yarnMscale(scale: s.factor ?? 1, mscale: all)
            scale *= m * m
        }
        return scale
    }
}
