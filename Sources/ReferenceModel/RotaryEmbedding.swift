import DeepSeekModel
import Foundation

/// Rotary position embedding as transformers' native DeepSeek-V2 applies it: adjacent pairs
/// (2i, 2i+1) are complex numbers rotated by position · inv_freq[i], with YaRN frequencies and
/// cos/sin scaled by m(factor, mscale) / m(factor, mscale_all_dim) (1.0 for the published configs).
///
/// Frequencies are computed in fp32 in the same order as `_compute_yarn_parameters`, so angles agree
/// with transformers' to the last bit or two.
public struct RotaryEmbedding: Sendable {
    public let invFreq: [Float]
    public let attentionScaling: Float

    public init(config: DeepSeekConfig) {
        let dim = config.qkRopeHeadDim
        let base = config.ropeTheta
        let half = dim / 2
        let exponents = (0..<half).map { Float(2 * $0) / Float(dim) }
        let posFreqs = exponents.map { powf(Float(base), $0) }
        guard let s = config.ropeScaling, s.isYaRN else {
            invFreq = posFreqs.map { 1 / $0 }
            attentionScaling = 1
            return
        }
        let factor = s.factor ?? 1
        let original = Double(s.originalMaxPositionEmbeddings ?? 4096)
        let betaFast = (s.betaFast ?? 0) == 0 ? 32 : s.betaFast!
        let betaSlow = (s.betaSlow ?? 0) == 0 ? 1 : s.betaSlow!
        func correctionDim(_ rotations: Double) -> Double {
            Double(dim) * Foundation.log(original / (rotations * 2 * Double.pi)) / (2 * Foundation.log(base))
        }
        let low = max(Foundation.floor(correctionDim(betaFast)), 0)
        var high = min(Foundation.ceil(correctionDim(betaSlow)), Double(dim - 1))
        if low == high { high += 0.001 }
        invFreq = (0..<half).map { i in
            let extrapolation = 1 / posFreqs[i]
            let interpolation = 1 / (Float(factor) * posFreqs[i])
            let ramp = min(max((Float(i) - Float(low)) / (Float(high) - Float(low)), 0), 1)
            let extrapolationFactor = 1 - ramp
            return interpolation * (1 - extrapolationFactor) + extrapolation * extrapolationFactor
        }
        if let m = s.mscale, let all = s.mscaleAllDim, m != 0, all != 0 {
            attentionScaling = Float(DeepSeekConfig.yarnMscale(scale: factor, mscale: m) / DeepSeekConfig.yarnMscale(scale: factor, mscale: all))
        } else {
            attentionScaling = Float(DeepSeekConfig.yarnMscale(scale: factor, mscale: 1))
        }
    }

    /// cos and sin (already scaled) for one position.
    public func table(position: Int) -> (cos: [Float], sin: [Float]) {
        var c = [Float](repeating: 0, count: invFreq.count), s = c
        for i in 0..<invFreq.count {
            let angle = Float(position) * invFreq[i]
            c[i] = Float(Foundation.cos(Double(angle))) * attentionScaling
            s[i] = Float(Foundation.sin(Double(angle))) * attentionScaling
        }
        return (c, s)
    }

    /// Rotates the pairs of `x` (rope width) in place.
    @inline(__always)
    public static func rotate(_ x: UnsafeMutablePointer<Float>, cos c: [Float], sin s: [Float]) {
        for i in 0..<c.count {
            let a = x[2 * i], b = x[2 * i + 1]
            x[2 * i] = a * c[i] - b * s[i]
            x[2 * i + 1] = a * s[i] + b * c[i]
        }
    }
}
