import DeepSeekModel
import Foundation
import Numerics
import ReferenceModel

/// Per-channel equalization of the cached latent for `quantize --kv6` (README "The 6-bit KV cache").
///
/// The forward pass over calibration tokens measures each latent channel's absmax a_c per layer;
/// s_c = 2^round(log2 √(a_c / geomean(a))) flattens the channels' ranges (square-root equalization,
/// as SmoothQuant's α = 0.5) so one large channel no longer sets the int5 scale of its 32-channel
/// group. The cache then holds c / s_c: kv_a_layernorm γ is divided by s_c and every weight that
/// reads the latent is multiplied by s_c on its latent channels. Powers of two make both folds exact
/// in bf16 (a real-valued s_c re-rounded moved a tiny trained model's logits by up to 0.48).
public enum KVEqualization {
    public static let rule = "s_c = 2^round(log2(sqrt(a_c / geomean(a)))), a_c = per-channel absmax of the cached latent"

    public static func scales(absmax: [Float]) -> [Float] {
        let positive = absmax.filter { $0 > 0 }
        guard !positive.isEmpty else { return absmax.map { _ in 1 } }
        let logMean = positive.reduce(0.0) { $0 + Foundation.log2(Double($1)) } / Double(positive.count)
        return absmax.map { a in
            guard a > 0 else { return 1 }
            let e = ((Foundation.log2(Double(a)) - logMean) / 2).rounded()
            return Float(sign: .plus, exponent: Int(max(-20, min(20, e))), significand: 1)
        }
    }

    /// Measures the latent per layer on `tokens` (batches of at most 8 sequences) from `source`
    /// (the calibration file its errors name).
    public static func calibrate(config: DeepSeekConfig, weights: WeightProvider, tokens: [[Int]], source: String = "calibration tokens",
                                 progress: ((String) -> Void)? = nil) throws -> [Int: [Float]] {
        var absmax: [Int: [Float]] = [:]
        try BLASThreads.withSingleThread {
        for start in stride(from: 0, to: tokens.count, by: 8) {
            let forward = ReferenceForward(config: config, weights: weights, recordLatentAbsmax: true)
            _ = try forward.run(tokens: Array(tokens[start..<min(tokens.count, start + 8)]), source: source) { progress?("calibrate: sequences \(start + 1)-\(min(tokens.count, start + 8)): \($0)") }
            for (layer, values) in forward.latentAbsmax {
                absmax[layer] = zip(absmax[layer] ?? values, values).map { max($0, $1) }
            }
        }
        }
        ReferenceForward.releaseBuffers()
        return absmax
    }

    /// The tensors of layer `layer` the fold changes, as a function from the original values.
    /// Returns nil for tensors it leaves alone.
    public static func transform(config: DeepSeekConfig, name: String, shape: [Int], scales s: [Float]) -> ((inout [Float]) -> Void)? {
        let kvl = config.kvLoraRank, heads = config.numAttentionHeads
        guard case let .layer(_, weight)? = TensorNames.parse(name) else { return nil }
        switch weight {
        case .kvANorm:
            return { values in for c in 0..<kvl { values[c] /= s[c] } }
        case .kvBProj, .wUK, .wUV:
            // Latent channels are the last dimension.
            return { values in for i in 0..<values.count { values[i] *= s[i % kvl] } }
        case .qAbsorbed:
            let cols = shape[1]
            return { values in for row in 0..<(heads * kvl) { for j in 0..<cols { values[row * cols + j] *= s[row % kvl] } } }
        case .oAbsorbed:
            return { values in for i in 0..<values.count { values[i] *= s[(i % (heads * kvl)) % kvl] } }
        default:
            return nil
        }
    }
}
