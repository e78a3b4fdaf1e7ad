import DeepSeekModel
import GGUF

/// llama.cpp's file types, as `llama-quantize` names them: what the exported tensors become.
public enum GGUFFileType: String, CaseIterable, Sendable {
    case f32, f16, bf16
    case q8_0
    case q6_k
    case q4_k_m

    /// `general.file_type` (llama.cpp's `llama_ftype`).
    public var llamaFileType: UInt32 {
        switch self {
        case .f32: return 0
        case .f16: return 1
        case .bf16: return 32
        case .q8_0: return 7
        case .q6_k: return 18
        case .q4_k_m: return 15
        }
    }

    /// The type in llama.cpp's file names (`DeepSeek-V3-Q4_K_M.gguf`).
    public var fileLabel: String { rawValue.uppercased() }
}

/// Where an exported tensor's values come from in the checkpoint.
enum GGUFRecipe: Equatable {
    /// A checkpoint tensor as it is.
    case tensor(String)
    /// A checkpoint tensor with every value divided by `divisor`: the query rows of an absorbed checkpoint,
    /// which carry the softmax scale llama.cpp applies itself.
    case divided(String, divisor: Double)
    /// Ones: a norm whose gain absorb folded into the next projection (llama.cpp still applies the norm).
    case ones
    /// kv_b_proj's key rows of every head, transposed per head: [heads, kv_lora, nope] (llama.cpp's attn_k_b).
    case keyAbsorb(layer: Int)
    /// kv_b_proj's value rows of every head: [heads, v, kv_lora] (attn_v_b).
    case valueAbsorb(layer: Int)
    /// An absorbed checkpoint's W_UK [heads, nope, kv_lora], transposed per head (attn_k_b).
    case transposedHeads(String)
    /// A layer's routed experts' projection, stacked: [experts, out, in] (ffn_*_exps).
    case experts(layer: Int, MLPProjection)
}

/// One tensor of the GGUF file.
struct GGUFPlannedTensor {
    let name: String
    /// The numpy/safetensors shape (the file stores it reversed).
    let shape: [Int]
    let type: GGMLType
    let recipe: GGUFRecipe
    var info: GGUFTensorInfo { GGUFTensorInfo(name: name, dimensions: shape.reversed(), type: type) }
}

/// llama.cpp's `deepseek2` tensor names for dsconvert's checkpoint tensors (convert_hf_to_gguf.py's
/// mapping): the one place they are written.
enum GGUFNames {
    static func layer(_ i: Int, _ suffix: String) -> String { "blk.\(i).\(suffix)" }

    /// Every tensor llama.cpp's `deepseek2` reads, with its shape and source, in llama.cpp's order (the
    /// model loader's: names outside blocks first, then block by block, each sorted bytewise); the MTP
    /// layers are left out, as llama.cpp's converter does.
    static func tensors(_ c: DeepSeekConfig) -> [(name: String, shape: [Int], recipe: GGUFRecipe)] {
        let h = c.hiddenSize, heads = c.numAttentionHeads, kvl = c.kvLoraRank, rope = c.qkRopeHeadDim
        let nope = c.qkNopeHeadDim, dv = c.vHeadDim
        var global: [(String, [Int], GGUFRecipe)] = [("token_embd.weight", [c.vocabSize, h], .tensor(TensorNames.embedding)),
                                                     ("output_norm.weight", [h], .tensor(TensorNames.finalNorm))]
        if !c.tieWordEmbeddings { global.append(("output.weight", [c.vocabSize, h], .tensor(TensorNames.lmHead))) }
        var out = global.sorted { Array($0.0.utf8).lexicographicallyPrecedes(Array($1.0.utf8)) }
        // The absorbed split form (`absorb --mode split`) holds what llama.cpp's attn_k_b/attn_v_b hold, with three
        // exact folds undone or kept: the norms' gains stay in W_UK/W_UV and q_b_proj (the norms become ones), and
        // the softmax scale is divided out of the query rows (llama.cpp applies its own).
        let absorbed = c.attentionForm == .split ? c.absorption : nil
        let queryDivisor = absorbed.map(GGUFNames.queryDivisor) ?? 1
        for i in 0..<c.numHiddenLayers {
            func w(_ weight: LayerWeight) -> GGUFRecipe { .tensor(TensorNames.name(weight, layer: i)) }
            func query(_ weight: LayerWeight) -> GGUFRecipe {
                queryDivisor == 1 ? w(weight) : .divided(TensorNames.name(weight, layer: i), divisor: queryDivisor)
            }
            var block: [(String, [Int], GGUFRecipe)] = [
                ("attn_norm.weight", [h], w(.inputNorm)),
                ("attn_kv_a_mqa.weight", [kvl + rope, h], w(.kvAProj)),
                ("attn_kv_a_norm.weight", [kvl], absorbed?.applied(.kvALayernormGamma) == true && !c.hasLatentGain ? .ones : w(.kvANorm)),
                ("attn_k_b.weight", [heads, kvl, nope], absorbed != nil ? .transposedHeads(TensorNames.name(.wUK, layer: i)) : .keyAbsorb(layer: i)),
                ("attn_v_b.weight", [heads, dv, kvl], absorbed != nil ? w(.wUV) : .valueAbsorb(layer: i)),
                ("attn_output.weight", [h, heads * dv], w(.oProj)),
                ("ffn_norm.weight", [h], w(.postAttentionNorm)),
            ]
            if let ql = c.qLoraRank {
                block += [("attn_q_a.weight", [ql, h], w(.qAProj)),
                          ("attn_q_a_norm.weight", [ql], absorbed?.applied(.qALayernormGamma) == true ? .ones : w(.qANorm)),
                          ("attn_q_b.weight", [heads * c.qkHeadDim, ql], query(.qBProj))]
            } else {
                block.append(("attn_q.weight", [heads * c.qkHeadDim, h], query(.qProj)))
            }
            if c.isMoELayer(i), let experts = c.nRoutedExperts {
                let f = c.moeIntermediateSize
                block += [("ffn_gate_inp.weight", [experts, h], w(.router)),
                          ("ffn_gate_exps.weight", [experts, f, h], .experts(layer: i, .gate)),
                          ("ffn_up_exps.weight", [experts, f, h], .experts(layer: i, .up)),
                          ("ffn_down_exps.weight", [experts, h, f], .experts(layer: i, .down))]
                if c.hasRouterBias { block.append(("exp_probs_b.bias", [experts], w(.routerBias))) }
                if let shared = c.nSharedExperts, shared > 0 {
                    block += [("ffn_gate_shexp.weight", [shared * f, h], w(.sharedGate)), ("ffn_up_shexp.weight", [shared * f, h], w(.sharedUp)),
                              ("ffn_down_shexp.weight", [h, shared * f], w(.sharedDown))]
                }
            } else {
                block += [("ffn_gate.weight", [c.intermediateSize, h], w(.denseGate)), ("ffn_up.weight", [c.intermediateSize, h], w(.denseUp)),
                          ("ffn_down.weight", [h, c.intermediateSize], w(.denseDown))]
            }
            out += block.map { (layer(i, $0.0), $0.1, $0.2) }.sorted { Array($0.0.utf8).lexicographicallyPrecedes(Array($1.0.utf8)) }
        }
        return out.map { (name: $0.0, shape: $0.1, recipe: $0.2) }
    }

    /// What the query rows of an absorbed checkpoint were multiplied by: the original softmax scale over the
    /// kernel's (1 when the scale was not folded).
    static func queryDivisor(_ record: AbsorptionRecord) -> Double {
        record.applied(.softmaxScale) ? record.originalSoftmaxScale / record.softmaxScale : 1
    }

    /// Why an absorbed checkpoint's record cannot be undone for llama.cpp (which applies the model's own scale),
    /// or nil: the folded scale must be the model's, and the divisor finite and positive.
    static func invalidAbsorption(_ c: DeepSeekConfig) -> String? {
        guard c.attentionForm == .split, let record = c.absorption else { return nil }
        let divisor = queryDivisor(record)
        guard divisor.isFinite, divisor > 0 else {
            return "dsconvert_absorption's softmax_scale \(record.softmaxScale) and original_softmax_scale \(record.originalSoftmaxScale) give no finite positive factor to divide out of the query rows"
        }
        guard !record.applied(.softmaxScale) || abs(record.originalSoftmaxScale - c.softmaxScale) <= 1e-12 * c.softmaxScale else {
            return "dsconvert_absorption's original_softmax_scale \(record.originalSoftmaxScale) is not the model's softmax scale \(c.softmaxScale)"
        }
        return nil
    }
}

/// Which ggml type each tensor gets: convert_hf_to_gguf.py's rule for f32/f16/bf16/q8_0, and for the
/// k-quant file types llama-quantize's mix applied to that f32 file (no importance matrix).
enum GGUFTypeRule {
    /// Why a file type cannot be written for this model.
    struct Unsupported: Error { let reason: String }

    /// convert_hf_to_gguf.py keeps 1-D tensors, norms, the router and biases in F32.
    static func keepsF32(_ name: String, shape: [Int]) -> Bool {
        shape.count <= 1 || name.hasSuffix("_norm.weight") || name.hasSuffix("ffn_gate_inp.weight") || !name.hasSuffix(".weight")
    }

    static func type(_ name: String, shape: [Int], fileType: GGUFFileType, config: DeepSeekConfig) throws -> GGMLType {
        if keepsF32(name, shape: shape) { return .f32 }
        let row = shape.last!
        switch fileType {
        case .f32: return .f32
        case .f16: return .f16
        case .bf16: return .bf16
        case .q8_0: return row % 32 == 0 ? .q8_0 : .f16
        case .q6_k: return fallback(.q6K, row: row)
        case .q4_k_m: return fallback(try q4KMType(name, row: row, config: config), row: row)
        }
    }

    /// llama-quantize's Q4_K_M choice before the row-size fallback: Q4_K, but Q6_K for the output head and
    /// for ffn_down in the layers `useMoreBits` picks.
    static func q4KMType(_ name: String, row: Int, config: DeepSeekConfig) throws -> GGMLType {
        if name == "output.weight" { return row % 256 == 0 ? .q6K : .q8_0 }
        if name.contains("attn_output.weight"), config.nRoutedExperts == 8 {
            throw Unsupported(reason: "llama-quantize gives attn_output Q5_K for 8-expert models; Q5_K is not implemented")
        }
        if name.contains("ffn_down"), let layer = Int(name.split(separator: ".")[1]) {
            // With several experts llama-quantize counts layers by the block number in the name.
            return useMoreBits(layer, config.numHiddenLayers) ? .q6K : .q4K
        }
        return .q4K
    }

    /// llama-quantize's "use more bits" layers: the first and last eighth, and every third in between.
    static func useMoreBits(_ i: Int, _ n: Int) -> Bool { i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2 }

    /// Rows that do not fill a 256-value super-block: Q4_K becomes Q5_0 and Q6_K becomes Q8_0; rows that do
    /// not fill 32 values, F16.
    static func fallback(_ type: GGMLType, row: Int) -> GGMLType {
        guard row % type.blockSize != 0 else { return type }
        let next: GGMLType = type == .q4K ? .q5_0 : .q8_0
        return row % next.blockSize == 0 ? next : .f16
    }
}
