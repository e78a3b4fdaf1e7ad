import Benchmark
import CLI
import Foundation
import Numerics
import ReferenceModel
import Validation

/// `dsconvert-bench forward`: the reference forward pass's GFLOP/s beside plain sgemm's.
public enum ForwardBenchCommand: Command {
    public static let spec = CommandSpec(
        name: "forward",
        abstract: "Time the reference forward pass on a V2-Lite- or V3-width synthetic model and compare with cblas_sgemm.",
        discussion: """
        The model has DeepSeek-V2-Lite's widths (hidden 2048, 16 heads, kv_lora 512, 64 experts of 1408,
        top-6, 2 shared) with one dense and one MoE layer and a 2048-token vocabulary; --shape v3 has
        DeepSeek-V3's (hidden 7168, 128 heads, 256 experts of 2048, top-8). Weights are generated in
        memory in the dtype the published checkpoints store (bf16 for V2-Lite, FP8 with 128x128 block
        scales for V3) and used as validate uses a checkpoint's: widened to fp32 on every use, except the
        routed experts', which are multiplied as stored; no I/O. Reports the median, min and max of
        --repeats timed runs (GFLOP/s at the median time), the part of it spent widening, and the rate of
        the rest, then each part of the pass (attention, dense MLP, router, routed and shared experts, head)
        with its own rate and share of sgemm's, and how many rows each routed expert multiplied. sgemm is
        timed in rounds before, between and after the forward passes, so both see the same machine. After
        the ratio: the pass's cblas_sgemm products alone (fp32 weights, nothing else: what OpenBLAS itself
        reaches on these shapes, against sgemm rounds of their own), and a line that compares each pass
        with the rounds around it and says whether sgemm itself stayed within \(Int(BracketedRatio.steadySpread * 100))% over the
        run (steady) or the machine was busy. FLOPs are counted as executed (2 per multiply-add).
        """,
        options: [
            OptionSpec("batch", value: "N", help: "Sequences (default 1)."),
            OptionSpec("seq", value: "N", help: "Tokens per sequence (default 512)."),
            OptionSpec("repeats", value: "N", help: "Timed runs (default 3)."),
            OptionSpec("shape", value: "v2-lite|v3", help: "Model widths (default v2-lite; v3: DeepSeek-V3's, 256 experts of 2048, top-8, one dense and one MoE layer)."),
        ]
    )

    public static func run(_ arguments: ParsedArguments, terminal: Terminal) throws -> Int32 {
        let batch = try arguments.integer("batch", default: 1, in: 1...64)
        let seq = try arguments.integer("seq", default: 512, in: 1...8192)
        let repeats = try arguments.integer("repeats", default: 3, in: 1...100)
        terminal.progress("benchmark: forward on \(batch)x\(seq) tokens")
        let shape = try arguments.choice("shape", default: ForwardBenchmark.Shape.v2Lite)
        let r = try ForwardBenchmark.run(batch: batch, seq: seq, repeats: repeats, shape: shape)
        terminal.endProgress()
        terminal.out("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores, OpenBLAS threads \(r.threads); times: median (min-max)")
        terminal.out("blas: \(r.blas)")
        terminal.out("kernels: \(FP8BlockQuantizer.kernelDescription)")
        let forward = SampleSummary(r.forwardSeconds)!, sgemm = SampleSummary(r.sgemmSeconds)!
        terminal.out(String(format: "forward pass  %5d tokens  %8.3f s (%.3f-%.3f, %d runs)  %7.1f GFLOP/s", r.tokens, forward.median, forward.min,
                            forward.max, forward.count, r.forwardFLOPs / forward.median / 1e9))
        terminal.out(String(format: "cblas_sgemm   %dx%dx%d  %8.4f s (%.4f-%.4f, %d runs)  %7.1f GFLOP/s", r.sgemmShape.m, r.sgemmShape.n, r.sgemmShape.k,
                            sgemm.median, sgemm.min, sgemm.max, sgemm.count, r.sgemmFLOPs / sgemm.median / 1e9))
        let expert = SampleSummary(r.expertSgemmSeconds)!
        let expertFLOPs = 2 * Double(r.expertShape.m * r.expertShape.n * r.expertShape.k)
        terminal.out(String(format: "cblas_sgemm   %dx%dx%d  %8.4f s (%.4f-%.4f, %d runs)  %7.1f GFLOP/s  a routed expert's product, weight from memory",
                            r.expertShape.m, r.expertShape.n, r.expertShape.k, expert.median, expert.min, expert.max, expert.count, expertFLOPs / expert.median / 1e9))
        let stored = SampleSummary(r.expertStoredSeconds)!
        terminal.out(String(format: "stored        %dx%dx%d  %8.4f s (%.4f-%.4f, %d runs)  %7.1f GFLOP/s  the same product as stored, two at once (one per core)",
                            r.expertShape.m, r.expertShape.n, r.expertShape.k, stored.median, stored.min, stored.max, stored.count, expertFLOPs / stored.median / 1e9))
        let rows = r.expertRows.sorted(), few = rows.filter { $0 < 8 }
        terminal.out(String(format: "routing       %d experts x MoE layers: rows per expert min %d, median %d, max %d; %d under 8 rows (%.0f%% of the rows)",
                            rows.count, rows.first ?? 0, rows.isEmpty ? 0 : rows[rows.count / 2], rows.last ?? 0, few.count,
                            100 * Double(few.reduce(0, +)) / Double(max(1, rows.reduce(0, +)))))
        let widening = SampleSummary(r.wideningSeconds)!
        // Without widening: the forward pass's time less its widening (never below a microsecond).
        let computeRate = r.forwardFLOPs / max(forward.median - widening.median, 1e-6)
        terminal.out(String(format: "  widening    %5d tokens  %8.3f s (%.3f-%.3f)  weights to fp32; the rest at %.1f GFLOP/s", r.tokens, widening.median,
                            widening.min, widening.max, computeRate / 1e9))
        let sgemmRate = r.sgemmFLOPs / sgemm.median
        for part in ReferenceForward.Phase.allCases {
            guard let seconds = SampleSummary(r.phaseSeconds.map { $0[part] ?? 0 }), seconds.median > 0 else { continue }
            let flops = r.phaseFLOPs[part] ?? 0
            let label = part.rawValue.padding(toLength: 15, withPad: " ", startingAt: 0)
            let line = String(format: "  %@ %8.3f s (%.3f-%.3f)", label, seconds.median, seconds.min, seconds.max)
            // The embedding is a row lookup: no FLOPs, no rate.
            terminal.out(flops > 0 ? line + String(format: "  %7.1f GFLOP/s  %.2f of sgemm", flops / seconds.median / 1e9, flops / seconds.median / sgemmRate) : line)
        }
        terminal.out(String(format: "ratio         %.2f of sgemm (at the medians); without widening %.2f",
                            (r.forwardFLOPs / forward.median) / (r.sgemmFLOPs / sgemm.median), computeRate / (r.sgemmFLOPs / sgemm.median)))
        let products = BracketedRatio(runSeconds: r.productsSeconds, work: r.productsFLOPs, rounds: r.productsSgemmRounds, referenceWork: r.sgemmFLOPs)
        if let each = SampleSummary(products.ratios), let seconds = SampleSummary(r.productsSeconds) {
            terminal.out(String(format: "products      %8.3f s  %7.1f GFLOP/s  %.2f of sgemm (%.2f-%.2f, %d runs): the pass's sgemm products alone, fp32 weights, no widening; sgemm's rounds around them spread %.0f%% (%@)",
                                seconds.median, r.productsFLOPs / seconds.median / 1e9, each.median, each.min, each.max, each.count, 100 * products.spread,
                                products.steady ? "steady" : "busy"))
        }
        let bracketed = BracketedRatio(runSeconds: r.forwardSeconds, work: r.forwardFLOPs, rounds: r.sgemmRounds, referenceWork: r.sgemmFLOPs)
        if let each = SampleSummary(bracketed.ratios), let low = bracketed.roundRates.min(), let high = bracketed.roundRates.max() {
            terminal.out(String(format: "steadiness    sgemm's rounds %.1f-%.1f GFLOP/s (spread %.0f%%: %@); each pass against the rounds around it: %.2f (%.2f-%.2f)",
                                low / 1e9, high / 1e9, 100 * bracketed.spread,
                                bracketed.steady ? "steady" : "a busy machine, not comparable with a quiet run", each.median, each.min, each.max))
        }
        return ExitCode.success
    }
}
