/// The model classes this toolchain converts, decoded once from `architectures` (or `model_type`).
///
/// Both share MLA attention, DeepSeekMoE and `config.json`'s keys; they differ in routing (V3:
/// sigmoid scores with a selection bias, `noaux_tc`) and in the multi-token-prediction layers V3
/// checkpoints carry after the main stack. Anything else, `DeepseekV32ForCausalLM` (its sparse
/// attention indexer) included, is refused by name.
public enum ModelArchitecture: String, CaseIterable, Sendable {
    /// DeepSeek-V2, V2-Lite, V2.5, Coder-V2.
    case deepseekV2 = "DeepseekV2ForCausalLM"
    /// DeepSeek-V3, V3-0324, R1, V3.1, Kimi-K2, Moonlight.
    case deepseekV3 = "DeepseekV3ForCausalLM"

    /// The `model_type`s the hub files of each class carry (Kimi-K2 names its own).
    public init?(modelType: String) {
        switch modelType {
        case "deepseek_v2": self = .deepseekV2
        case "deepseek_v3", "kimi_k2": self = .deepseekV3
        default: return nil
        }
    }

    /// The class from `architectures` (the first entry this toolchain knows), else from `model_type`;
    /// V2 when a config names neither (older tools wrote configs without them).
    /// - Throws: the unsupported name, when the config names only classes this toolchain does not know.
    static func decode(architectures: [String]?, modelType: String?) throws(UnsupportedArchitecture) -> ModelArchitecture {
        if let architectures, !architectures.isEmpty {
            guard let known = architectures.lazy.compactMap(ModelArchitecture.init(rawValue:)).first else {
                throw UnsupportedArchitecture(name: architectures.joined(separator: ","))
            }
            return known
        }
        if let modelType {
            guard let known = ModelArchitecture(modelType: modelType) else { throw UnsupportedArchitecture(name: "model_type \(modelType)") }
            return known
        }
        return .deepseekV2
    }
}

/// A class or model type the toolchain does not convert.
struct UnsupportedArchitecture: Error {
    let name: String
}

/// How the router turns its logits into scores (`scoring_func`).
public enum ScoringFunction: String, Codable, CaseIterable, Sendable {
    /// DeepSeek-V2: softmax over all routed experts.
    case softmax
    /// The V3 family: an independent sigmoid per expert.
    case sigmoid
}

/// How the router picks a token's experts (`topk_method`).
public enum TopkMethod: String, Codable, CaseIterable, Sendable {
    /// Top-k over all experts (V2-Lite).
    case greedy
    /// Experts in `n_group` contiguous groups; a group scores its best expert; the `topk_group` best
    /// groups are kept and top-k taken among their experts (DeepSeek-V2).
    case groupLimitedGreedy = "group_limited_greedy"
    /// The V3 family: scores plus `e_score_correction_bias` choose; a group scores the sum of its two
    /// best biased scores; the chosen experts are weighted by their unbiased scores.
    case noauxTC = "noaux_tc"

    /// Routing groups limit which experts a token may reach.
    public var isGroupLimited: Bool {
        switch self {
        case .greedy: return false
        case .groupLimitedGreedy, .noauxTC: return true
        }
    }
}

/// A config value outside what the toolchain implements, found while decoding.
struct UnsupportedValue: Error {
    let key: String
    let value: String
    let supported: String

    /// `word` as a case of `E`, or this error naming `key` and every word `E` has.
    static func decode<E: RawRepresentable & CaseIterable>(_ word: String, as type: E.Type, key: String) throws -> E where E.RawValue == String {
        guard let value = E(rawValue: word) else {
            throw UnsupportedValue(key: key, value: word, supported: E.allCases.map(\.rawValue).joined(separator: ", "))
        }
        return value
    }
}
