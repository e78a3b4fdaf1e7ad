import Benchmark
import CLI
import Conversion
import DeepSeekModel
import Foundation
import SafeTensors
#if canImport(Glibc)
import Glibc
#endif

/// `dsconvert-bench generate`: a V2-Lite-shaped or V3-shaped synthetic checkpoint.
public enum GenerateBenchCommand: Command {
    /// `--shape`, decoded once.
    enum ShapeOption: String, CaseIterable { case v2Lite = "v2-lite", v2, v3 }

    public static let spec = CommandSpec(
        name: "generate",
        abstract: "Write a checkpoint of random weights with a real model's names and shapes: DeepSeek-V2-Lite in bf16 (3 layers: the 3.3 GB lite slice; 27: the full 31 GB), a DeepSeek-V2 slice in bf16 (2 layers, 16 of its 160 experts: 3.9 GB), or a DeepSeek-V3 slice in FP8 as published (3 dense + 2 MoE layers by default: 28.5 GB; 17 GB with one MoE layer, +11.5 GB per MoE layer).",
        options: [
            OptionSpec("shape", value: "v2-lite|v2|v3", help: "Model shape (default v2-lite)."),
            OptionSpec("layers", value: "K", help: "v2-lite: decoder layers (default 3: 1 dense + 2 MoE); v2: (default 2: 1 dense + 1 MoE)."),
            OptionSpec("experts", value: "N", help: "v2: routed experts per MoE layer, a multiple of 8 up to V2's 160 (default 16: 3.9 GB for 2 layers, V2-Lite's size, with V2's query compression, which llama.cpp's loader requires)."),
            OptionSpec("dense-layers", value: "K", help: "v3: dense layers (default 3, as V3)."),
            OptionSpec("moe-layers", value: "K", help: "v3: MoE layers of 256 experts (default 2)."),
            OptionSpec("mtp-layers", value: "K", help: "v3: multi-token-prediction layers after them (default 0; V3 has 1: 15.3 GB)."),
            OptionSpec("output", path: "DIR", help: "Output directory."),
            CheckpointOutputOptions.force,
        ]
    )

    public static func run(_ arguments: ParsedArguments, terminal: Terminal) throws -> Int32 {
        let shape: SyntheticCheckpoint.Shape
        switch try arguments.choice("shape", default: ShapeOption.v2Lite) {
        case .v3:
            shape = .v3(dense: try arguments.integer("dense-layers", default: 3, in: 0...3),
                        moe: try arguments.integer("moe-layers", default: 2, in: 1...58),
                        mtp: try arguments.integer("mtp-layers", default: 0, in: 0...1))
        case .v2Lite:
            shape = .v2Lite(layers: try arguments.integer("layers", default: 3, in: 1...27))
        case .v2:
            let experts = try arguments.integer("experts", default: 16, in: 8...160)
            guard experts % 8 == 0 else { throw UsageError("--experts must be a multiple of 8 (V2's 8 expert groups), got \(experts)") }
            shape = .v2(layers: try arguments.integer("layers", default: 2, in: 1...60), experts: experts)
        }
        let output = URL(fileURLWithPath: try arguments.required("output"))
        let bytes = try SyntheticCheckpoint.write(shape, output: output, force: arguments.flag("force")) { terminal.progress($0) }
        terminal.endProgress()
        terminal.out(String(format: "%@: %@, %.2f GB of weights", output.path, shape.label, Double(bytes) / 1e9))
        return ExitCode.success
    }
}

/// `dsconvert-bench convert`: every stage beside a durable copy of the same input, and the torch peer.
public enum ConvertBenchCommand: Command {
    public static let spec = CommandSpec(
        name: "convert",
        abstract: "Time cp -r (&& sync), each conversion stage and the torch FP8 peer on one checkpoint: wall time, ratio to the durable copy, GB/s, peak RSS.",
        discussion: """
        Each job runs as a child process, --runs times, round-robin with the job order rotated each round; outputs
        go to --work and each run's output is verified (a dsconvert manifest and the files it lists, a copy's
        files and sizes, a checkpoint's headers; the same size as the job's other runs) before it is removed.
        The reference column is `cp -r && sync`: dsconvert fsyncs its outputs (O_DIRECT), so the durable copy
        is the like-for-like bound; `cp -r` alone only fills the page cache. A run that exits non-zero, is
        killed by a signal, cannot be spawned or leaves a wrong output is marked failed, kept out of the
        medians, and makes the command exit 1.
        """,
        options: [
            OptionSpec("input", path: "DIR", help: "Checkpoint to convert (see dsconvert-bench generate)."),
            OptionSpec("work", path: "DIR", help: "Scratch directory for outputs (default: next to the input)."),
            OptionSpec("runs", value: "N", help: "Runs per job (default 3)."),
            OptionSpec("peer", path: "SCRIPT", help: "The torch peer script (default Tests/bench/torch_fp8_peer.py; skipped if torch is missing)."),
            OptionSpec("extra-job", value: "NAME=PROGRAM", repeatable: true,
                       help: "Also time `PROGRAM INPUT OUTPUT` as job NAME; its output must be a readable checkpoint with at least the input's tensors. Repeatable (another peer; the tests use it for a job that is killed or cannot start)."),
            OptionSpec("max-shard-size", value: "SIZE", help: "Passed to every stage (default: theirs, laid out like the input)."),
            OptionSpec("only", value: "TEXT", repeatable: true, help: "Time only the stages whose name contains TEXT (repeatable), beside the two copies."),
            OptionSpec("cold", help: "Drop the page cache before every job (needs root) instead of reading the input once before timing."),
            OptionSpec("tokenizer", path: "DIR", help: "Also time `export --gguf` (tokenizer.json and tokenizer_config.json from DIR)."),
            OptionSpec("gguf-type", value: "TYPE", help: "The export's --type: q4_k_m (default), q6_k or q8_0."),
            OptionSpec("llama-cpp", path: "DIR", help: "With --tokenizer on a bf16 input: also time llama.cpp's own path to the same type (convert_hf_to_gguf.py --outtype bf16, then llama-quantize), llama.cpp built by scripts/llama-cpp.sh."),
            OptionSpec("llama-cpp-peer", path: "SCRIPT", help: "The script of llama.cpp's path (default Tests/bench/llama_cpp_gguf_peer.sh; skipped if missing)."),
        ]
    )

    static let referenceName = "cp -r && sync"
    static let exportName = "export --gguf"
    static let llamaCppName = "llama.cpp gguf: convert + quantize"
    static let copyName = "cp -r"

    public static func run(_ arguments: ParsedArguments, terminal: Terminal) throws -> Int32 {
        let input = URL(fileURLWithPath: try arguments.required("input")).standardizedFileURL
        let work = URL(fileURLWithPath: arguments.value("work") ?? input.deletingLastPathComponent().appendingPathComponent("dsconvert-bench-work").path)
        let runs = try arguments.integer("runs", default: 3, in: 1...20)
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        // Sizes only: the input's mappings are not kept open while the jobs run.
        let (inputBytes, inputTensors) = try { let c = try Checkpoint(directory: input); return (c.totalTensorBytes, c.tensors.count) }()
        // Outputs go into a directory of this run's own, so nothing already in --work is ever replaced
        // or deleted; it is removed when the bench ends.
        let scratch = work.appendingPathComponent(".dsconvert-bench-\(getpid())")
        try systemCall("mkdir", path: scratch.path) { mkdir(scratch.path, 0o755) }
        defer { try? FileManager.default.removeItem(at: scratch) }
        let out = scratch.appendingPathComponent("out")
        let only = arguments.all("only")
        let jobs = try (self.jobs(arguments, input: input, output: out, tensors: inputTensors, terminal: terminal)
                        + ggufJobs(arguments, input: input, output: out, scratch: scratch, terminal: terminal)).enumerated()
            .filter { $0.offset < 2 || only.isEmpty || only.contains(where: $0.element.name.contains) }.map(\.element)
        let cold = arguments.flag("cold")
        // Warm-up: the input is read once before any job, so every job finds it in the page cache and
        // none pays the first read from disk for the others.
        if !cold {
            terminal.progress("bench: reading the input once (warm-up)")
            _ = ChildProcess.run("/bin/sh", ["-c", "cat \"$0\"/*.safetensors > /dev/null", input.path])
        }
        let samples = try rounds(jobs, runs: runs, output: out, cold: cold, terminal: terminal)
        let rows = BenchRounds.summarize(jobs, samples: samples, reference: 0, copy: 1)
        terminal.endProgress()
        terminal.out(String(format: "input %@: %.2f GB of tensors; %d cores; %d runs per job, job order rotated each round; %@ page cache%@",
                            input.path, Double(inputBytes) / 1e9, ProcessInfo.processInfo.activeProcessorCount, runs,
                            cold ? "cold" : "warm", arguments.value("max-shard-size").map { "; --max-shard-size \($0)" } ?? ""))
        for line in BenchRounds.table(rows, inputBytes: inputBytes, referenceName: referenceName, copyName: copyName) {
            terminal.out(line)
        }
        if let ours = rows.first(where: { $0.name.hasPrefix(exportName) })?.wall?.median,
           let peer = rows.first(where: { $0.name == llamaCppName })?.wall?.median {
            terminal.out(String(format: "export --gguf is %.2fx faster than llama.cpp's two passes (medians %.2f s and %.2f s)", peer / ours, ours, peer))
        }
        let failed = rows.filter(\.failed)
        if !failed.isEmpty {
            terminal.error("dsconvert-bench convert", "\(failed.count) of \(rows.count) jobs failed: \(failed.map(\.name).joined(separator: ", "))")
            return ExitCode.failure
        }
        return ExitCode.success
    }

    /// The `dsconvert` binary beside this one (the jobs time the build being benchmarked).
    static var dsconvertBinary: String {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("dsconvert").path
    }

    /// The jobs: the durable copy (the reference) first, the page-cache copy second, then the stages,
    /// the torch peer when torch is installed, and every --extra-job.
    static func jobs(_ arguments: ParsedArguments, input: URL, output: URL, tensors: Int, terminal: Terminal) throws -> [BenchJob] {
        let binary = dsconvertBinary
        let out = output.path
        let io = ["--input", input.path, "--output", out] + (arguments.value("max-shard-size").map { ["--max-shard-size", $0] } ?? [])
        let copy = OutputExpectation.copy(of: OutputCheck.files(under: input))
        // An FP8 checkpoint (V3 as published) has nothing for --fp8 or the bf16 torch peer to do:
        // its jobs are the cast back to bf16, expert placement, absorb and the whole pipeline.
        if try ConfigDocument.load(directory: input).model.quantization != nil {
            return [
                BenchJob(name: referenceName, program: "/bin/sh", arguments: ["-c", "cp -r \"$0\" \"$1\" && sync", input.path, out], expectation: copy),
                BenchJob(name: copyName, program: "/bin/cp", arguments: ["-r", input.path, out], expectation: copy),
                BenchJob(name: "quantize --dequantize", program: binary, arguments: ["quantize", "--dequantize"] + io, expectation: .manifest),
                BenchJob(name: "shard --devices 8", program: binary, arguments: ["shard", "--devices", "8"] + io, expectation: .manifest),
                BenchJob(name: "absorb (split)", program: binary, arguments: ["absorb"] + io, expectation: .manifest),
                BenchJob(name: "convert (absorb, fp8, ep8)", program: binary,
                         arguments: ["convert", "--absorb", "--fp8", "--devices", "8"] + io, expectation: .manifest),
            ]
        }
        var jobs = [
            BenchJob(name: referenceName, program: "/bin/sh", arguments: ["-c", "cp -r \"$0\" \"$1\" && sync", input.path, out], expectation: copy),
            BenchJob(name: copyName, program: "/bin/cp", arguments: ["-r", input.path, out], expectation: copy),
            BenchJob(name: "quantize --fp8", program: binary, arguments: ["quantize", "--fp8"] + io, expectation: .manifest),
            BenchJob(name: "absorb (split)", program: binary, arguments: ["absorb"] + io, expectation: .manifest),
            BenchJob(name: "shard --devices 8", program: binary, arguments: ["shard", "--devices", "8"] + io, expectation: .manifest),
            BenchJob(name: "quantize --kv6", program: binary, arguments: ["quantize", "--kv6"] + io, expectation: .manifest),
            BenchJob(name: "convert (all 4, one pass)", program: binary,
                     arguments: ["convert", "--absorb", "--fp8", "--kv6", "--devices", "8"] + io, expectation: .manifest),
        ]
        let peer = arguments.value("peer") ?? "Tests/bench/torch_fp8_peer.py"
        let python = "/usr/bin/env"
        if FileManager.default.fileExists(atPath: peer), ChildProcess.run(python, ["python3", "-c", "import torch, safetensors"]).outcome.succeeded {
            jobs.append(BenchJob(name: "torch FP8 peer (CPU)", program: python, arguments: ["python3", peer, input.path, out],
                                 expectation: .checkpoint(minimumTensors: tensors)))
        } else {
            terminal.note("torch peer skipped: \(peer) or python3 with torch not found")
        }
        for extra in arguments.all("extra-job") {
            guard let equals = extra.firstIndex(of: "="), equals != extra.startIndex, extra.index(after: equals) != extra.endIndex else {
                throw UsageError("--extra-job takes NAME=PROGRAM, got '\(extra)'")
            }
            jobs.append(BenchJob(name: String(extra[..<equals]), program: String(extra[extra.index(after: equals)...]),
                                 arguments: [input.path, out], expectation: .checkpoint(minimumTensors: tensors)))
        }
        return jobs
    }

    /// With --tokenizer: `export --gguf`; with --llama-cpp too, on a bf16 input, llama.cpp's two passes to the same
    /// type, reading a directory of links to the input's files beside copies of the tokenizer's (its converter reads
    /// the vocabulary from the checkpoint directory).
    static func ggufJobs(_ arguments: ParsedArguments, input: URL, output: URL, scratch: URL, terminal: Terminal) throws -> [BenchJob] {
        guard let tokenizer = arguments.value("tokenizer") else { return [] }
        // The types llama-quantize writes (the peer's second pass), named as llama-quantize names them.
        let quantized: [GGUFFileType] = [.q4_k_m, .q6_k, .q8_0]
        let type = try arguments.choice("gguf-type", default: GGUFFileType.q4_k_m, among: quantized)
        var jobs = [BenchJob(name: "\(exportName) \(type.rawValue)", program: dsconvertBinary,
                             arguments: ["export", "--gguf", "--type", type.rawValue, "--tokenizer", tokenizer, "--input", input.path, "--output", output.path],
                             expectation: .manifest)]
        guard let llama = arguments.value("llama-cpp") else { return jobs }
        let peer = arguments.value("llama-cpp-peer") ?? "Tests/bench/llama_cpp_gguf_peer.sh"
        guard FileManager.default.fileExists(atPath: peer) else {
            terminal.note("llama.cpp peer skipped: \(peer) not found (run from the repository, or give --llama-cpp-peer)")
            return jobs
        }
        let config = try ConfigDocument.load(directory: input).model
        guard config.quantization == nil else {
            terminal.note("llama.cpp peer skipped: the input is FP8 (its converter's path for FP8 is a GPU cast first)")
            return jobs
        }
        let withTokenizer = scratch.appendingPathComponent("with-tokenizer")
        try FileManager.default.createDirectory(at: withTokenizer, withIntermediateDirectories: false)
        for name in try FileManager.default.contentsOfDirectory(atPath: input.path) where !name.hasPrefix(".") && !name.hasPrefix("tokenizer") {
            try FileManager.default.createSymbolicLink(at: withTokenizer.appendingPathComponent(name), withDestinationURL: input.appendingPathComponent(name))
        }
        for name in ["tokenizer.json", "tokenizer_config.json"] {
            let source = URL(fileURLWithPath: tokenizer).appendingPathComponent(name)
            if FileManager.default.fileExists(atPath: source.path) {
                try FileManager.default.copyItem(at: source, to: withTokenizer.appendingPathComponent(name))
            }
        }
        let pre = config.architecture == .deepseekV3 ? "deepseek-v3" : "deepseek-llm"
        jobs.append(BenchJob(name: llamaCppName, program: "/bin/sh",
                             arguments: [peer, llama, withTokenizer.path, output.path, type.fileLabel, pre],
                             expectation: .gguf))
        return jobs
    }

    /// Runs every job `runs` times, round-robin (run k of every job before run k+1 of any) so this VM's
    /// drifting speed weighs on all jobs alike; `samples[job][round]`. Throws `PageCacheNotDropped` when
    /// --cold cannot drop the cache.
    static func rounds(_ jobs: [BenchJob], runs: Int, output: URL, cold: Bool, terminal: Terminal) throws -> [[JobRun]] {
        var samples = [[JobRun]](repeating: [], count: jobs.count)
        var sizes = [OutputSize?](repeating: nil, count: jobs.count)
        for round in 0..<runs {
            var results = [JobRun?](repeating: nil, count: jobs.count)
            for j in BenchRounds.order(round: round, jobs: jobs.count) {
                terminal.progress("bench: run \(round + 1)/\(runs): \(jobs[j].name)")
                try? FileManager.default.removeItem(at: output)
                sync()
                // Cold: every job reads the input from disk, as a checkpoint larger than RAM is read.
                if cold { try ChildProcess.dropPageCache() }
                let (run, size) = runOnce(jobs[j], output: output, earlier: sizes[j])
                sizes[j] = sizes[j] ?? size
                if !run.outcome.succeeded { terminal.note("bench: \(jobs[j].name), run \(round + 1): \(run.outcome.label)") }
                results[j] = run
            }
            for j in jobs.indices { samples[j].append(results[j]!) }
        }
        try? FileManager.default.removeItem(at: output)
        return samples
    }

    /// One timed run, its output verified before anyone deletes it: a job that exits 0 having written
    /// nothing (or something else than its other runs) is a failed run, not a fast one.
    static func runOnce(_ job: BenchJob, output: URL, earlier: OutputSize?) -> (JobRun, OutputSize?) {
        var run = ChildProcess.run(job.program, job.arguments)
        guard run.outcome.succeeded else { return (run, nil) }
        do throws(OutputCheckError) {
            let size = try OutputCheck.verify(output, expecting: job.expectation)
            if let earlier, earlier != size { throw .differsFromEarlierRun(size, earlier: earlier) }
            return (run, size)
        } catch {
            run.outcome = .badOutput(error.description)
            return (run, nil)
        }
    }
}
