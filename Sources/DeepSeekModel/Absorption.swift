import Foundation
import SafeTensors

/// How a checkpoint's attention weights are laid out.
public enum AttentionForm: String, Codable, Sendable, CaseIterable {
    /// The published form: q (or q_a/q_b), kv_a, kv_b, o; attention expands K and V per head.
    case mla
    /// `absorb --mode split`: kv_b_proj split into per-head W_UK [H, nope, kv_lora] and
    /// W_UV [H, v, kv_lora]; queries are absorbed at run time with one batched product
    /// (what vLLM, SGLang and llama.cpp do at load time).
    case split = "mla_absorbed_split"
    /// `absorb --mode fold`: the paper's literal form, W_UKᵀ·W_UQ per head on the query side and
    /// W_O·W_UV per head on the output side.
    case fold = "mla_absorbed_fold"
}

/// The dtype `dsconvert absorb` stores the tensors it computes in (the folds are computed in f64 and
/// rounded once to it): bf16 as published checkpoints are, or f32 to keep the folds' extra precision.
public enum AbsorbedDType: String, Codable, Sendable, CaseIterable {
    case bf16, f32

    /// The safetensors dtype of those tensors.
    public var storage: DType {
        switch self {
        case .bf16: .bf16
        case .f32: .f32
        }
    }
}

/// What `dsconvert absorb` did, recorded in the output `config.json` under `dsconvert_absorption`.
public struct AbsorptionRecord: Codable, Equatable, Sendable {
    public var attentionForm: AttentionForm
    /// Every exact fold applied (an unknown name in config.json is refused when it is decoded).
    public var folds: [Fold]
    /// The scale a kernel must now apply to q·k (1 when the scale is folded into the query weights).
    public var softmaxScale: Double
    /// The checkpoint's scale before folding: (nope+rope)^-0.5 · m(factor, mscale_all_dim)².
    public var originalSoftmaxScale: Double
    /// True when `kv_b_proj.weight` was kept (with kv_a_layernorm γ folded into it) for MHA prefill.
    public var keepsKVB: Bool
    /// Storage dtype of the tensors absorb computed (an unknown name in config.json is refused when
    /// it is decoded).
    public var dtype: AbsorbedDType
    /// Tensor layouts, for engine authors.
    public var layouts: [String: String]

    enum CodingKeys: String, CodingKey {
        case attentionForm = "attention_form"
        case folds
        case softmaxScale = "softmax_scale"
        case originalSoftmaxScale = "original_softmax_scale"
        case keepsKVB = "keeps_kv_b"
        case dtype
        case layouts
    }

    public init(attentionForm: AttentionForm, folds: [Fold], softmaxScale: Double, originalSoftmaxScale: Double,
                keepsKVB: Bool, dtype: AbsorbedDType, layouts: [String: String]) {
        self.attentionForm = attentionForm
        self.folds = folds
        self.softmaxScale = softmaxScale
        self.originalSoftmaxScale = originalSoftmaxScale
        self.keepsKVB = keepsKVB
        self.dtype = dtype
        self.layouts = layouts
    }

    public static let configKey = "dsconvert_absorption"

    /// Decoded member by member so a word outside the enums is refused naming its key and the
    /// supported words (`UnsupportedValue`), as the rest of config.json's choices are.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        attentionForm = try Self.choice(AttentionForm.self, c, .attentionForm)
        folds = try c.decode([String].self, forKey: .folds).map { try UnsupportedValue.decode($0, as: Fold.self, key: Self.key(.folds)) }
        softmaxScale = try c.decode(Double.self, forKey: .softmaxScale)
        originalSoftmaxScale = try c.decode(Double.self, forKey: .originalSoftmaxScale)
        keepsKVB = try c.decode(Bool.self, forKey: .keepsKVB)
        dtype = try Self.choice(AbsorbedDType.self, c, .dtype)
        layouts = try c.decode([String: String].self, forKey: .layouts)
    }

    private static func choice<E: RawRepresentable & CaseIterable>(_ type: E.Type, _ c: KeyedDecodingContainer<CodingKeys>, _ key: CodingKeys) throws -> E
    where E.RawValue == String {
        try UnsupportedValue.decode(try c.decode(String.self, forKey: key), as: E.self, key: Self.key(key))
    }

    /// The member's key as config.json spells it, under the record's own key.
    private static func key(_ key: CodingKeys) -> String { "\(configKey).\(key.stringValue)" }

    /// The exact folds `folds` names.
    public enum Fold: String, Codable, Sendable, CaseIterable {
        /// kv_a_layernorm's γ moved into the latent columns of W_UK/W_UV (the norm's weight is dropped).
        case kvALayernormGamma = "kv_a_layernorm_gamma"
        /// q_a_layernorm's γ moved into the columns of q_b_proj (the norm's weight is dropped).
        case qALayernormGamma = "q_a_layernorm_gamma"
        /// The softmax scale moved into the query rows (the kernel then applies `softmaxScale`).
        case softmaxScale = "softmax_scale"
    }

    /// True when `fold` was applied.
    public func applied(_ fold: Fold) -> Bool { folds.contains(fold) }
}

/// Parameters, decode cost and KV bytes of the three attention forms, from the config alone.
public struct AbsorptionCost: Codable, Equatable, Sendable {
    public struct Form: Codable, Equatable, Sendable {
        public var form: String
        /// Attention weights over all layers (projections and the norms that remain).
        public var attentionParameters: Int
        /// Multiply-adds per decoded token per layer that do not depend on the context.
        public var decodeMACsPerTokenPerLayer: Int
        /// Additional multiply-adds per cached context token per decoded token per layer.
        public var decodeMACsPerContextTokenPerLayer: Int
        /// KV-cache bytes per token over all layers in bf16 (the MHA form caches K and V per head).
        public var kvBytesPerToken: Int

        enum CodingKeys: String, CodingKey {
            case form
            case attentionParameters = "attention_parameters"
            case decodeMACsPerTokenPerLayer = "decode_macs_per_token_per_layer"
            case decodeMACsPerContextTokenPerLayer = "decode_macs_per_context_token_per_layer"
            case kvBytesPerToken = "kv_bytes_per_token"
        }
    }

    public var forms: [Form]

    /// The three forms' figures, every product checked: throws `SizeOverflow` naming the figure that
    /// does not fit (the config validator runs this, so a loaded config never throws here).
    public init(config c: DeepSeekConfig) throws {
        let h = c.hiddenSize, heads = c.numAttentionHeads, nope = c.qkNopeHeadDim, rope = c.qkRopeHeadDim
        let v = c.vHeadDim, kvl = c.kvLoraRank, layers = c.numHiddenLayers
        func p(_ f: Int..., of what: String) throws -> Int { try CheckedSize.product(f, of: "absorb cost table: \(what)") }
        func s(_ t: Int..., of what: String) throws -> Int {
            try t.reduce(0) { try CheckedSize.sum($0, $1, of: "absorb cost table: \(what)") }
        }
        let inQ = c.qLoraRank ?? h
        let qDown = try c.qLoraRank.map { try p($0, h, of: "q_a_proj") } ?? 0
        let kvA = try p(kvl + rope, h, of: "kv_a_proj")
        let qFull = try p(heads, nope + rope, inQ, of: "q_proj")
        let kvB = try p(heads, nope + v, kvl, of: "kv_b_proj")
        let o = try p(h, heads, v, of: "o_proj")
        let qNorm = c.qLoraRank ?? 0
        let latentKV = try p(layers, 2, kvl + rope, of: "latent KV bytes")

        // Original, MHA form: K and V expanded per head and cached (what an engine without MLA does).
        let originalMACs = try s(qDown, qFull, kvA, kvB, o, of: "mla MACs")
        let original = Form(form: AttentionForm.mla.rawValue,
                            attentionParameters: try p(layers, s(originalMACs, qNorm, kvl, of: "mla parameters"), of: "mla parameters"),
                            decodeMACsPerTokenPerLayer: originalMACs,
                            decodeMACsPerContextTokenPerLayer: try p(heads, nope + rope + v, of: "mla context MACs"),
                            kvBytesPerToken: try p(layers, 2, heads, nope + rope + v, of: "mla KV bytes"))
        // split: query absorbed at run time (H·nope·kv_lora), output through W_UV then o_proj.
        let contextMACs = try p(heads, s(kvl, rope, kvl, of: "absorbed context width"), of: "absorbed context MACs")
        let split = Form(form: AttentionForm.split.rawValue,
                         attentionParameters: try p(layers, s(qDown, qFull, kvA, kvB, o, of: "split parameters"), of: "split parameters"),
                         decodeMACsPerTokenPerLayer: try s(qDown, qFull, kvA, p(heads, nope, kvl, of: "W_UK"), p(heads, v, kvl, of: "W_UV"), o, of: "split MACs"),
                         decodeMACsPerContextTokenPerLayer: contextMACs, kvBytesPerToken: latentKV)
        let foldQ = try s(p(heads, kvl, inQ, of: "q_absorbed"), p(heads, rope, inQ, of: "q_rope"), of: "fold query")
        let foldO = try p(h, heads, kvl, of: "o_absorbed")
        let foldMACs = try s(qDown, foldQ, kvA, foldO, of: "fold MACs")
        let fold = Form(form: AttentionForm.fold.rawValue,
                        attentionParameters: try p(layers, foldMACs, of: "fold parameters"),
                        decodeMACsPerTokenPerLayer: foldMACs,
                        decodeMACsPerContextTokenPerLayer: contextMACs, kvBytesPerToken: latentKV)
        forms = [original, split, fold]
        _ = try table()
    }

    /// The report `absorb` prints (and `inspect` shows), at a given context length.
    /// Throws `SizeOverflow` if the MACs at `contextLength` do not fit (init checks the default).
    public func table(contextLength: Int = 4096) throws -> String {
        func cell(_ text: String, _ width: Int, left: Bool = false) -> String {
            let pad = String(repeating: " ", count: max(0, width - text.count))
            return left ? text + pad : pad + text
        }
        var lines = [cell("attention form", 20, left: true) + cell("attention params", 18) + cell("x orig", 8)
            + cell("decode MACs/token/layer @\(contextLength)", 34) + cell("KV bytes/token (bf16)", 23)]
        let base = Double(forms[0].attentionParameters)
        for f in forms {
            let macs = try CheckedSize.sum(f.decodeMACsPerTokenPerLayer,
                                           CheckedSize.product(contextLength, f.decodeMACsPerContextTokenPerLayer, of: "decode MACs at \(contextLength) tokens"),
                                           of: "decode MACs at \(contextLength) tokens")
            lines.append(cell(f.form, 20, left: true) + cell(String(f.attentionParameters), 18)
                + cell(String(format: "%.2f", Double(f.attentionParameters) / base), 8) + cell(String(macs), 34) + cell(String(f.kvBytesPerToken), 23))
        }
        return lines.joined(separator: "\n")
    }
}
