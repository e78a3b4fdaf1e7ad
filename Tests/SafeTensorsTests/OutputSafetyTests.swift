import Foundation
@testable import SafeTensors
import XCTest

/// The rules of what an output may replace, adopt or remove (README "Guarantees").
final class OutputSafetyTests: XCTestCase {
    var dir: URL!
    let fm = FileManager.default
    override func setUpWithError() throws {
        dir = fm.temporaryDirectory.appendingPathComponent("dsconvert-safety-\(UUID().uuidString)")
        try fm.createDirectory(at: dir, withIntermediateDirectories: true)
    }
    override func tearDownWithError() throws { try? fm.removeItem(at: dir) }

    // 4194399 is above Linux's PID_MAX_LIMIT (2^22): a PID no process can have.
    @discardableResult
    private func make(_ path: String, file: String? = nil) throws -> URL {
        let url = dir.appendingPathComponent(path)
        try fm.createDirectory(at: url, withIntermediateDirectories: true)
        if let file { try Data("keep".utf8).write(to: url.appendingPathComponent(file)) }
        return url
    }

    private func open(_ final: URL, inputs: [URL] = [], force: Bool = true, resume: Bool = false) throws -> AtomicOutputDirectory {
        try AtomicOutputDirectory(final: final, inputs: inputs, marker: "dsconvert.json", force: force, resume: resume)
    }

    func testOutputsThatWouldDestroyAnInputOrTheWorkingDirectory() throws {
        let input = try make("a/in", file: "x")
        let outer = dir.appendingPathComponent("a")
        XCTAssertThrowsError(try OutputLocation.check(output: outer, inputs: [input])) {
            XCTAssertEqual($0 as? OutputSafetyError, .outputContainsInput(output: FilePath.resolved(outer.path)!, input: FilePath.resolved(input.path)!))
        }
        for inside in [input, input.appendingPathComponent("o"), URL(fileURLWithPath: input.path + "/x/..")] {
            XCTAssertThrowsError(try OutputLocation.check(output: inside, inputs: [input])) {
                guard case .outputInsideInput = $0 as? OutputSafetyError else { return XCTFail("\($0)") }
            }
        }
        let link = dir.appendingPathComponent("link")
        try fm.createSymbolicLink(at: link, withDestinationURL: input)
        XCTAssertThrowsError(try OutputLocation.check(output: link.appendingPathComponent("o"), inputs: [input]), "a path through a link to the input")
        XCTAssertThrowsError(try OutputLocation.check(output: URL(fileURLWithPath: "/"), inputs: []))
        XCTAssertThrowsError(try OutputLocation.check(output: URL(fileURLWithPath: fm.currentDirectoryPath), inputs: [])) {
            guard case .outputContainsWorkingDirectory = $0 as? OutputSafetyError else { return XCTFail("\($0)") }
        }
        XCTAssertNoThrow(try OutputLocation.check(output: dir.appendingPathComponent("b"), inputs: [input]))
        XCTAssertNoThrow(try OutputLocation.check(output: dir.appendingPathComponent("in2"), inputs: [input]), "a sibling sharing a name prefix")
    }

    func testForceReplacesOnlyOwnOutputsAndEmptyDirectories() throws {
        let foreign = try make("foreign", file: "thesis.tex")
        XCTAssertThrowsError(try open(foreign)) {
            guard case let .notReplaceable(_, holds) = $0 as? OutputSafetyError else { return XCTFail("\($0)") }
            XCTAssertTrue(holds.contains("'thesis.tex'"), holds)
        }
        XCTAssertTrue(fm.fileExists(atPath: foreign.appendingPathComponent("thesis.tex").path))
        let file = dir.appendingPathComponent("file")
        try Data().write(to: file)
        XCTAssertThrowsError(try open(file))
        let link = dir.appendingPathComponent("link")
        try fm.createSymbolicLink(at: link, withDestinationURL: try make("target", file: "dsconvert.json"))
        XCTAssertThrowsError(try open(link)) { XCTAssertEqual($0 as? OutputSafetyError, .symbolicLink(output: link.path)) }
        for (name, file) in [("empty", nil), ("previous", "dsconvert.json")] {
            let out = try open(try make(name, file: file))
            try out.commit()
        }
        XCTAssertTrue(fm.fileExists(atPath: dir.appendingPathComponent("target/dsconvert.json").path), "a link's target is never touched")
    }

    /// A symbolic link planted under a work directory's name is never followed, renamed or cleaned.
    func testPlantedWorkDirectoryLinkIsLeftAlone() throws {
        let victim = try make("victim", file: "precious")
        let planted = dir.appendingPathComponent(".dsconvert-partial-out-4194399")
        try fm.createSymbolicLink(at: planted, withDestinationURL: victim)
        let out = try open(dir.appendingPathComponent("out"), resume: true)
        XCTAssertFalse(out.resumed)
        try out.commit()
        XCTAssertEqual(try fm.destinationOfSymbolicLink(atPath: planted.path), victim.path)
        XCTAssertEqual(try fm.contentsOfDirectory(atPath: victim.path), ["precious"])
        XCTAssertEqual(FileEntry.lstat(dir.appendingPathComponent("out").path)?.kind, .directory)
    }

    /// A work directory whose PID now belongs to another process (same PID, other start time) is stale.
    func testReusedPIDDoesNotBlockTheOutput() throws {
        let stale = try make(".dsconvert-partial-out-1")
        let other = ProcessIdentity(pid: 1, startTime: (ProcessIdentity.of(1)?.startTime ?? 0) + 12345, bootID: ProcessIdentity.current!.bootID)
        try JSONEncoder().encode(other).write(to: stale.appendingPathComponent(AtomicOutputDirectory.ownerFileName))
        let out = try open(dir.appendingPathComponent("out"))
        try out.commit()
        XCTAssertFalse(fm.fileExists(atPath: stale.path))
        // The record of a process that runs blocks it.
        let live = try make(".dsconvert-partial-out2-1")
        try JSONEncoder().encode(ProcessIdentity.of(1)!).write(to: live.appendingPathComponent(AtomicOutputDirectory.ownerFileName))
        XCTAssertThrowsError(try open(dir.appendingPathComponent("out2"))) {
            XCTAssertEqual($0 as? OutputSafetyError, .anotherConversion(output: self.dir.appendingPathComponent("out2").path, pid: 1))
        }
    }

    /// A resume killed after renaming a dead run's work directory to its own name, before recording
    /// itself, leaves the dead run's record under its name: whether the name's PID runs decides, so
    /// the output is not blocked for good. (PIDs above Linux's largest, 4194304, never run.)
    func testResumeKilledBeforeRecordingItselfDoesNotBlockTheOutput() throws {
        let dead = ProcessIdentity(pid: 4194399, startTime: 1, bootID: ProcessIdentity.current!.bootID)
        let adopted = try make(".dsconvert-partial-out-4194398", file: "shard")
        try JSONEncoder().encode(dead).write(to: adopted.appendingPathComponent(AtomicOutputDirectory.ownerFileName))
        XCTAssertFalse(AtomicOutputDirectory.isLive(workDirectory: adopted, pid: 4194398))
        let out = try open(dir.appendingPathComponent("out"), resume: true)
        XCTAssertTrue(out.resumed)
        XCTAssertTrue(fm.fileExists(atPath: out.temporaryURL.appendingPathComponent("shard").path))
        out.discard()
        // Under the name of a process that runs (PID 1), the same record blocks the output.
        let live = try make(".dsconvert-partial-out2-1")
        try JSONEncoder().encode(dead).write(to: live.appendingPathComponent(AtomicOutputDirectory.ownerFileName))
        XCTAssertThrowsError(try open(dir.appendingPathComponent("out2"), resume: true)) {
            XCTAssertEqual($0 as? OutputSafetyError, .anotherConversion(output: self.dir.appendingPathComponent("out2").path, pid: 1))
        }
    }

    /// A commit killed between its renames is finished (work complete) or rolled back by the next run.
    func testInterruptedCommitIsFinishedOrRolledBack() throws {
        for committing in [true, false] {
            let name = committing ? "forward" : "back"
            try make(".dsconvert-replaced-\(name)-4194399", file: "old")
            let work = try make(".dsconvert-partial-\(name)-4194399", file: "new")
            if !committing { try Data().write(to: work.appendingPathComponent(AtomicOutputDirectory.ownerFileName)) }
            try AtomicOutputDirectory.finishInterruptedCommits(parent: dir, name: name)
            XCTAssertEqual(try fm.contentsOfDirectory(atPath: dir.appendingPathComponent(name).path).filter { !$0.hasPrefix(".") }, [committing ? "new" : "old"])
            XCTAssertFalse(fm.fileExists(atPath: dir.appendingPathComponent(".dsconvert-replaced-\(name)-4194399").path))
        }
    }

    func testResumeKeyNamesTheChangedFile() throws {
        let input = try make("in")
        let shard = input.appendingPathComponent("model.safetensors")
        try Data([2, 0, 0, 0, 0, 0, 0, 0, 0x7B, 0x7D, 1, 2]).write(to: shard)
        let before = ResumeKey(conversion: "c", input: ResumeKey.identify(directory: input))
        let recorded = try JSONParser.parse(Data(before.journalHeader.utf8))
        XCTAssertNil(before.mismatch(recorded: recorded))
        // Same name, same size, same header, other data: the base model and its fine-tune.
        usleep(10_000)
        let handle = try FileHandle(forWritingTo: shard)
        try handle.seek(toOffset: 10)
        handle.write(Data([9, 9]))
        try handle.close()
        let after = ResumeKey(conversion: "c", input: ResumeKey.identify(directory: input))
        XCTAssertTrue(after.mismatch(recorded: recorded)?.contains("input file model.safetensors changed") == true, "\(String(describing: after.mismatch(recorded: recorded)))")
        XCTAssertEqual(ResumeKey(conversion: "d", input: before.input).mismatch(recorded: recorded), "the interrupted run used other options or stages")
        // Found by an audit: a stray *.safetensors whose length prefix is 2^63 or more trapped converting it to Int.
        for prefix in [UInt64.max, 1 << 63, SafeTensorsHeader.maximumHeaderLength + 1] {
            let stray = input.appendingPathComponent("extra.safetensors")
            try (withUnsafeBytes(of: prefix.littleEndian) { Data($0) } + Data("{}".utf8)).write(to: stray)
            XCTAssertTrue(ResumeKey.identify(directory: input)["extra.safetensors"]?.hasSuffix("header=unreadable") == true)
        }
    }

    /// A record written on another host (a shared disk) or in another PID namespace (a container)
    /// cannot be checked from here: its run counts as live and its directory is left alone.
    func testRecordFromElsewhereCountsAsLive() throws {
        var elsewhere = ProcessIdentity.current!
        elsewhere.host = "another-host"
        let work = try make(".dsconvert-partial-out-4194399")
        try JSONEncoder().encode(elsewhere).write(to: work.appendingPathComponent(AtomicOutputDirectory.ownerFileName))
        XCTAssertTrue(AtomicOutputDirectory.isLive(workDirectory: work, pid: elsewhere.pid))
        XCTAssertThrowsError(try open(dir.appendingPathComponent("out")))
        XCTAssertTrue(fm.fileExists(atPath: work.path))
    }

    /// A dead run that had our PID (containers reuse low PIDs) is resumed, not deleted as ours.
    func testResumeAdoptsADeadRunWithOurPID() throws {
        let work = try make(".dsconvert-partial-out-\(getpid())", file: "shard")
        var earlier = ProcessIdentity.current!
        earlier = ProcessIdentity(pid: earlier.pid, startTime: earlier.startTime + 1, bootID: earlier.bootID)
        try JSONEncoder().encode(earlier).write(to: work.appendingPathComponent(AtomicOutputDirectory.ownerFileName))
        let out = try open(dir.appendingPathComponent("out"), resume: true)
        XCTAssertTrue(out.resumed)
        XCTAssertTrue(fm.fileExists(atPath: out.temporaryURL.appendingPathComponent("shard").path))
        out.discard()
    }

    /// A stale run's directory is removed through descriptors: links at any depth (to a directory, to
    /// a file, dangling) go, and nothing they name is touched.
    func testRemovingAStaleRunNeverFollowsItsLinks() throws {
        let outside = try make("outside", file: "precious")
        let work = try make(".dsconvert-partial-out-4194399/sub/deeper", file: "shard")
        try fm.createSymbolicLink(at: work.appendingPathComponent("to-dir"), withDestinationURL: outside)
        try fm.createSymbolicLink(at: work.deletingLastPathComponent().appendingPathComponent("to-file"),
                                  withDestinationURL: outside.appendingPathComponent("precious"))
        try fm.createSymbolicLink(at: work.appendingPathComponent("dangling"), withDestinationURL: dir.appendingPathComponent("nowhere"))
        XCTAssertEqual(mkfifo(work.appendingPathComponent("fifo").path, 0o600), 0)
        let out = try open(dir.appendingPathComponent("out"))
        XCTAssertFalse(fm.fileExists(atPath: dir.appendingPathComponent(".dsconvert-partial-out-4194399").path))
        XCTAssertEqual(try fm.contentsOfDirectory(atPath: outside.path), ["precious"])
        out.discard()
        XCTAssertNil(FileEntry.lstat(out.temporaryURL.path))
    }

    /// A subdirectory swapped for a link between the walk's look at it and its descent (the race a
    /// walk by path loses): the link is unlinked, never entered, and the removal still completes.
    func testASubdirectorySwappedForALinkMidWalkIsNotEntered() throws {
        let outside = try make("outside", file: "precious")
        let tree = try make("tree/sub", file: "shard").deletingLastPathComponent()
        let moved = dir.appendingPathComponent("moved-away")
        DirectoryTree.beforeOpeningSubdirectory.withLock { hook in
            hook = { path in
                guard path.hasSuffix("/tree/sub"), FileEntry.lstat(path)?.kind == .directory else { return }
                _ = rename(path, moved.path)
                _ = symlink(outside.path, path)
            }
        }
        defer { DirectoryTree.beforeOpeningSubdirectory.withLock { $0 = nil } }
        try DirectoryTree.remove(tree)
        XCTAssertNil(FileEntry.lstat(tree.path))
        XCTAssertEqual(try fm.contentsOfDirectory(atPath: outside.path), ["precious"])
        XCTAssertEqual(try fm.contentsOfDirectory(atPath: moved.path), ["shard"], "the directory moved out of the tree is not the walk's")
    }

    /// The same race in the sweep of an adopted directory: the link put in the subdirectory's place
    /// is unlinked (and said), what it names is untouched.
    func testTheResumeSweepDoesNotEnterADirectorySwappedForALink() throws {
        let outside = try make("outside", file: "precious")
        let work = try make(".dsconvert-partial-out-4194399/device-0", file: "shard").deletingLastPathComponent()
        DirectoryTree.beforeOpeningSubdirectory.withLock { hook in
            hook = { path in
                guard path.hasSuffix("/device-0"), FileEntry.lstat(path)?.kind == .directory else { return }
                _ = rename(path, path + "-moved")
                _ = symlink(outside.path, path)
            }
        }
        defer { DirectoryTree.beforeOpeningSubdirectory.withLock { $0 = nil } }
        var removed: [String] = []
        try DirectoryTree.removeLinksAndSpecialFiles(under: work, refuse: { OutputSafetyError.workDirectoryNotOwn(path: $0) }) { path, _ in removed.append(path) }
        XCTAssertEqual(removed, [work.appendingPathComponent("device-0").path])
        XCTAssertNil(FileEntry.lstat(work.appendingPathComponent("device-0").path))
        XCTAssertEqual(try fm.contentsOfDirectory(atPath: outside.path), ["precious"])
    }

    /// The sweep of an adopted directory unlinks links and special files at every depth through
    /// descriptors, keeps regular files and subdirectories, and leaves what the links name alone.
    func testResumeSweepUnlinksWithoutFollowing() throws {
        let outside = try make("outside", file: "precious")
        let work = try make(".dsconvert-partial-out-4194399/device-1", file: "shard")
        try fm.createSymbolicLink(at: work.appendingPathComponent("model.safetensors"), withDestinationURL: outside.appendingPathComponent("precious"))
        try fm.createSymbolicLink(at: work.deletingLastPathComponent().appendingPathComponent("device-0"), withDestinationURL: outside)
        XCTAssertEqual(mkfifo(work.appendingPathComponent("fifo").path, 0o600), 0)
        let out = try open(dir.appendingPathComponent("out"), resume: true)
        XCTAssertTrue(out.resumed)
        XCTAssertEqual(try fm.contentsOfDirectory(atPath: out.temporaryURL.path).sorted(), [AtomicOutputDirectory.ownerFileName, "device-1"])
        XCTAssertEqual(try fm.contentsOfDirectory(atPath: out.temporaryURL.appendingPathComponent("device-1").path), ["shard"])
        XCTAssertEqual(try fm.contentsOfDirectory(atPath: outside.path), ["precious"])
        XCTAssertEqual(try String(contentsOf: outside.appendingPathComponent("precious"), encoding: .utf8), "keep")
        out.discard()
    }

    func testWorkDirectoryPIDsAreDigitsOnly() {
        XCTAssertEqual(AtomicOutputDirectory.pid("1234"), 1234)
        for bad in ["-1234", "+5", "", "0", "12a", "99999999999"] { XCTAssertNil(AtomicOutputDirectory.pid(Substring(bad)), bad) }
    }

    func testStartTimeParsingSurvivesOddCommandNames() {
        let fields = (3...22).map(String.init).joined(separator: " ")
        XCTAssertEqual(ProcessIdentity.startTime(stat: "42 (a) (b c) \(fields) 23 24"), 22)
        XCTAssertNil(ProcessIdentity.startTime(stat: "42 (x) 3 4"))
        XCTAssertTrue(ProcessIdentity.current!.isRunning)
    }

    func testResultFileRules() throws {
        let input = try make("in", file: "config.json")
        XCTAssertThrowsError(try OutputLocation.checkResultFile(input.appendingPathComponent("config.json"), inputs: [input], force: true))
        let existing = dir.appendingPathComponent("r.json")
        try Data().write(to: existing)
        XCTAssertThrowsError(try OutputLocation.checkResultFile(existing, inputs: [input], force: false))
        XCTAssertNoThrow(try OutputLocation.checkResultFile(existing, inputs: [input], force: true))
        XCTAssertThrowsError(try OutputLocation.checkResultFile(input, inputs: [], force: true), "a directory is never replaced by a result file")
    }

    func testRegularFileReadsRefuseFIFOsWithoutBlocking() throws {
        let fifo = dir.appendingPathComponent("fifo")
        XCTAssertEqual(mkfifo(fifo.path, 0o600), 0)
        XCTAssertThrowsError(try FilePath.readRegularFile(fifo.path))
        XCTAssertThrowsError(try MappedFile(path: fifo.path))
    }
}
