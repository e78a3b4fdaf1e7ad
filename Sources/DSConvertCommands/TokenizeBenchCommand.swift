import Benchmark
import CLI
import Foundation
import Numerics
import SafeTensors
import Tokenizer

/// `dsconvert-bench tokenize`: encode throughput of dsconvert (one thread and all) beside the
/// `tokenizers` library's on the same text, in the same run, with the ids checked equal.
public enum TokenizeBenchCommand: Command {
    public static let spec = CommandSpec(
        name: "tokenize",
        abstract: "Time dsconvert's tokenizer (1 thread and all) against the tokenizers library on one text.",
        discussion: """
        The text is --text, or a deterministic mixed-script text of --size-mb MB (prose in nine
        scripts, code, numbers, emoji, whitespace runs) written to a temporary file. Each encode
        figure is the median of --runs encodes in MB of UTF-8 per second; loading is timed apart:
        the process's first load (with the Unicode tables built once per process) and the median of
        --runs more, beside the peer's first Tokenizer.from_file and the median of its others. The
        peer is Tests/bench/tokenizers_peer.py, run with RAYON_NUM_THREADS=1 and unset (skipped
        when python3 or tokenizers is missing); every run's ids must equal the one-thread dsconvert
        ids.
        """,
        options: [
            OptionSpec("tokenizer", path: "PATH", help: "tokenizer.json, or a model directory holding one."),
            OptionSpec("text", path: "FILE", help: "Text to encode (default: a generated mixed text)."),
            OptionSpec("size-mb", value: "N", help: "Size of the generated text (default 6)."),
            OptionSpec("runs", value: "N", help: "Timed encodes per row (default 3)."),
            OptionSpec("peer", path: "SCRIPT", help: "The peer script (default Tests/bench/tokenizers_peer.py)."),
        ]
    )

    public static func run(_ arguments: ParsedArguments, terminal: Terminal) throws -> Int32 {
        let firstLoad = DispatchTime.now().uptimeNanoseconds
        let tokenizer = try TextTokens.loadTokenizer(try arguments.required("tokenizer"), terminal: terminal)
        var loads = [Double(DispatchTime.now().uptimeNanoseconds - firstLoad) / 1e9]
        let runs = try arguments.integer("runs", default: 3, in: 1...50)
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("dsconvert-bench-tokenize-\(getpid())")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: scratch) }
        let textPath: String
        if let given = try arguments.path("text") { textPath = given } else {
            textPath = scratch.appendingPathComponent("mixed.txt").path
            let megabytes = try arguments.integer("size-mb", default: 6, in: 1...1024)
            try Data(MixedText.generate(byteCount: megabytes * 1_000_000)).write(to: URL(fileURLWithPath: textPath))
        }
        let bytes = [UInt8](try FilePath.readRegularFile(textPath))
        let megabytes = Double(bytes.count) / 1e6
        terminal.out(String(format: "text: %@, %.2f MB; tokenizer: %@; %d cores; median of %d runs", textPath, megabytes, tokenizer.file, ProcessInfo.processInfo.activeProcessorCount, runs))
        for _ in 0..<runs {
            let start = DispatchTime.now().uptimeNanoseconds
            _ = try Tokenizer.load(path: tokenizer.file)
            loads.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
        }
        reportLoad(terminal, "dsconvert, load", loads)
        var reference: [Int] = []
        for threads in [1, Parallel.threads] {
            var seconds: [Double] = []
            for _ in 0..<runs {
                let start = DispatchTime.now().uptimeNanoseconds
                let ids = try tokenizer.encode(utf8: bytes, name: textPath, threads: threads)
                seconds.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
                if reference.isEmpty { reference = ids } else if ids != reference { throw BenchMismatch(what: "dsconvert with \(threads) threads") }
            }
            report(terminal, "dsconvert, \(threads) thread\(threads == 1 ? "" : "s")", megabytes, seconds, reference.count)
        }
        try runPeer(arguments, tokenizer: tokenizer, textPath: textPath, scratch: scratch, runs: runs, megabytes: megabytes, reference: reference, terminal: terminal)
        return ExitCode.success
    }

    private static func runPeer(_ arguments: ParsedArguments, tokenizer: Tokenizer, textPath: String, scratch: URL, runs: Int,
                                megabytes: Double, reference: [Int], terminal: Terminal) throws {
        let peer = arguments.value("peer") ?? "Tests/bench/tokenizers_peer.py"
        guard FileManager.default.fileExists(atPath: peer),
              ChildProcess.run("/usr/bin/env", ["python3", "-c", "import tokenizers"]).outcome.succeeded else {
            terminal.note("tokenizers peer skipped: \(peer) or python3 with tokenizers not found")
            return
        }
        for (label, environment) in [("tokenizers, RAYON_NUM_THREADS=1", ["RAYON_NUM_THREADS=1"]), ("tokenizers, default threads", [])] {
            let out = scratch.appendingPathComponent("peer.json").path
            let run = ChildProcess.run("/usr/bin/env", environment + ["python3", peer, tokenizer.file, textPath, String(runs), out])
            guard run.outcome.succeeded, case let root = try JSONParser.parse(try FilePath.readRegularFile(out)),
                  case let .array(times)? = root["seconds"], case let .array(ids)? = root["ids"] else {
                throw BenchMismatch(what: "\(label): the peer failed (\(run.outcome.label))")
            }
            guard ids.map({ $0.uint64.map(Int.init) ?? -1 }) == reference else { throw BenchMismatch(what: label) }
            if environment.isEmpty, case let .array(loads)? = root["load_seconds"] {
                reportLoad(terminal, "tokenizers, load (from_file)", loads.compactMap(\.doubleValue))
            }
            report(terminal, label, megabytes, times.compactMap(\.doubleValue), ids.count)
        }
    }

    /// The first load of the process (cold: its one-time tables) and the median of the rest.
    private static func reportLoad(_ terminal: Terminal, _ label: String, _ seconds: [Double]) {
        guard let first = seconds.first, let summary = SampleSummary(Array(seconds.dropFirst())) else { return }
        terminal.out(label.padding(toLength: max(34, label.count), withPad: " ", startingAt: 0)
            + String(format: " %7.3f s first, %.3f s after  (%.3f-%.3f)", first, summary.median, summary.min, summary.max))
    }

    private static func report(_ terminal: Terminal, _ label: String, _ megabytes: Double, _ seconds: [Double], _ count: Int) {
        guard let summary = SampleSummary(seconds) else { return }
        let padded = label.padding(toLength: max(34, label.count), withPad: " ", startingAt: 0)
        terminal.out(padded + String(format: " %7.2f MB/s  (%.3f s, %.3f-%.3f; %d ids, identical)", megabytes / summary.median,
                            summary.median, summary.min, summary.max, count))
    }
}

extension JSONValue {
    /// A number as a Double (the peer's timings).
    fileprivate var doubleValue: Double? { if case let .number(n) = self { return Double(n) } else { return nil } }
}

/// The ids of a timed run differ from the one-thread dsconvert ids: the figures would compare
/// different work, so the bench stops.
struct BenchMismatch: LocalizedError {
    let what: String
    var errorDescription: String? { "\(what): ids differ from dsconvert's one-thread ids" }
}
