import Benchmark
import CLI
import DeepSeekModel
import Foundation
import Numerics
import ReferenceModel
import SafeTensors

/// `dsconvert-bench validate`: `dsconvert validate` of two checkpoints timed as a user runs it, beside
/// the time it takes only to read their weights, so the overlap of reading and computing shows.
public enum ValidateBenchCommand: Command {
    public static let spec = CommandSpec(
        name: "validate",
        abstract: "Time `dsconvert validate` of two checkpoints (wall, peak RSS) beside a plain read of their weights: read time, compute time, overlap, GB/s, GFLOP/s.",
        discussion: """
        Tokens: one deterministic sequence of --tokens ids. Share of sgemm: against plain cblas_sgemm
        [tokens, hidden] x [hidden, hidden] in the same run (median of 3). Read time R: `cat` of every safetensors file of
        both checkpoints to /dev/null (after dropping the page cache with --cold). Compute time C: the
        forward passes' time outside weight reading, from validate's own timing (validate --json). Wall
        W: the validate child, after dropping the page cache again with --cold. Overlap = (R + C - W) /
        min(R, C): 1 when the shorter one is hidden entirely behind the longer. GFLOP/s: both forward
        passes' FLOPs as executed over C. The reference's architecture gives the FLOP count. Page
        faults that waited for the disk: the child's, less those of validate's reader thread (which
        reads by mapping pages; validate --json's timing.prefetch_disk_faults), given apart.
        """,
        options: [
            OptionSpec("reference", path: "DIR", help: "Reference checkpoint."),
            OptionSpec("candidate", path: "DIR", help: "Candidate checkpoint (a shard output too)."),
            OptionSpec("tokens", value: "N", help: "Tokens in the one sequence (default 512)."),
            OptionSpec("cold", help: "Drop the page cache before the read and before validate (root only)."),
        ]
    )

    public static func run(_ arguments: ParsedArguments, terminal: Terminal) throws -> Int32 {
        let reference = URL(fileURLWithPath: try arguments.required("reference")), candidate = URL(fileURLWithPath: try arguments.required("candidate"))
        let count = try arguments.integer("tokens", default: 512, in: 2...8192)
        let cold = arguments.flag("cold")
        let config = try ConfigDocument.load(directory: reference).model
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("dsconvert-bench-validate-\(getpid())")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(at: scratch) }
        let tokens = TokenFile.deterministicSample(vocabSize: config.vocabSize, batch: 1, length: count)
        let tokensURL = scratch.appendingPathComponent("tokens.json"), report = scratch.appendingPathComponent("report.json")
        try JSONSerialization.data(withJSONObject: ["tokens": tokens]).write(to: tokensURL)

        // Every safetensors file of both, a shard output's device directories included.
        let listings = [reference, candidate].map { directory in
            (directory, OutputCheck.files(under: directory).filter { $0.key.hasSuffix(".safetensors") })
        }
        let files = listings.flatMap { directory, listing in listing.keys.sorted().map { directory.appendingPathComponent($0) } }
        let bytes = listings.reduce(0) { $0 + $1.1.values.reduce(0, +) }
        func dropCaches() throws {
            if cold { try ChildProcess.dropPageCache() }
        }
        try dropCaches()
        terminal.progress("bench: reading both checkpoints")
        let read = ChildProcess.run("/bin/sh", ["-c", "cat \"$@\" > /dev/null", "sh"] + files.map(\.path))
        try dropCaches()
        terminal.progress("bench: validate")
        let binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("dsconvert").path
        let run = ChildProcess.run(binary, ["validate", "--reference", reference.path, "--candidate", candidate.path, "--tokens", tokensURL.path,
                                            "--json", report.path, "--max-kl-mean", "none", "--max-kl-max", "none", "--min-top1", "none",
                                            "--min-routing", "none", "--max-ppl-ratio", "none"])
        terminal.endProgress()
        guard read.outcome.succeeded, run.outcome.succeeded,
              let json = try? JSONSerialization.jsonObject(with: Data(contentsOf: report)) as? [String: Any],
              let timing = json["timing"] as? [String: Any], let compute = timing["compute_seconds"] as? Double,
              let weightSeconds = timing["weight_seconds"] as? Double, let prefetched = timing["prefetched_bytes"] as? Int,
              let readerFaults = timing["prefetch_disk_faults"] as? Int else {
            terminal.error("dsconvert-bench validate", "read \(read.outcome.label), validate \(run.outcome.label)")
            return ExitCode.failure
        }
        printFigures(Figures(config: config, tokens: count, bytes: bytes, read: read, run: run, compute: compute, weightSeconds: weightSeconds,
                       prefetched: prefetched, readerFaults: readerFaults, reference: reference, candidate: candidate, cold: cold, mtp: json["mtp"] != nil), terminal: terminal)
        return ExitCode.success
    }

    /// What one benchmark run measured.
    private struct Figures {
        let config: DeepSeekConfig
        let tokens: Int
        let bytes: Int
        let read: JobRun
        let run: JobRun
        let compute: Double
        let weightSeconds: Double
        let prefetched: Int
        /// Page faults of validate's reader thread that waited for the disk (its reads map pages).
        let readerFaults: Int
        let reference: URL
        let candidate: URL
        let cold: Bool
        /// validate ran the MTP layers too (its report has an mtp section).
        let mtp: Bool
    }

    /// Prints the figures beside plain sgemm at the model's width, timed here after the child.
    private static func printFigures(_ f: Figures, terminal: Terminal) {
        let (config, count, bytes, read, run, compute, weightSeconds, prefetched, reference, candidate, cold) =
            (f.config, f.tokens, f.bytes, f.read, f.run, f.compute, f.weightSeconds, f.prefetched, f.reference, f.candidate, f.cold)
        let routed = count * (config.numExpertsPerTok ?? 0) * config.moeLayerCount
        let flops = 2 * (ForwardCost.flops(config: config, batch: 1, seq: count, routedTokenExperts: routed)
                         + (f.mtp ? ForwardCost.mtpFlops(config: config, batch: 1, seq: count) : 0))
        let r = read.wall, w = run.wall
        // Plain sgemm of the model's width at this many tokens, in this process after the child: the
        // share of it the forward passes reach. Timed for about a second (the median): three runs of
        // V2-Lite's 15 ms product right after the child had measured 190 GFLOP/s against 290.
        let repeats = ForwardBenchmark.sgemmRepeats(m: count, n: config.hiddenSize, k: config.hiddenSize, lasting: 1, within: 3...100)
        let runs = ForwardBenchmark.sgemm(m: count, n: config.hiddenSize, k: config.hiddenSize, repeats: repeats)
        let sgemm = SampleSummary(runs)!.median
        let sgemmRate = 2 * Double(count * config.hiddenSize * config.hiddenSize) / sgemm / 1e9
        terminal.out(String(format: "reference %@, candidate %@: %.2f GB of safetensors; %d tokens; %@ page cache; %d cores",
                            reference.path, candidate.path, Double(bytes) / 1e9, count, cold ? "cold" : "warm", ProcessInfo.processInfo.activeProcessorCount))
        terminal.out("blas: \(BLASCore.selection.description)")
        terminal.out("kernels: \(FP8BlockQuantizer.kernelDescription)")
        terminal.out(String(format: "read (cat)        %8.2f s   %6.2f GB/s", r, Double(bytes) / 1e9 / r))
        terminal.out(String(format: "validate wall     %8.2f s   %6.2f GB/s   peak RSS %d MiB", w, Double(bytes) / 1e9 / w, run.peakRSSKiB / 1024))
        terminal.out(String(format: "  compute         %8.2f s   %6.1f GFLOP/s (both forward passes%@), %.2f of cblas_sgemm's %.1f GFLOP/s at %dx%dx%d",
                            compute, flops / compute / 1e9, f.mtp ? " and MTP layers" : "", flops / compute / 1e9 / sgemmRate, sgemmRate, count, config.hiddenSize, config.hiddenSize))
        terminal.out(String(format: "  weight reading  %8.2f s   (page faults, widening, FP8 dequantization; prefetched %.2f GB alongside)", weightSeconds, Double(prefetched) / 1e9))
        terminal.out(String(format: "  CPU             %8.2f s   of all threads (%.2f cores busy); %d page faults of the passes waited for the disk (and %d of the reader's reads)",
                            run.cpuSeconds, run.cpuSeconds / w, max(0, run.majorFaults - f.readerFaults), f.readerFaults))
        // Widening and dequantizing weights is CPU work on the same cores as the products: what
        // reading can hide behind is both together.
        let busy = compute + weightSeconds
        terminal.out(String(format: "wall / max(read, compute)  %.2f   overlap %.2f", w / max(r, compute), (r + compute - w) / min(r, compute)))
        terminal.out(String(format: "wall / max(read, compute + weight handling)  %.2f", w / max(r, busy)))
    }
}
