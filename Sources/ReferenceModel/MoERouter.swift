import DeepSeekModel
import Foundation

/// The router of a DeepSeekMoE layer: fp32 scores of the router logits, then top-k (README "The
/// reference forward pass", "The V3 family").
///
/// - DeepSeek-V2: softmax scores; `greedy` top-k, or `group_limited_greedy` (a group scores its best
///   expert, the `topk_group` best groups are kept, the rest zeroed). DeepSeek-V2's own code then
///   renormalizes the k weights if `norm_topk_prob` (and k > 1), otherwise multiplies them by
///   `routed_scaling_factor`: one or the other. transformers' native V2 class always scales; both
///   agree on every published V2 config, where `norm_topk_prob` is false.
/// - The V3 family (`noaux_tc`), as transformers' `DeepseekV3TopkRouter`: sigmoid scores s; the
///   choice uses c = s + `e_score_correction_bias`; a group scores the sum of its two largest c; the
///   `topk_group` best groups are kept and the others' c set to −inf (transformers 5 and DeepSeek's
///   own inference code; the hub's older remote code uses 0.0, which differs only when a kept biased
///   score is negative); top-k by c; the
///   weights are the unbiased s of the chosen experts, divided by their sum (+1e-20) if
///   `norm_topk_prob`, and then always times `routed_scaling_factor`. `n_group` 1 (Kimi-K2,
///   Moonlight) is plain top-k.
public struct MoERouter: Sendable {
    public let experts: Int
    public let k: Int
    public let method: TopkMethod
    public let scoring: ScoringFunction
    public let groups: Int
    public let topkGroups: Int
    public let normTopkProb: Bool
    public let routedScalingFactor: Float
    /// `e_score_correction_bias` of this layer (`noaux_tc` only).
    public let bias: [Float]?

    public init(config: DeepSeekConfig, bias: [Float]? = nil) {
        experts = config.nRoutedExperts ?? 0
        k = config.numExpertsPerTok ?? 0
        method = config.topkMethod
        scoring = config.scoringFunc
        groups = method.isGroupLimited ? (config.nGroup ?? 1) : 1
        topkGroups = method.isGroupLimited ? (config.topkGroup ?? 1) : 1
        normTopkProb = config.normTopkProb
        routedScalingFactor = Float(config.routedScalingFactor)
        self.bias = bias
    }

    /// The chosen experts, ascending, with their weights.
    public func route(logits: [Float]) -> [(expert: Int, weight: Float)] {
        let scores = score(logits)
        var choice = scores
        if method == .noauxTC, let bias { for j in 0..<experts { choice[j] += bias[j] } }
        if groups > 1 { maskGroups(&choice) }
        var chosen = Self.topIndices(choice, count: k).map { ($0, method == .noauxTC ? scores[$0] : choice[$0]) }
        switch method {
        case .greedy, .groupLimitedGreedy:
            if normTopkProb, k > 1 {
                let sum = chosen.reduce(Float(0)) { $0 + $1.1 } + 1e-20
                chosen = chosen.map { ($0.0, $0.1 / sum) }
            } else {
                chosen = chosen.map { ($0.0, $0.1 * routedScalingFactor) }
            }
        case .noauxTC:
            if normTopkProb {
                let sum = chosen.reduce(Float(0)) { $0 + $1.1 } + 1e-20
                chosen = chosen.map { ($0.0, $0.1 / sum) }
            }
            chosen = chosen.map { ($0.0, $0.1 * routedScalingFactor) }
        }
        return chosen.sorted { $0.0 < $1.0 }.map { (expert: $0.0, weight: $0.1) }
    }

    private func score(_ logits: [Float]) -> [Float] {
        var scores = logits
        switch scoring {
        case .softmax: scores.withUnsafeMutableBufferPointer { Elementwise.softmax($0.baseAddress!, count: experts) }
        case .sigmoid: for j in 0..<experts { scores[j] = 1 / (1 + Foundation.exp(-logits[j])) }
        }
        return scores
    }

    /// Masks the candidates outside the `topk_group` best groups of contiguous experts: 0 for V2
    /// (softmax scores are positive; DeepSeek-V2's code and transformers zero them), −inf for noaux_tc.
    private func maskGroups(_ candidates: inout [Float]) {
        let size = experts / groups
        let groupScores = (0..<groups).map { g -> Float in
            let members = candidates[(g * size)..<((g + 1) * size)]
            switch method {
            case .noauxTC:
                let best = Self.topIndices(Array(members), count: 2)
                return members[members.startIndex + best[0]] + members[members.startIndex + best[1]]
            case .greedy, .groupLimitedGreedy:
                return members.max()!
            }
        }
        let keep = Set(Self.topIndices(groupScores, count: topkGroups))
        let masked: Float
        switch method {
        case .noauxTC: masked = -.infinity
        case .greedy, .groupLimitedGreedy: masked = 0
        }
        for g in 0..<groups where !keep.contains(g) {
            for j in (g * size)..<((g + 1) * size) { candidates[j] = masked }
        }
    }

    /// Indices of the `count` largest values, largest first; ties go to the lower index (torch.topk's
    /// order on CPU). The order matters beyond the choice: the chosen weights are summed in it.
    ///
    /// One pass keeping the best so far in that order, instead of sorting every index: a token of
    /// V3 chooses 8 of 256 experts (and 4 of 8 groups, each scored by its best 2 of 32). A later
    /// value enters only if strictly larger, so an earlier equal one stays ahead of it. A NaN (only
    /// from a hidden state already NaN, which the pass reports as non-finite logits) compares false:
    /// it never displaces a kept value and, once kept, is never passed; the sort gave no defined
    /// order with NaN either.
    static func topIndices(_ values: [Float], count: Int) -> [Int] {
        guard count > 0 else { return [] }
        var best: [Int] = []
        best.reserveCapacity(count)
        for j in values.indices {
            if best.count == count {
                guard values[j] > values[best[count - 1]] else { continue }
                best.removeLast()
            }
            var position = best.count
            while position > 0, values[j] > values[best[position - 1]] { position -= 1 }
            best.insert(j, at: position)
        }
        return best
    }
}
