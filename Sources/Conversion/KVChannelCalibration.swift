import DeepSeekModel
import Foundation
import Numerics
import ReferenceModel

/// Calibration of the mla-kv6c cache (README "The 6-bit KV cache"): from a forward pass over calibration
/// tokens, every layer's per-channel bit widths (6 bits per element on average) and static steps.
///
/// Bits go where an error costs most. For each cached channel c (latent, then k_pe before rotation) the
/// pass measures its energy e_c = E[x_c²] and its sensitivity w_c: the expected squared change of the
/// attention block's output (after o_proj) per unit squared error in that channel of one cached token.
/// Through the scores, an error δ in key t moves head h's output by p_t·δs_t·W_O(v_t − ō), so
/// w_c += scale² Σ_queries q_{h,c}² Σ_t p_t² |M_h(c_t − c̄)|², with M_h = W_O,h·W_UV,h the map from the
/// latent to the block's output and c̄ = Σ_t p_t c_t; through the values (latent channels only), by
/// p_t·M_h[:, c]·δ, so w_c += |M_h[:, c]|² Σ_queries Σ_t p_t². A pair of k_pe channels shares the
/// average of the two (the rotation mixes them by the query's relative position).
///
/// With a quantization error of variance ∝ e_c·4^(−b_c), the output error Σ w_c e_c 4^(−b_c) is least
/// for b_c = 6 + ½·log2(w_c e_c) − mean over channels of ½·log2(w_j e_j) (reverse water-filling),
/// rounded and clamped to 2…12 bits, then moved one bit at a time (from the channel most above its ideal,
/// to the one most below) until Σ b_c = 6·(L + R). Each channel's step is the one of least squared error
/// on the calibration values among s = f · absmax / (2^(b−1) − 1), f = 1, 0.975, …, 0.275.
///
/// Measured (README): output sensitivity beat allocation by energy alone, by the query energy only, and by
/// the error of the attention context instead of the block's output; Fisher information (gradients of the
/// loss, which this forward pass does not compute) did about as well.
public enum KVChannelCalibration {
    public static let rule = "bits by output sensitivity (reverse water-filling, 2...12 bits, 6 on average); steps of least squared error"
    public static let minBits = 2, maxBits = 12, averageBits = 6
    /// Calibration tokens whose values are kept per layer for the step search (energies and sensitivities use
    /// every token): 2,048 × (L + R) f32 per layer, 4.7 MB at V2's and V3's widths, 283 MB for V2's 60 layers.
    public static let sampleLimit = 2048

    /// The layers calibrated: the main stack's, and the first MTP layer's when the model holds one and
    /// the sequences have the two tokens its pass needs (`ReferenceForward.observeCaches`).
    public static func calibratedLayers(_ config: DeepSeekConfig, sequenceLength: Int) -> Range<Int> {
        0..<(config.numHiddenLayers + (config.mtpLayerCount > 0 && sequenceLength >= 2 ? 1 : 0))
    }

    /// Runs the model on `tokens` (batches of at most 8 sequences) and returns the codec of every layer
    /// of `calibratedLayers`, in order.
    public static func calibrate(config: DeepSeekConfig, weights: WeightProvider, tokens: [[Int]], source: String = "calibration tokens",
                                 progress: ((String) -> Void)? = nil) throws -> [KVChannelCodec] {
        let calibrated = calibratedLayers(config, sequenceLength: tokens.first?.count ?? 0)
        let mtp = calibrated.count > config.numHiddenLayers
        var layers = calibrated.map { _ in LayerStatistics(config: config) }
        let metrics = ValueMetrics(config: config, weights: weights)
        // With one batch (up to 8 sequences) each layer's metric is needed once; with more, it is computed
        // again per batch rather than kept for every layer (heads × L² floats each: 134 MB per layer for V2).
        try BLASThreads.withSingleThread {
            for start in stride(from: 0, to: tokens.count, by: 8) {
                let batch = Array(tokens[start..<min(tokens.count, start + 8)])
                let forward = ReferenceForward(config: config, weights: weights, cacheObserver: { observation in
                    try layers[observation.layer].add(observation, metric: metrics.metric(layer: observation.layer))
                })
                try forward.observeCaches(tokens: batch, source: source, mtp: mtp) { progress?("calibrate: sequences \(start + 1)-\(start + batch.count): \($0)") }
            }
        }
        ReferenceForward.releaseBuffers()
        return try layers.enumerated().map { layer, statistics in
            do { return try statistics.codec() } catch {
                throw ConversionError.unsupportedInput(path: source, reason: "layer \(layer)'s cache values on these tokens give no valid codec (\(error)): a NaN or Inf activation?")
            }
        }
    }

    /// `record`'s mla-kv6c parameters for the cache of the absorbed model, whose latent is the original's
    /// divided by kv_a_layernorm's gain: latent steps divided by `gains[layer]` (k_pe's unchanged).
    public static func withoutLatentGain(_ record: KVCacheRecord, gains: [Int: [Float]], path: String) throws -> KVCacheRecord {
        var out = record
        out.channels = try record.channels?.map { entry in
            // A layer the checkpoint does not hold (MTP layers saved without their weights) keeps its
            // entry as calibrated: no cache of it is ever written.
            guard let gain = gains[entry.layer] else { return entry }
            guard let codec = entry.codec else {
                throw DeepSeekModelError.invalidConfig(path: path, reason: "dsconvert_kv_cache: layer \(entry.layer)'s channels cannot be read")
            }
            let steps = codec.steps.enumerated().map { c, s in
                abs(c < gain.count && gain[c] != 0 ? Float(Double(s) / Double(gain[c])) : s)
            }
            if let bad = steps.firstIndex(where: { !$0.isFinite }) {
                throw DeepSeekModelError.invalidConfig(path: path, reason: "dsconvert_kv_cache: layer \(entry.layer) channel \(bad): its step divided by kv_a_layernorm's gain is not finite")
            }
            return KVCacheRecord.LayerChannels(layer: entry.layer, codec: try KVChannelCodec(bits: codec.bits, steps: steps))
        }
        return out
    }

    /// A channel whose energy or sensitivity is not finite over the calibration tokens.
    struct NonFiniteStatistics: Error, CustomStringConvertible {
        let channel: Int
        var description: String { "channel \(channel)'s energy or sensitivity is not finite" }
    }

    /// Bit widths for channels of sensitivity `w` and energy `e` summing to `total` (see the type's doc);
    /// every product w·e must be finite.
    public static func allocate(sensitivity w: [Double], energy e: [Double], total: Int, range: ClosedRange<Int> = minBits...maxBits) -> [UInt8] {
        let logs = zip(w, e).map { 0.5 * Foundation.log2(max($0 * $1, 1e-30)) }
        let mean = logs.reduce(0, +) / Double(max(logs.count, 1))
        let ideal = logs.map { Double(total) / Double(max(logs.count, 1)) + $0 - mean }
        var bits = ideal.map { min(range.upperBound, max(range.lowerBound, Int($0.rounded()))) }
        var sum = bits.reduce(0, +)
        while sum != total {
            let down = sum > total
            var pick = -1, best = 0.0
            for c in bits.indices where down ? bits[c] > range.lowerBound : bits[c] < range.upperBound {
                let surplus = ideal[c] - Double(bits[c])
                if pick < 0 || (down ? surplus < best : surplus > best) { pick = c; best = surplus }
            }
            guard pick >= 0 else { break }
            bits[pick] += down ? -1 : 1
            sum += down ? -1 : 1
        }
        return bits.map { UInt8($0) }
    }

    /// The step of least squared error on `values` for a `bits`-bit channel (0 for a channel of zeros).
    public static func step(values: [Float], bits: Int) -> Float {
        let amax = values.reduce(Float(0)) { max($0, abs($1)) }
        guard amax > 0, bits >= 2 else { return 0 }
        let limit = Float((1 << (bits - 1)) - 1)
        var best: Float = 0, bestError = Double.infinity
        for k in 0..<30 {
            let s = amax * (1 - Float(k) / 40) / limit
            var error = 0.0
            for x in values {
                let d = Double(Float(KVChannelCodec.code(x, step: s, bits: bits)) * s - x)
                error += d * d
            }
            if error < bestError { best = s; bestError = error }
        }
        return best
    }
}

extension KVChannelCalibration {
    /// One layer's running sums over the calibration tokens.
    struct LayerStatistics {
        let latentWidth: Int, ropeWidth: Int
        var sensitivity: [Double]
        var energy: [Double]
        var tokens = 0
        /// Row-major [token, channel] values kept for the step search (at most `sampleLimit` tokens).
        var samples: [Float] = []

        init(config: DeepSeekConfig) {
            latentWidth = config.kvLoraRank
            ropeWidth = config.qkRopeHeadDim
            sensitivity = [Double](repeating: 0, count: latentWidth + ropeWidth)
            energy = sensitivity
        }

        mutating func add(_ o: KVCacheObservation, metric: [[Float]]) throws {
            let l = latentWidth, r = ropeWidth, t = o.batch * o.seq
            for i in 0..<t {
                let keep = tokens + i < sampleLimit
                for c in 0..<l {
                    let x = o.latent[i * l + c]
                    energy[c] += Double(x * x)
                    if keep { samples.append(x) }
                }
                for c in 0..<r {
                    let x = o.ropeBeforeRotation[i * r + c]
                    energy[l + c] += Double(x * x)
                    if keep { samples.append(x) }
                }
            }
            tokens += t
            for head in metric.indices {
                for b in 0..<o.batch {
                    AttentionSensitivity.add(o, head: head, sequence: b, metric: metric[head], into: &sensitivity)
                }
            }
        }

        func codec() throws -> KVChannelCodec {
            let width = latentWidth + ropeWidth
            var w = sensitivity
            // A rotated pair shares its sensitivity.
            for p in stride(from: latentWidth, to: width - 1, by: 2) {
                let mean = (w[p] + w[p + 1]) / 2
                w[p] = mean
                w[p + 1] = mean
            }
            let e = energy.map { $0 / Double(max(tokens, 1)) }
            // Finite weights can still give an Inf here (a latent of 1e20 squares to Inf in f32), and
            // the widths' rounding would trap on it (found by an audit): refused as the caller says.
            if let c = (0..<width).first(where: { !(w[$0] * e[$0]).isFinite }) { throw NonFiniteStatistics(channel: c) }
            let bits = KVChannelCalibration.allocate(sensitivity: w, energy: e, total: averageBits * width)
            let kept = samples.count / width
            let steps = (0..<width).map { c in
                KVChannelCalibration.step(values: (0..<kept).map { samples[$0 * width + c] }, bits: Int(bits[c]))
            }
            return try KVChannelCodec(bits: bits, steps: steps)
        }
    }
}
