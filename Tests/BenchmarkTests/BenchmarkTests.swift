import Foundation
import XCTest
@testable import Benchmark
#if canImport(Glibc)
import Glibc
#endif

final class JobOutcomeTests: XCTestCase {
    /// Wait statuses as the kernel encodes them: exit code in bits 8-15, signal in the low 7 bits, core flag 0x80.
    func testWaitStatusDecoding() {
        XCTAssertEqual(JobOutcome(waitStatus: 0), .exited(0))
        XCTAssertEqual(JobOutcome(waitStatus: 3 << 8), .exited(3))
        XCTAssertEqual(JobOutcome(waitStatus: 255 << 8), .exited(255))
        XCTAssertEqual(JobOutcome(waitStatus: 9), .signalled(9), "SIGKILL: bits 8-15 are 0, which the old decoder read as success")
        XCTAssertEqual(JobOutcome(waitStatus: 0x80 | 11), .signalled(11), "SIGSEGV with a core dump")
        XCTAssertTrue(JobOutcome.exited(0).succeeded)
        for failure in [JobOutcome.exited(1), .signalled(9), .spawnFailed(ENOENT), .badOutput("x")] { XCTAssertFalse(failure.succeeded) }
    }

    func testLabels() {
        XCTAssertEqual(JobOutcome.exited(0).label, "ok")
        XCTAssertEqual(JobOutcome.exited(3).label, "failed (exit 3)")
        XCTAssertEqual(JobOutcome.signalled(9).label, "failed (signal 9)")
        XCTAssertEqual(JobOutcome.spawnFailed(ENOENT).label, "failed (spawn: No such file or directory)")
        XCTAssertEqual(JobOutcome.badOutput("no dsconvert.json").label, "failed (output: no dsconvert.json)")
    }

    /// Real children: one that kills itself, one that exits 3, one that cannot be spawned.
    func testRealChildren() {
        let killed = ChildProcess.run("/bin/sh", ["-c", "kill -KILL $$"])
        XCTAssertEqual(killed.outcome, .signalled(SIGKILL))
        XCTAssertEqual(ChildProcess.run("/bin/sh", ["-c", "exit 3"]).outcome, .exited(3))
        let ok = ChildProcess.run("/bin/sh", ["-c", "exit 0"])
        XCTAssertEqual(ok.outcome, .exited(0))
        XCTAssertGreaterThan(ok.wall, 0)
        XCTAssertGreaterThan(ok.peakRSSKiB, 0)
        XCTAssertEqual(ChildProcess.run("/nonexistent/program", []).outcome, .spawnFailed(ENOENT))
    }

    /// `--cold` where the cache cannot be dropped is a failure of the machine (exit 1, naming what
    /// is needed), not a usage error: a control file nobody can write (a directory, even for root)
    /// stands in for a user without root.
    func testPageCacheThatCannotBeDroppedIsAFailureNotAUsageError() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("drop-caches-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(at: directory) }
        XCTAssertThrowsError(try ChildProcess.dropPageCache(control: directory.path)) { error in
            XCTAssertTrue(error is PageCacheNotDropped)
            XCTAssertEqual((error as? LocalizedError)?.errorDescription, "--cold could not drop the page cache (writing /proc/sys/vm/drop_caches needs root)")
        }
    }
}

final class BenchStatisticsTests: XCTestCase {
    func testSampleSummary() {
        XCTAssertEqual(SampleSummary([3, 1, 2]).map { [$0.median, $0.min, $0.max] }, [2, 1, 3])
        XCTAssertEqual(SampleSummary([4, 1, 3, 2])?.median, 2.5)
        XCTAssertEqual(SampleSummary([7])?.count, 1)
        XCTAssertNil(SampleSummary([]))
    }

    /// Each run is compared with the reference rounds just before and after it, so a machine that
    /// slows down halfway leaves the ratios alone; the reference's own drift is the spread.
    func testBracketedRatio() {
        // The job does 10 units per run; the reference 1 per product. The machine halves its speed
        // from the second run on: the reference's products take 0.1 s, then 0.2 s.
        let r = BracketedRatio(runSeconds: [2, 4, 4], work: 10, rounds: [[0.1, 0.1], [0.1, 0.3, 0.2], [0.2, 0.2], [0.2]], referenceWork: 1)
        XCTAssertEqual(r.roundRates, [10, 5, 5, 5])
        // Run 0: 5 units/s against the median of 0.1, 0.1, 0.1, 0.3, 0.2 s (0.1 s: 10 /s).
        // Run 1: 2.5 /s against 0.2 s (5 /s). Run 2: 2.5 /s against 0.2 s.
        XCTAssertEqual(r.ratios, [0.5, 0.5, 0.5])
        XCTAssertEqual(r.spread, 0.5)
        XCTAssertFalse(r.steady)
        let quiet = BracketedRatio(runSeconds: [1], work: 1, rounds: [[1.0], [1.05]], referenceWork: 1)
        XCTAssertTrue(quiet.steady, "a 5% spread is steady")
    }

    /// Each job is first in exactly one of `jobs` rounds, and every round runs every job once.
    func testOrderRotatesEachRound() {
        XCTAssertEqual(BenchRounds.order(round: 0, jobs: 3), [0, 1, 2])
        XCTAssertEqual(BenchRounds.order(round: 1, jobs: 3), [1, 2, 0])
        XCTAssertEqual(Set((0..<4).map { BenchRounds.order(round: $0, jobs: 4)[0] }), [0, 1, 2, 3])
        for round in 0..<5 { XCTAssertEqual(BenchRounds.order(round: round, jobs: 4).sorted(), [0, 1, 2, 3]) }
    }

    /// A killed run's short wall time stays out of the median and the ratios; a job whose spawn always
    /// fails has no figures at all; both are named in the status.
    func testFailedRunsStayOutOfMedians() {
        let job = { (name: String) in BenchJob(name: name, program: "/bin/true", arguments: [], expectation: .manifest) }
        let ok = { (wall: Double) in JobRun(wall: wall, peakRSSKiB: 1024, outcome: .exited(0)) }
        let samples: [[JobRun]] = [
            [ok(2), ok(2), ok(4)],
            [ok(1), ok(1), ok(1)],
            [JobRun(wall: 0.08, peakRSSKiB: 10, outcome: .signalled(9)), ok(3), ok(6)],
            [JobRun(wall: 0, peakRSSKiB: 0, outcome: .spawnFailed(ENOENT)), JobRun(wall: 0, peakRSSKiB: 0, outcome: .spawnFailed(ENOENT)),
             JobRun(wall: 0, peakRSSKiB: 0, outcome: .spawnFailed(ENOENT))],
        ]
        let rows = BenchRounds.summarize(["ref", "cp", "killed", "unspawnable"].map(job), samples: samples, reference: 0, copy: 1)
        XCTAssertEqual(rows[0].ratioToReference, 1)
        XCTAssertEqual(rows[2].wall, SampleSummary([3, 6]))
        XCTAssertEqual(rows[2].ratioToReference, 1.5, "median of 3/2 and 6/4; the killed round is left out")
        XCTAssertEqual(rows[2].ratioToCopy, 4.5)
        XCTAssertEqual(rows[2].status, "failed (signal 9) in 1 of 3 runs")
        XCTAssertNil(rows[3].wall)
        XCTAssertNil(rows[3].ratioToReference)
        XCTAssertEqual(rows[3].status, "failed (spawn: No such file or directory)")
        XCTAssertEqual(rows.map(\.failed), [false, false, true, true])
        let table = BenchRounds.table(rows, inputBytes: 1_000_000_000, referenceName: "ref", copyName: "cp")
        XCTAssertTrue(table.contains { $0.contains("ratios to 'ref' (the reference") }, "the header names the reference column")
        XCTAssertTrue(table.last!.hasPrefix("unspawnable") && table.last!.hasSuffix("failed (spawn: No such file or directory)"))
    }
}

final class OutputCheckTests: XCTestCase {
    var dir: URL!
    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("dsconvert-outputcheck-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    /// A one-tensor safetensors file (U8 [n]).
    private func shard(_ name: String, bytes n: Int, in directory: URL) throws {
        let header = Array(#"{"t":{"dtype":"U8","shape":[\#(n)],"data_offsets":[0,\#(n)]}}"#.utf8)
        let data = withUnsafeBytes(of: UInt64(header.count).littleEndian) { Array($0) } + header + [UInt8](repeating: 1, count: n)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        try Data(data).write(to: directory.appendingPathComponent(name))
    }

    private func manifest(_ files: [(String, Int)], in directory: URL) throws {
        let records = files.map { #"{"name":"\#($0.0)","bytes":\#($0.1),"sha256":"00"}"# }.joined(separator: ",")
        try Data(#"{"format":"dsconvert-manifest","version":1,"stages":[],"files":[\#(records)]}"#.utf8)
            .write(to: directory.appendingPathComponent("dsconvert.json"))
    }

    private func expectFailure(_ output: URL, _ expectation: OutputExpectation, _ expected: OutputCheckError, line: UInt = #line) {
        XCTAssertThrowsError(try OutputCheck.verify(output, expecting: expectation), line: line) { XCTAssertEqual($0 as? OutputCheckError, expected, line: line) }
    }

    func testManifestOutputs() throws {
        let out = dir.appendingPathComponent("out")
        expectFailure(out, .manifest, .missing)
        try shard("model.safetensors", bytes: 8, in: out)
        expectFailure(out, .manifest, .noManifest)
        let size = try FileManager.default.attributesOfItem(atPath: out.appendingPathComponent("model.safetensors").path)[.size] as! Int
        try manifest([("model.safetensors", size)], in: out)
        XCTAssertEqual(try OutputCheck.verify(out, expecting: .manifest).files, 2)
        try manifest([("model.safetensors", size + 1)], in: out)
        expectFailure(out, .manifest, .sizeDiffers(file: "model.safetensors", onDisk: size, recorded: size + 1))
        try manifest([("model.safetensors", size), ("device-1/model.safetensors", size)], in: out)
        expectFailure(out, .manifest, .listedFileMissing("device-1/model.safetensors"))
        try shard("model.safetensors", bytes: 8, in: out.appendingPathComponent("device-1"))
        try shard("stray.safetensors", bytes: 8, in: out)
        expectFailure(out, .manifest, .unlistedFiles(onDisk: 3, listed: 2))
    }

    func testCopiesAndCheckpoints() throws {
        let input = dir.appendingPathComponent("in"), out = dir.appendingPathComponent("out")
        try shard("model.safetensors", bytes: 8, in: input)
        try FileManager.default.copyItem(at: input, to: out)
        let listing = OutputCheck.files(under: input)
        XCTAssertEqual(try OutputCheck.verify(out, expecting: .copy(of: listing)), OutputSize(files: 1, bytes: listing.values.first!))
        XCTAssertEqual(try OutputCheck.verify(out, expecting: .checkpoint(minimumTensors: 1)).files, 1)
        expectFailure(out, .checkpoint(minimumTensors: 2), .tooFewTensors(found: 1, expected: 2))
        try shard("model.safetensors", bytes: 4, in: out)
        expectFailure(out, .copy(of: listing), .notACopy(OutputSize(files: 1, bytes: listing.values.first! - 4), input: OutputSize(files: 1, bytes: listing.values.first!)))
        try Data([1, 2, 3]).write(to: out.appendingPathComponent("model.safetensors"))
        XCTAssertThrowsError(try OutputCheck.verify(out, expecting: .checkpoint(minimumTensors: 1))) {
            guard case .unreadableCheckpoint? = $0 as? OutputCheckError else { return XCTFail("\($0)") }
        }
    }
}
