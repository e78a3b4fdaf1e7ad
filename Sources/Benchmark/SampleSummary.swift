/// Median, minimum and maximum of a set of timings: what every benchmark here reports (a best-of-N
/// hides how much a run varies, and on a shared VM the spread is part of the result).
public struct SampleSummary: Equatable, Sendable {
    public let median: Double
    public let min: Double
    public let max: Double
    public let count: Int

    /// nil for no samples (every run failed).
    public init?(_ values: [Double]) {
        guard !values.isEmpty else { return nil }
        let sorted = values.sorted()
        let mid = sorted.count / 2
        median = sorted.count % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
        min = sorted[0]
        max = sorted[sorted.count - 1]
        count = sorted.count
    }
}
