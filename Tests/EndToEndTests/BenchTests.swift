import Foundation
import XCTest

/// `dsconvert-bench convert` on the trained fixture, with jobs that fail the ways a benchmark must not
/// hide: killed by a signal (as the OOM killer does), impossible to spawn, exiting 0 having written nothing.
final class BenchConvertTests: XCTestCase {
    var dir: URL!
    override func setUpWithError() throws { dir = try makeTemporaryDirectory() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    private func script(_ name: String, _ body: String) throws -> String {
        let url = dir.appendingPathComponent(name)
        try Data("#!/bin/sh\n\(body)\n".utf8).write(to: url)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: url.path)
        return url.path
    }

    private func bench(_ extra: [String], runs: Int = 2) throws -> RunResult {
        // --peer names no file, so the torch peer is skipped: the test needs no Python.
        try runTool("dsconvert-bench", ["convert", "--input", fixtures.appendingPathComponent("trained").path,
                                        "--work", dir.appendingPathComponent("work").path, "--runs", "\(runs)",
                                        "--peer", dir.appendingPathComponent("no-peer.py").path] + extra)
    }

    private func row(_ result: RunResult, _ job: String) -> String? {
        result.stdout.split(separator: "\n").map(String.init).first { $0.hasPrefix(job + "  ") }
    }

    private let builtIn = ["cp -r && sync", "cp -r", "quantize --fp8", "absorb (split)", "shard --devices 8", "quantize --kv6", "convert (all 4, one pass)"]

    func testKilledUnspawnableAndIdleJobsAreFailuresNotWins() throws {
        let killer = try script("kill-self.sh", "kill -KILL $$")
        let r = try bench(["--extra-job", "self-killer=\(killer)", "--extra-job", "unspawnable=\(dir.appendingPathComponent("no-such-program").path)",
                           "--extra-job", "idle=/bin/true"])
        XCTAssertEqual(r.status, 1, "any failed job fails the bench: \(r.stdout)")
        XCTAssertEqual(row(r, "self-killer")?.hasSuffix("  failed (signal 9)"), true, r.stdout)
        XCTAssertEqual(row(r, "unspawnable")?.hasSuffix("  failed (spawn: No such file or directory)"), true, r.stdout)
        XCTAssertEqual(row(r, "idle")?.hasSuffix("  failed (output: no output directory)"), true, r.stdout)
        // No figure for a job with no successful run: its wall column is "-", not a short time.
        XCTAssertEqual(row(r, "self-killer")?.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first, "-")
        for job in builtIn { XCTAssertEqual(row(r, job)?.hasSuffix("  ok"), true, "\(job): \(r.stdout)") }
        XCTAssertTrue(r.stderr.contains("3 of 10 jobs failed: self-killer, unspawnable, idle"), r.stderr)
        XCTAssertTrue(r.stderr.contains("self-killer, run 2: failed (signal 9)"), r.stderr)
    }

    func testGoodPeerPassesAndTheHeaderNamesTheReference() throws {
        let copier = try script("copy-peer.sh", #"cp -r "$1" "$2""#)
        let r = try bench(["--extra-job", "copy peer=\(copier)"], runs: 1)
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertEqual(row(r, "copy peer")?.hasSuffix("  ok"), true, r.stdout)
        XCTAssertTrue(r.stdout.contains("x ref: median of the per-round ratios to 'cp -r && sync' (the reference"), r.stdout)
        let reference = row(r, "cp -r && sync")!.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        XCTAssertTrue(reference.contains("1.00"), "the reference's own ratio: \(reference)")
    }

    /// --tokenizer times export --gguf; --llama-cpp adds llama.cpp's path (here a stand-in script given by
    /// --llama-cpp-peer), whose output must be GGUF the checked reader opens: a peer writing junk is a failure.
    func testGGUFExportAndLlamaCppPeer() throws {
        let tokenizer = dir.appendingPathComponent("tokenizer")
        try writeByteTokenizer(into: tokenizer)
        let premade = dir.appendingPathComponent("premade")
        XCTAssertEqual(try runTool("dsconvert", ["export", "--gguf", "--type", "q8_0", "--input", fixtures.appendingPathComponent("trained").path,
                                                 "--tokenizer", tokenizer.path, "--output", premade.path]).status, 0)
        let file = try XCTUnwrap(try FileManager.default.contentsOfDirectory(atPath: premade.path).first { $0.hasSuffix(".gguf") })
        let good = try script("good-peer.sh", #"mkdir "$3" && cp "\#(premade.appendingPathComponent(file).path)" "$3/model-$4.gguf""#)
        let junk = try script("junk-peer.sh", #"mkdir "$3" && echo junk > "$3/model-$4.gguf""#)
        let peerRow = "llama.cpp gguf: convert + quantize"
        for (peer, ok) in [(good, true), (junk, false)] {
            let r = try bench(["--only", "gguf", "--tokenizer", tokenizer.path, "--gguf-type", "q8_0", "--llama-cpp", dir.path, "--llama-cpp-peer", peer], runs: 1)
            XCTAssertEqual(r.status, ok ? 0 : 1, r.stdout + r.stderr)
            XCTAssertEqual(row(r, "export --gguf q8_0")?.hasSuffix("  ok"), true, r.stdout)
            XCTAssertNil(row(r, "quantize --fp8"), "--only gguf keeps the copies and the GGUF jobs")
            if ok {
                XCTAssertEqual(row(r, peerRow)?.hasSuffix("  ok"), true, r.stdout)
                XCTAssertTrue(r.stdout.contains("faster than llama.cpp's two passes"), r.stdout)
            } else {
                XCTAssertEqual(row(r, peerRow)?.contains("failed (output: not a readable GGUF: model-Q8_0.gguf"), true, r.stdout)
            }
        }
    }

    func testExtraJobNeedsNameAndProgram() throws {
        XCTAssertEqual(try bench(["--extra-job", "no-equals-sign"], runs: 1).status, 64)
    }

    /// --gguf-type offers the types llama-quantize writes, not every GGUF type export knows.
    func testGGUFTypeIsOneLlamaQuantizeWrites() throws {
        let r = try bench(["--only", "gguf", "--tokenizer", dir.path, "--gguf-type", "bf16"], runs: 1)
        XCTAssertEqual(r.status, 64, r.stderr)
        XCTAssertTrue(r.stderr.contains("--gguf-type takes one of q4_k_m, q6_k, q8_0, got 'bf16'"), r.stderr)
    }
}

/// `dsconvert-bench forward` reports the median with min and max, not the best of N.
final class BenchForwardTests: XCTestCase {
    func testReportsMedianMinMax() throws {
        let r = try runTool("dsconvert-bench", ["forward", "--seq", "4", "--repeats", "3"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("times: median (min-max)"), r.stdout)
        for prefix in ["forward pass", "cblas_sgemm", "stored"] {
            let line = try XCTUnwrap(r.stdout.split(separator: "\n").first { $0.hasPrefix(prefix) }, r.stdout)
            // "... <median> s (<min>-<max>, N runs) ..."
            let match = try XCTUnwrap(line.firstMatch(of: /([0-9.]+) s \(([0-9.]+)-([0-9.]+), ([0-9]+) runs\)/), String(line))
            let (median, low, high) = (Double(match.1)!, Double(match.2)!, Double(match.3)!)
            XCTAssertTrue(low <= median && median <= high, String(line))
            // sgemm is timed in rounds around the forward passes (four rounds), at least two per round.
            XCTAssertTrue(prefix == "cblas_sgemm" ? Int(match.4)! >= 8 : Int(match.4)! == 3, String(line))
        }
        // The pass's sgemm products alone, against the rounds around each run of them.
        let products = try XCTUnwrap(r.stdout.split(separator: "\n").first { $0.hasPrefix("products") }, r.stdout)
        XCTAssertNotNil(products.firstMatch(of: /GFLOP\/s  [0-9.]+ of sgemm \([0-9.]+-[0-9.]+, 3 runs\): the pass's sgemm products alone, fp32 weights, no widening; sgemm's rounds around them spread [0-9]+% \((steady|busy)\)/), String(products))
        // Each pass against the sgemm rounds around it, and whether sgemm stayed steady.
        let steadiness = try XCTUnwrap(r.stdout.split(separator: "\n").first { $0.hasPrefix("steadiness") }, r.stdout)
        let match = try XCTUnwrap(steadiness.firstMatch(of: /spread [0-9]+%: (steady|a busy machine, not comparable with a quiet run)\); each pass against the rounds around it: ([0-9.]+) \(([0-9.]+)-([0-9.]+)\)/),
                                  String(steadiness))
        XCTAssertTrue(Double(match.3)! <= Double(match.2)! && Double(match.2)! <= Double(match.4)!, String(steadiness))
    }

    /// Where the time went: a line per part of the pass, and how even the router's load was.
    func testReportsPhasesAndRouting() throws {
        let r = try runTool("dsconvert-bench", ["forward", "--seq", "16", "--repeats", "1"])
        XCTAssertEqual(r.status, 0, r.stderr)
        for part in ["attention", "dense MLP", "routed experts", "shared experts", "head"] {
            XCTAssertTrue(r.stdout.contains("  \(part) "), "no line for \(part): \(r.stdout)")
        }
        XCTAssertTrue(r.stdout.contains("routing       64 experts x MoE layers: rows per expert min "), r.stdout)
    }
}
