import Foundation

/// One job of `dsconvert-bench convert`: a program run as a child process, and what it must write.
public struct BenchJob: Sendable {
    public let name: String
    public let program: String
    public let arguments: [String]
    public let expectation: OutputExpectation

    public init(name: String, program: String, arguments: [String], expectation: OutputExpectation) {
        self.name = name
        self.program = program
        self.arguments = arguments
        self.expectation = expectation
    }
}

/// A job's row: its successful runs summarized, its failed runs named.
public struct JobSummary: Sendable {
    public let name: String
    /// Wall time over the successful runs only (nil when none succeeded).
    public let wall: SampleSummary?
    /// Median over rounds of wall / the reference job's wall in the same round (both successful).
    public let ratioToReference: Double?
    /// The same against the page-cache copy (`cp -r`, not durable).
    public let ratioToCopy: Double?
    public let peakRSSKiB: Int
    public let runs: Int
    /// The outcomes of the failed runs, in round order.
    public let failures: [JobOutcome]

    /// Any run failed: the bench then exits 1.
    public var failed: Bool { !failures.isEmpty }

    /// "ok", "failed (signal 9)", or "failed (exit 3) in 1 of 3 runs".
    public var status: String {
        guard failed else { return "ok" }
        var labels: [String] = []
        for outcome in failures where !labels.contains(outcome.label) { labels.append(outcome.label) }
        return labels.joined(separator: "; ") + (failures.count < runs ? " in \(failures.count) of \(runs) runs" : "")
    }
}

/// The schedule of the rounds and the statistics over them.
public enum BenchRounds {
    /// The job order of round `round`: rotated by one each round, so no job always runs first (right
    /// after the warm-up) or always right after another job's writeback.
    public static func order(round: Int, jobs: Int) -> [Int] {
        (0..<jobs).map { (round + $0) % jobs }
    }

    /// Rows for `jobs` from `samples[job][round]`; ratios are to the jobs at `reference` and `copy`.
    public static func summarize(_ jobs: [BenchJob], samples: [[JobRun]], reference: Int, copy: Int) -> [JobSummary] {
        func ratio(_ job: Int, to base: Int) -> Double? {
            let rounds = samples[job].indices.filter { samples[job][$0].outcome.succeeded && samples[base][$0].outcome.succeeded }
            return SampleSummary(rounds.map { samples[job][$0].wall / samples[base][$0].wall })?.median
        }
        return jobs.indices.map { j in
            let runs = samples[j]
            return JobSummary(name: jobs[j].name, wall: SampleSummary(runs.filter(\.outcome.succeeded).map(\.wall)),
                              ratioToReference: ratio(j, to: reference), ratioToCopy: ratio(j, to: copy),
                              peakRSSKiB: runs.map(\.peakRSSKiB).max() ?? 0, runs: runs.count,
                              failures: runs.map(\.outcome).filter { !$0.succeeded })
        }
    }

    /// The table: a header saying which column is which, then one row per job.
    public static func table(_ rows: [JobSummary], inputBytes: Int, referenceName: String, copyName: String) -> [String] {
        var lines = [
            "wall: median (min-max) over the successful runs; x ref: median of the per-round ratios to '\(referenceName)' (the reference:",
            "a durable copy, as dsconvert's outputs are fsynced); x cp: the same against '\(copyName)' (page cache only, not durable);",
            "GB/s: input tensor bytes / median wall; peak RSS: max over runs. Failed runs are out of every median.",
            "job                                  wall (s)   (min-max)      x ref    x cp    GB/s  peak RSS (MiB)  status",
        ]
        func number(_ value: Double?, _ format: String, width: Int) -> String {
            value.map { String(format: format, $0) } ?? String(repeating: " ", count: width - 1) + "-"
        }
        for row in rows {
            let range = row.wall.map { String(format: "(%.2f-%.2f)", $0.min, $0.max) } ?? "-"
            let gbps = row.wall.map { Double(inputBytes) / $0.median / 1e9 }
            lines.append(row.name.padding(toLength: 36, withPad: " ", startingAt: 0) + number(row.wall?.median, "%9.2f", width: 9)
                         + "   " + range.padding(toLength: 13, withPad: " ", startingAt: 0) + number(row.ratioToReference, "%7.2f", width: 7)
                         + number(row.ratioToCopy, "%8.2f", width: 8) + number(gbps, "%8.2f", width: 8)
                         + String(format: "%16.0f", Double(row.peakRSSKiB) / 1024) + "  " + row.status)
        }
        return lines
    }
}
