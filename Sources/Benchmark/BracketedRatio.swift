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
    ///   - rounds: seconds of each reference product, by round: runSeconds.count + 1 rounds, none empty.
    ///   - referenceWork: one reference product's work (FLOPs).
    /// Every time must be positive and finite (a timer's reading of real work).
    public init(runSeconds: [Double], work: Double, rounds: [[Double]], referenceWork: Double) {
        precondition(rounds.count == runSeconds.count + 1 && rounds.allSatisfy { !$0.isEmpty },
                     "\(rounds.count) rounds (none empty) for \(runSeconds.count) runs")
        precondition((runSeconds + rounds.flatMap { $0 }).allSatisfy { $0 > 0 && $0.isFinite }, "a time that is not positive and finite")
        roundRates = rounds.map { referenceWork / SampleSummary($0)!.median }
        ratios = runSeconds.indices.map { i in
            (work / runSeconds[i]) / (referenceWork / SampleSummary(rounds[i] + rounds[i + 1])!.median)
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
