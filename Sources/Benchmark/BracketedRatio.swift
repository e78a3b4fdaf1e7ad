/// A timed job's speed as a share of a reference timed in rounds between its runs (round i just
/// before run i, one more after the last).
///
/// A shared machine's speed drifts over minutes: another tenant's work takes memory bandwidth and
/// cache, and the reference slows with the job. Each run is therefore compared with the reference of
/// its own minutes, the rounds just before and after it, rather than with the whole run's, and how
/// much the reference itself moved from round to round is reported beside the ratios: a run whose
/// reference moved by more than `steadySpread` was not on a quiet machine, and its ratios are not
/// comparable with a quiet run's.
public struct BracketedRatio: Equatable, Sendable {
    /// Each run's rate over the rate of the reference's products in the two rounds around it
    /// (their median seconds).
    public let ratios: [Double]
    /// The reference's rate in each round (at the round's median), in the job's units per second.
    public let roundRates: [Double]

    /// The largest relative spread of the reference's round rates, (max - min) / max, for a run
    /// still called steady.
    public static let steadySpread = 0.10

    /// - Parameters:
    ///   - runSeconds: seconds of each timed run of the job.
    ///   - work: the job's work per run (FLOPs).
    ///   - rounds: seconds of each reference product, by round; runSeconds.count + 1 rounds.
    ///   - referenceWork: one reference product's work (FLOPs).
    public init(runSeconds: [Double], work: Double, rounds: [[Double]], referenceWork: Double) {
        let medians = rounds.map { SampleSummary($0)?.median }
        roundRates = medians.compactMap { $0.map { referenceWork / $0 } }
        ratios = runSeconds.indices.compactMap { i in
            guard i + 1 < rounds.count, let around = SampleSummary(rounds[i] + rounds[i + 1]) else { return nil }
            return (work / runSeconds[i]) / (referenceWork / around.median)
        }
    }

    /// (max - min) / max of the reference's round rates; 0 for fewer than two rounds.
    public var spread: Double {
        guard let high = roundRates.max(), let low = roundRates.min(), high > 0 else { return 0 }
        return (high - low) / high
    }

    /// Whether the reference stayed within `steadySpread` over the whole run.
    public var steady: Bool { spread <= Self.steadySpread }
}
