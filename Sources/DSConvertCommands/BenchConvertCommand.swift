import CLI
import Conversion
import Foundation
import SafeTensors
#if canImport(Glibc)
import Glibc
#endif

/// `dsconvert-bench generate`: a V2-Lite-shaped synthetic checkpoint.
public enum GenerateBenchCommand: Command {
    public static let spec = CommandSpec(
        name: "generate",
        abstract: "Write a DeepSeek-V2-Lite-shaped checkpoint of random bf16 weights (3 layers: the 3.3 GB lite slice; 27: the full 31 GB).",
        options: [
            OptionSpec("layers", value: "K", help: "Decoder layers (default 3: 1 dense + 2 MoE)."),
            OptionSpec("output", value: "DIR", help: "Output directory."),
            OptionSpec("force", help: "Replace an existing output: only a previous dsconvert output (it has dsconvert.json) or an empty directory."),
        ]
    )

    public static func run(_ arguments: ParsedArguments, terminal: Terminal) throws -> Int32 {
        let layers = try arguments.integer("layers", default: 3, in: 1...27)
        let output = URL(fileURLWithPath: try arguments.required("output"))
        let bytes = try SyntheticCheckpoint.write(layers: layers, output: output, force: arguments.flag("force")) { terminal.progress($0) }
        terminal.endProgress()
        terminal.out(String(format: "%@: %d layers, %.2f GB of bf16 weights", output.path, layers, Double(bytes) / 1e9))
        return ExitCode.success
    }
}

/// `dsconvert-bench convert`: every stage beside `cp -r` of the same input, and the torch peer.
public enum ConvertBenchCommand: Command {
    public static let spec = CommandSpec(
        name: "convert",
        abstract: "Time cp -r, each conversion stage and the torch FP8 peer on one checkpoint: wall time, ratio to cp, GB/s, peak RSS.",
        discussion: """
        Each job runs as a child process (median of --runs runs, peak RSS from the kernel's rusage); outputs
        go to --work and are removed after each run. The input stays in the page cache across jobs, so cp
        measures the write path of this disk.
        """,
        options: [
            OptionSpec("input", value: "DIR", help: "Checkpoint to convert (see dsconvert-bench generate)."),
            OptionSpec("work", value: "DIR", help: "Scratch directory for outputs (default: next to the input)."),
            OptionSpec("runs", value: "N", help: "Runs per job (default 3)."),
            OptionSpec("peer", value: "SCRIPT", help: "The torch peer script (default Tests/bench/torch_fp8_peer.py; skipped if torch is missing)."),
            OptionSpec("max-shard-size", value: "SIZE", help: "Passed to every stage (default: theirs, 5GB); e.g. the input's own shard size."),
            OptionSpec("cold", help: "Drop the page cache before every job (needs root) instead of reading the input once before timing."),
        ]
    )

    struct Measurement { var wall: Double; var rssKiB: Int; var status: Int32 }

    /// Runs a program to completion and reports its wall time and peak resident set.
    static func measure(_ path: String, _ arguments: [String]) -> Measurement {
        var pid: pid_t = 0
        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        defer { posix_spawn_file_actions_destroy(&actions) }
        let start = DispatchTime.now().uptimeNanoseconds
        guard posix_spawn(&pid, path, &actions, nil, argv, environ) == 0 else { return Measurement(wall: 0, rssKiB: 0, status: -1) }
        var status: Int32 = 0
        var usage = rusage()
        wait4(pid, &status, 0, &usage)
        let wall = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        return Measurement(wall: wall, rssKiB: Int(usage.ru_maxrss), status: (status >> 8) & 0xFF)
    }

    public static func run(_ arguments: ParsedArguments, terminal: Terminal) throws -> Int32 {
        let input = URL(fileURLWithPath: try arguments.required("input")).standardizedFileURL
        let work = URL(fileURLWithPath: arguments.value("work") ?? input.deletingLastPathComponent().appendingPathComponent("dsconvert-bench-work").path)
        let runs = try arguments.integer("runs", default: 3, in: 1...20)
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        let binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("dsconvert").path
        let bytes = try Checkpoint(directory: input).totalTensorBytes
        let out = work.appendingPathComponent("out").path
        let peer = arguments.value("peer") ?? "Tests/bench/torch_fp8_peer.py"
        let cold = arguments.flag("cold")
        let io = ["--input", input.path, "--output", out] + (arguments.value("max-shard-size").map { ["--max-shard-size", $0] } ?? [])
        var jobs: [(String, String, [String])] = [
            ("cp -r (I/O bound)", "/bin/cp", ["-r", input.path, out]),
            // dsconvert fsyncs every shard (atomic outputs): the durable copy is the like-for-like bound.
            ("cp -r && sync", "/bin/sh", ["-c", "cp -r \"$0\" \"$1\" && sync", input.path, out]),
            ("quantize --fp8", binary, ["quantize", "--fp8"] + io),
            ("absorb (split)", binary, ["absorb"] + io),
            ("shard --devices 8", binary, ["shard", "--devices", "8"] + io),
            ("quantize --kv6", binary, ["quantize", "--kv6"] + io),
            ("convert (all 4, one pass)", binary, ["convert", "--absorb", "--fp8", "--kv6", "--devices", "8"] + io),
        ]
        let python = "/usr/bin/env"
        if FileManager.default.fileExists(atPath: peer), measure(python, ["python3", "-c", "import torch, safetensors"]).status == 0 {
            jobs.append(("torch FP8 peer (CPU)", python, ["python3", peer, input.path, out]))
        } else {
            terminal.note("torch peer skipped: \(peer) or python3 with torch not found")
        }
        // Warm-up: the input is read once before any job, so every job (cp first) finds it in the page
        // cache and none pays the first read from disk for the others.
        if !cold {
            terminal.progress("bench: reading the input once (warm-up)")
            _ = measure("/bin/sh", ["-c", "cat \"$0\"/*.safetensors > /dev/null", input.path])
        }
        // Round-robin: run k of every job before run k+1 of any, so this VM's drifting speed weighs on
        // all jobs alike; each job's ratio to cp is the median of its per-round ratios.
        var samples = [[Measurement]](repeating: [], count: jobs.count)
        for run in 0..<runs {
            for (j, (name, path, args)) in jobs.enumerated() {
                terminal.progress("bench: run \(run + 1)/\(runs): \(name)")
                try? FileManager.default.removeItem(atPath: out)
                sync()
                // Cold: every job reads the input from disk, as a checkpoint larger than RAM is read.
                if cold, measure("/bin/sh", ["-c", "echo 3 > /proc/sys/vm/drop_caches"]).status != 0 {
                    terminal.endProgress()
                    terminal.error("dsconvert-bench convert", "--cold could not drop the page cache (writing /proc/sys/vm/drop_caches needs root)")
                    return ExitCode.failure
                }
                let m = measure(path, args)
                if m.status != 0 { terminal.note("\(name) exited with \(m.status)") }
                samples[j].append(m)
            }
        }
        try? FileManager.default.removeItem(atPath: out)
        func median(_ values: [Double]) -> Double { let v = values.sorted(); return v.count % 2 == 1 ? v[v.count / 2] : (v[v.count / 2 - 1] + v[v.count / 2]) / 2 }
        var results: [(String, Measurement, Double)] = []
        for (j, (name, _, _)) in jobs.enumerated() {
            let ratio = median((0..<runs).map { samples[j][$0].wall / samples[0][$0].wall })
            results.append((name, Measurement(wall: median(samples[j].map(\.wall)), rssKiB: samples[j].map(\.rssKiB).max()!,
                                              status: samples[j].map(\.status).max()!), ratio))
        }
        terminal.endProgress()
        terminal.out(String(format: "input %@: %.2f GB of tensors; %d cores; median of %d runs; %@ page cache%@", input.path, Double(bytes) / 1e9,
                            ProcessInfo.processInfo.activeProcessorCount, runs, cold ? "cold" : "warm",
                            arguments.value("max-shard-size").map { "; --max-shard-size \($0)" } ?? ""))
        terminal.out("job                        wall (s)   x cp    GB/s   peak RSS (MiB)   (wall: median; x cp: median of per-round ratios)")
        for (name, m, ratio) in results {
            terminal.out(String(format: "%@ %8.2f %7.2f %7.2f %12.0f%@", name.padding(toLength: 26, withPad: " ", startingAt: 0), m.wall, ratio,
                                Double(bytes) / m.wall / 1e9, Double(m.rssKiB) / 1024, m.status == 0 ? "" : "  (failed)"))
        }
        return ExitCode.success
    }
}
