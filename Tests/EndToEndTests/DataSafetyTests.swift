import Conversion
import Foundation
import SafeTensors
import XCTest

/// Reproductions of the ways a conversion could cost a user a file, each with the behaviour it must have.
final class DataSafetyTests: XCTestCase {
    var dir: URL!
    let fm = FileManager.default
    override func setUpWithError() throws { dir = try makeTemporaryDirectory() }
    override func tearDownWithError() throws { try? fm.removeItem(at: dir) }

    /// `OUT_PARENT/.dsconvert-partial-out-<dead pid>` planted as a link to a victim directory:
    /// `--resume` neither deletes the victim's files nor writes into it, and `out` is a real directory.
    func testResumeNeverFollowsAPlantedLink() throws {
        let victim = dir.appendingPathComponent("victim")
        try fm.createDirectory(at: victim, withIntermediateDirectories: true)
        try Data("precious".utf8).write(to: victim.appendingPathComponent("thesis.tex"))
        let planted = dir.appendingPathComponent(".dsconvert-partial-out-4194399")
        try fm.createSymbolicLink(at: planted, withDestinationURL: victim)
        let out = dir.appendingPathComponent("out")
        let r = try runTool("dsconvert", ["quantize", "--fp8", "--input", fixtures.appendingPathComponent("lite").path, "--output", out.path, "--resume"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("leaving \(planted.path) alone"), r.stderr)
        XCTAssertEqual(try fm.contentsOfDirectory(atPath: victim.path), ["thesis.tex"])
        XCTAssertEqual(try fm.destinationOfSymbolicLink(atPath: planted.path), victim.path)
        XCTAssertEqual(FileEntry.lstat(out.path)?.kind, .directory)
    }

    /// Links planted inside a dead run's work directory, where a shard and a device directory will be
    /// written: `--resume` removes them (saying so) and writes its own files, never through them.
    func testResumeRemovesLinksInsideTheAdoptedWorkDirectory() throws {
        let victim = dir.appendingPathComponent("victim"), elsewhere = dir.appendingPathComponent("elsewhere")
        try Data("precious".utf8).write(to: victim)
        try fm.createDirectory(at: elsewhere, withIntermediateDirectories: true)
        for (command, output, planted, target) in [(["quantize", "--fp8"], "q", "model-00001-of-00003.safetensors", victim),
                                                   (["shard", "--devices", "8"], "s", "device-0", elsewhere)] {
            let work = dir.appendingPathComponent(".dsconvert-partial-\(output)-4194399")
            try fm.createDirectory(at: work, withIntermediateDirectories: true)
            try fm.createSymbolicLink(at: work.appendingPathComponent(planted), withDestinationURL: target)
            let out = dir.appendingPathComponent(output)
            let r = try runTool("dsconvert", command + ["--input", fixtures.appendingPathComponent("lite").path, "--output", out.path, "--resume"])
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertTrue(r.stderr.contains("/\(planted) from the work directory being resumed: a symbolic link"), r.stderr)
            XCTAssertNotEqual(FileEntry.lstat(out.appendingPathComponent(planted).path)?.kind, .symbolicLink, "\(command)")
            XCTAssertEqual(FileEntry.lstat(out.appendingPathComponent(planted).path)?.kind, command[0] == "shard" ? .directory : .regular)
        }
        XCTAssertEqual(try String(contentsOf: victim, encoding: .utf8), "precious")
        XCTAssertEqual(try fm.contentsOfDirectory(atPath: elsewhere.path), [])
    }

    /// A dead run's journal planted as a hard link to a file outside, and directories no run writes
    /// (`leftover` in a single output; `device-9` of 2 and a subdirectory inside `device-1` in a
    /// shard): `--resume` writes a journal of its own instead of through the link, and commits none
    /// of the directories (found by an audit: the victim held the journal, `leftover/junk` was committed).
    func testResumeNeitherWritesThroughAHardLinkNorCommitsStrayDirectories() throws {
        let victim = dir.appendingPathComponent("victim")
        try Data("precious".utf8).write(to: victim)
        let single = dir.appendingPathComponent(".dsconvert-partial-r-4194399")
        try fm.createDirectory(at: single.appendingPathComponent("leftover"), withIntermediateDirectories: true)
        try Data("junk".utf8).write(to: single.appendingPathComponent("leftover/junk"))
        try fm.linkItem(at: victim, to: single.appendingPathComponent(".dsconvert-journal.jsonl"))
        let r = try runTool("dsconvert", ["reshard", "--input", fixtures.appendingPathComponent("lite").path, "--output", dir.appendingPathComponent("r").path, "--resume"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(try String(contentsOf: victim, encoding: .utf8), "precious")
        XCTAssertNil(FileEntry.lstat(dir.appendingPathComponent("r/leftover").path))
        let sharded = dir.appendingPathComponent(".dsconvert-partial-s-4194399")
        for planted in ["device-9", "device-1/sub"] {
            try fm.createDirectory(at: sharded.appendingPathComponent(planted), withIntermediateDirectories: true)
            try Data("junk".utf8).write(to: sharded.appendingPathComponent(planted + "/junk"))
        }
        let s = try runTool("dsconvert", ["shard", "--devices", "2", "--input", fixtures.appendingPathComponent("v2").path, "--output", dir.appendingPathComponent("s").path, "--resume"])
        XCTAssertEqual(s.status, 0, s.stderr)
        XCTAssertEqual(try fm.contentsOfDirectory(atPath: dir.appendingPathComponent("s").path).sorted(), ["device-0", "device-1", "dsconvert.json", "placement.json"])
        XCTAssertNil(FileEntry.lstat(dir.appendingPathComponent("s/device-1/sub").path))
    }

    /// A sharded output whose weight files are links (kept on another disk, or in a cache) loads: the
    /// check against placement.json takes each file's size from the file opened, not from the link.
    func testShardedOutputWithLinkedShardsLoads() throws {
        let v2 = fixtures.appendingPathComponent("v2"), out = dir.appendingPathComponent("sharded"), elsewhere = dir.appendingPathComponent("elsewhere")
        XCTAssertEqual(try runTool("dsconvert", ["shard", "--devices", "2", "--input", v2.path, "--output", out.path]).status, 0)
        try fm.createDirectory(at: elsewhere, withIntermediateDirectories: true)
        let device = out.appendingPathComponent("device-1")
        for name in try fm.contentsOfDirectory(atPath: device.path) where name.hasSuffix(".safetensors") {
            try fm.moveItem(at: device.appendingPathComponent(name), to: elsewhere.appendingPathComponent(name))
            try fm.createSymbolicLink(at: device.appendingPathComponent(name), withDestinationURL: elsewhere.appendingPathComponent(name))
        }
        let f = try runTool("dsconvert", ["forward", "--model", out.path, "--tokens", v2.appendingPathComponent("tokens.json").path,
                                          "--output", dir.appendingPathComponent("f.safetensors").path])
        XCTAssertEqual(f.status, 0, f.stderr)
    }

    /// A resume that cannot start (here: a subdirectory of the dead run it may not clear) fails, and
    /// the run it was asked to continue is put back under its own name, never discarded with it
    /// (found by the review: the adopted directory and its finished shards were removed).
    func testAResumeThatCannotStartKeepsTheRunItAdopted() throws {
        let out = dir.appendingPathComponent("out"), input = fixtures.appendingPathComponent("lite")
        let dead = dir.appendingPathComponent(".dsconvert-partial-out-4194399")
        XCTAssertEqual(try runTool("dsconvert", ["quantize", "--fp8", "--input", input.path, "--output", out.path]).status, 0)
        try fm.moveItem(at: out, to: dead)
        let blocked = dead.appendingPathComponent("blocked")
        try fm.createDirectory(at: blocked, withIntermediateDirectories: true)
        // Another user's directory for root (which may read anything), an unreadable one for anyone else.
        if geteuid() == 0 { XCTAssertEqual(chown(blocked.path, 65534, 65534), 0) } else { XCTAssertEqual(chmod(blocked.path, 0), 0) }
        defer { _ = chmod(blocked.path, 0o755) }
        let shards = try fm.contentsOfDirectory(atPath: dead.path).filter { $0.hasSuffix(".safetensors") }.sorted()
        let r = try runTool("dsconvert", ["quantize", "--fp8", "--input", input.path, "--output", out.path, "--resume"])
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertEqual(try fm.contentsOfDirectory(atPath: dead.path).filter { $0.hasSuffix(".safetensors") }.sorted(), shards)
        XCTAssertFalse(try fm.contentsOfDirectory(atPath: dir.path).contains { $0.hasPrefix(".dsconvert-partial-out-") && !$0.hasSuffix("4194399") })
        XCTAssertNil(FileEntry.lstat(out.path))
    }

    /// A run that fails after some shards are finished: their syncing, hashing and journaling run in
    /// the background, and the failed run used to remove its work directory and exit under them
    /// (a journal re-created in the removed directory in 8 of 20 runs, a crash in a hashing thread
    /// in 2). Now every run exits 1 with the one error, and nothing is left behind.
    func testAFailedRunWaitsForItsBackgroundWritesBeforeCleaningUp() throws {
        let input = try copyFixture("v3-fp8", to: dir)
        let tensor = "model.layers.0.self_attn.o_proj.weight_scale_inv"
        let checkpoint = try Checkpoint(directory: input)
        let shard = checkpoint.shardName(of: tensor)!, file = checkpoint.shard(shard)!
        let offset = file.header.dataStart + file.info(tensor)!.dataOffsets.lowerBound
        var data = try Data(contentsOf: input.appendingPathComponent(shard))
        data.replaceSubrange(offset..<(offset + 4), with: withUnsafeBytes(of: Float.nan.bitPattern.littleEndian) { Array($0) })
        try data.write(to: input.appendingPathComponent(shard))
        let out = dir.appendingPathComponent("out")
        for _ in 0..<10 {
            let r = try runTool("dsconvert", ["quantize", "--dequantize", "--input", input.path, "--output", out.path])
            XCTAssertEqual(r.status, 1, r.stderr)
            XCTAssertTrue(r.stderr.contains("scale '\(tensor)' element 0 is nan"), r.stderr)
            XCTAssertFalse(r.stderr.contains("crashed"), r.stderr)
            XCTAssertEqual(try fm.contentsOfDirectory(atPath: dir.path).sorted(), ["v3-fp8"])
        }
    }

    /// A base model and its fine-tune (same names, sizes and headers): a run interrupted on one and
    /// resumed on the other starts over, says why, and gives exactly the second one's conversion.
    func testResumeOnAChangedInputStartsOver() throws {
        let input = try copyFixture("trained", to: dir)
        let args = ["quantize", "--fp8", "--input", input.path, "--max-shard-size", "100KB"]
        let out = dir.appendingPathComponent("out"), clean = dir.appendingPathComponent("clean")
        XCTAssertEqual(try runTool("dsconvert", args + ["--output", out.path]).status, 0)
        // What a run killed after its last shard leaves: the work directory of a dead PID with its journal.
        let dead = dir.appendingPathComponent(".dsconvert-partial-out-4194399")
        try fm.moveItem(at: out, to: dead)
        try fm.removeItem(at: dead.appendingPathComponent("dsconvert.json"))
        let stage = ConversionManifest.Stage(stage: .quantize, options: ["fp8": "e4m3", "block": "128", "fp8_absorbed": "false"], input: input.path)
        var journal = ConversionOutput.resumeKey(stages: [stage], input: input).journalHeader
        for shard in try fm.contentsOfDirectory(atPath: dead.path).filter({ $0.hasSuffix(".safetensors") }).sorted() {
            let file = try SafeTensorsFile(path: dead.appendingPathComponent(shard).path)
            let header = Data(UnsafeRawBufferPointer(rebasing: file.mapping.bytes[0..<file.header.dataStart])).dropFirst(8)
            journal += "{\"file\":\"\(shard)\",\"header_sha256\":\"\(header.withUnsafeBytes { SHA256.hex($0) })\",\"sha256\":\"\(try SHA256.hex(fileAt: file.path))\"}\n"
        }
        try Data(journal.utf8).write(to: dead.appendingPathComponent(CheckpointWriter.journalName))
        // "Fine-tune" every shard in place: same size and header, other weights.
        usleep(10_000)
        let checkpoint = try Checkpoint(directory: input)
        for name in checkpoint.shardNames {
            let file = checkpoint.shard(name)!
            let weight = file.tensors.first { $0.dtype == .bf16 && $0.shape.count == 2 }!
            let handle = try FileHandle(forWritingTo: input.appendingPathComponent(name))
            try handle.seek(toOffset: UInt64(file.header.dataStart + weight.dataOffsets.lowerBound))
            handle.write(Data([0x00, 0x3F]))   // bf16 0.5
            try handle.close()
        }
        XCTAssertEqual(try runTool("dsconvert", args + ["--output", clean.path]).status, 0)
        let resumed = try runTool("dsconvert", args + ["--output", out.path, "--resume"])
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertTrue(resumed.stderr.contains("resume starts over: input file model-0000"), resumed.stderr)
        XCTAssertTrue(resumed.stderr.contains("changed since the interrupted run"), resumed.stderr)
        XCTAssertEqual(try treeHashes(out), try treeHashes(clean), "nothing of the other input is kept")
    }

    /// A Hugging Face cache snapshot (every file a relative link into `../../blobs`): the output's side
    /// files are regular files with the blobs' bytes, and the shards are read through their links.
    func testHuggingFaceSnapshotInput() throws {
        let model = dir.appendingPathComponent("hub/models--deepseek-ai--lite")
        let blobs = model.appendingPathComponent("blobs"), snapshot = model.appendingPathComponent("snapshots/0123abcd")
        try fm.createDirectory(at: blobs, withIntermediateDirectories: true)
        try fm.createDirectory(at: snapshot, withIntermediateDirectories: true)
        let source = fixtures.appendingPathComponent("lite")
        var names = try fm.contentsOfDirectory(atPath: source.path)
        try Data(#"{"bos_token": "<s>"}"#.utf8).write(to: dir.appendingPathComponent("tokenizer_config.json"))
        names.append("tokenizer_config.json")
        for name in names {
            let blob = blobs.appendingPathComponent("blob-\(name.hashValue.magnitude)")
            let from = name == "tokenizer_config.json" ? dir.appendingPathComponent(name) : source.appendingPathComponent(name)
            try fm.copyItem(at: from, to: blob)
            try fm.createSymbolicLink(atPath: snapshot.appendingPathComponent(name).path, withDestinationPath: "../../blobs/\(blob.lastPathComponent)")
        }
        let out = dir.appendingPathComponent("out")
        let r = try runTool("dsconvert", ["quantize", "--fp8", "--input", snapshot.path, "--output", out.path])
        XCTAssertEqual(r.status, 0, r.stderr)
        for name in ["tokenizer_config.json", "tokens.json"] {
            XCTAssertEqual(FileEntry.lstat(out.appendingPathComponent(name).path)?.kind, .regular, name)
            XCTAssertEqual(try Data(contentsOf: out.appendingPathComponent(name)), try Data(contentsOf: snapshot.appendingPathComponent(name)), name)
        }
    }

    /// `dsconvert … | head -1`: a reader that goes away (of results or of progress) does not kill
    /// the conversion. Progress goes to stderr from the first tensor on, so closing that pipe tests
    /// the middle of the run; closing stdout tests the result line after the commit.
    func testClosedStdoutAndStderrDoNotStopAConversion() throws {
        let out = dir.appendingPathComponent("out")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: toolPath("dsconvert"))
        process.arguments = ["quantize", "--fp8", "--input", fixtures.appendingPathComponent("trained").path, "--output", out.path]
        let pipe = Pipe(), progress = Pipe()
        process.standardOutput = pipe
        process.standardError = progress
        try process.run()
        try pipe.fileHandleForReading.close()
        try progress.fileHandleForReading.close()
        process.waitUntilExit()
        XCTAssertEqual(process.terminationReason, .exit)
        XCTAssertEqual(process.terminationStatus, 0)
        XCTAssertTrue(fm.fileExists(atPath: out.appendingPathComponent("dsconvert.json").path))
        XCTAssertFalse(try leftovers(in: dir).contains { $0.hasPrefix(".dsconvert-") })
    }
}

final class LostResultsTests: XCTestCase {
    /// `inspect --json > report.json` on a full disk: the lost results are an error, not exit 0
    /// (a closed pipe, by contrast, is a reader that wanted no more).
    /// `tokenize` and `tokenize --decode` write their result as it is (it used to trap in FileHandle's write).
    func testResultsToAFullDiskFail() throws {
        let dir = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let text = dir.appendingPathComponent("t.txt"), tokens = dir.appendingPathComponent("t.json")
        try Data("the fox 12".utf8).write(to: text)
        try Data(#"{"tokens": [[1, 2, 3]]}"#.utf8).write(to: tokens)
        let tokenizer = fixtures.appendingPathComponent("tokenizers/v3-style.json").path
        for arguments in [["inspect", fixtures.appendingPathComponent("lite").path],
                          ["tokenize", "--tokenizer", tokenizer, "--text", text.path],
                          ["tokenize", "--tokenizer", tokenizer, "--decode", "--tokens", tokens.path]] {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: toolPath("dsconvert"))
            process.arguments = arguments
            process.standardOutput = FileHandle(forWritingAtPath: "/dev/full")!
            let err = Pipe()
            process.standardError = err
            try process.run()
            let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            process.waitUntilExit()
            XCTAssertEqual(process.terminationStatus, 1, "\(arguments[0]): \(stderr)")
            XCTAssertTrue(stderr.contains("error: standard output: results could not be written (No space left on device)"), stderr)
            XCTAssertEqual(stderr.split(separator: "\n").count, 1, stderr)
        }
    }
}

final class TruncatedInputTests: XCTestCase {
    /// An input shard truncated while a conversion reads it: one line naming the file, exit 1, no
    /// output (not a SIGBUS). The run is stopped once its work directory exists, the shard cut in
    /// half, and the run continued, so the cut lands after the checkpoint was opened and validated.
    func testInputTruncatedDuringARun() throws {
        let dir = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let input = try copyFixture("trained", to: dir)
        let out = dir.appendingPathComponent("out")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: toolPath("dsconvert"))
        process.arguments = ["quantize", "--fp8", "--input", input.path, "--output", out.path, "--max-shard-size", "100KB"]
        process.environment = ProcessInfo.processInfo.environment.merging(["DSCONVERT_THREADS": "1"]) { $1 }
        let err = Pipe()
        process.standardError = err
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        let work = dir.appendingPathComponent(".dsconvert-partial-out-\(process.processIdentifier)")
        while process.isRunning, !FileManager.default.fileExists(atPath: work.path) { usleep(100) }
        kill(process.processIdentifier, SIGSTOP)
        let shards = try FileManager.default.contentsOfDirectory(atPath: input.path).filter { $0.hasSuffix(".safetensors") }.sorted()
        let victim = input.appendingPathComponent(shards.last!)
        let size = try FileManager.default.attributesOfItem(atPath: victim.path)[.size] as! Int
        XCTAssertEqual(truncate(victim.path, off_t(size / 2)), 0)
        kill(process.processIdentifier, SIGCONT)
        let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        XCTAssertEqual(process.terminationReason, .exit, stderr)
        XCTAssertEqual(process.terminationStatus, 1, stderr)
        let errors = stderr.split(separator: "\n").filter { $0.contains("error:") }
        XCTAssertEqual(errors.count, 1, stderr)
        XCTAssertTrue(errors.first?.contains("\(shards.last!): the file changed while it was being read") == true, stderr)
        XCTAssertEqual(try leftovers(in: dir), ["trained"], "no output and no work directory")
    }
}
