import Foundation
import Synchronization
import XCTest
@testable import SafeTensors

final class WriterTests: XCTestCase {
    var dir: URL!
    override func setUpWithError() throws { dir = try temporaryDirectory() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    /// Deterministic bytes for a tensor.
    private func bytes(for tensor: PlannedTensor) -> [UInt8] {
        var state = UInt32(truncatingIfNeeded: tensor.name.hashValue & 0) &+ UInt32(tensor.name.utf8.reduce(7) { $0 &* 31 &+ Int($1) } & 0xFFFF_FFFF)
        return (0..<tensor.byteCount).map { _ in
            state = state &* 1_664_525 &+ 1_013_904_223
            return UInt8(truncatingIfNeeded: state >> 24)
        }
    }

    func testRoundTripEveryDType() throws {
        var planned: [PlannedTensor] = []
        for (i, dtype) in DType.allCases.enumerated() {
            let shape = dtype.bitSize % 8 == 0 ? [3, i + 1] : [2, 4 * (i + 1)]
            planned.append(PlannedTensor(name: "t.\(dtype.rawValue)", dtype: dtype, shape: shape))
        }
        planned.append(PlannedTensor(name: "scalar", dtype: .f32, shape: []))
        planned.append(PlannedTensor(name: "empty", dtype: .bf16, shape: [0, 5]))
        let layout = CheckpointLayout(tensors: planned)
        XCTAssertEqual(layout.shards.map(\.fileName), ["model.safetensors"])
        let writer = CheckpointWriter(layout: layout, directory: dir)
        for t in planned.reversed() { try writer.write(t.name, bytes: bytes(for: t)) }
        try writer.finish()

        let checkpoint = try Checkpoint(directory: dir)
        XCTAssertEqual(checkpoint.tensors.count, planned.count)
        for t in planned {
            let view = try checkpoint.view(t.name)
            XCTAssertEqual(view.dtype, t.dtype)
            XCTAssertEqual(view.shape, t.shape)
            XCTAssertEqual(Array(view.bytes), bytes(for: t), t.name)
        }
        // Data order is the reference serializer's: dtype descending, then name.
        let file = checkpoint.shard("model.safetensors")!
        let order = file.tensors.map(\.name)
        let expected = planned.sorted { $0.dtype != $1.dtype ? $0.dtype > $1.dtype : $0.name < $1.name }.map(\.name)
        XCTAssertEqual(order, expected)
        XCTAssertEqual(file.header.dataStart % 8, 0, "header padded to a multiple of 8")
    }

    func testShardSplittingFollowsHuggingFace() throws {
        let t = { (name: String, n: Int) in PlannedTensor(name: name, dtype: .u8, shape: [n]) }
        // 60 + 30 fit; 20 starts a new shard and 80 fills it to exactly the limit; 150 (> max) gets its own shard, in place.
        let layout = CheckpointLayout(tensors: [t("a", 60), t("b", 30), t("c", 20), t("big", 150), t("d", 80), t("e", 11)], maxShardSize: 100)
        XCTAssertEqual(layout.shards.map { $0.tensors.map(\.name) }, [["a", "b"], ["big"], ["c", "d"], ["e"]])
        XCTAssertEqual(layout.shards.map(\.fileName), (1...4).map { String(format: "model-%05d-of-00004.safetensors", $0) })
        let writer = CheckpointWriter(layout: layout, directory: dir)
        for shard in layout.shards { for info in shard.tensors { try writer.write(info.name, bytes: [UInt8](repeating: 1, count: info.byteCount)) } }
        try writer.finish()
        let index = try String(contentsOf: dir.appendingPathComponent(Checkpoint.indexFileName), encoding: .utf8)
        XCTAssertTrue(index.hasPrefix("{\n  \"metadata\": {\n    \"total_size\": 351\n  },\n  \"weight_map\": {\n    \"a\": \"model-00001-of-00004.safetensors\","))
        let checkpoint = try Checkpoint(directory: dir)
        XCTAssertEqual(checkpoint.totalTensorBytes, 351)
        XCTAssertEqual(checkpoint.shardName(of: "d"), "model-00003-of-00004.safetensors")
    }

    func testWriterRejectsPlanViolations() throws {
        let layout = CheckpointLayout(tensors: [PlannedTensor(name: "a", dtype: .f32, shape: [2]), PlannedTensor(name: "b", dtype: .f32, shape: [1])])
        let writer = CheckpointWriter(layout: layout, directory: dir)
        XCTAssertThrowsError(try writer.write("a", bytes: [1, 2, 3]))
        XCTAssertThrowsError(try writer.write("zzz", bytes: []))
        try writer.write("a", bytes: [UInt8](repeating: 0, count: 8))
        XCTAssertThrowsError(try writer.write("a", bytes: [UInt8](repeating: 0, count: 8)))
        XCTAssertThrowsError(try writer.finish()) { XCTAssertTrue("\($0)".contains("\"b\"") || ($0 as? SafeTensorsError)?.errorDescription?.contains("'b'") == true) }
    }

    /// A layout of another format (a prefix, then named extents back to back) written piece by piece through
    /// `write(_:count:appending:)`, pieces of any size crossing the chunks: exactly the prefix and the pieces, no
    /// index; a producer that makes more or fewer bytes than planned is refused, naming the file and item.
    func testOtherFormatLayoutWrittenInPieces() throws {
        let prefix = [UInt8]("HEAD".utf8) + [UInt8](repeating: 7, count: 5000)
        let extents = [(name: "x", bytes: 10_000), (name: "y", bytes: 3), (name: "z", bytes: 20_000)]
        let layout = CheckpointLayout(files: [ShardPlan(fileName: "m.bin", prefix: prefix, extents: extents)])
        let writer = CheckpointWriter(layout: layout, directory: dir, key: ResumeKey(conversion: "", input: [:]), resume: false, pool: ChunkPool(size: 4096, inFlight: 2))
        var expected = prefix
        for (i, extent) in extents.enumerated() {
            let data = (0..<extent.bytes).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ i) }
            expected += data
            try writer.write(extent.name, count: extent.bytes) { append in
                var at = 0, piece = 1
                while at < data.count {
                    let n = min(piece, data.count - at)
                    try data[at..<(at + n)].withUnsafeBytes { try append($0) }
                    at += n
                    piece = piece * 3 + 1
                }
            }
        }
        try writer.finish()
        XCTAssertEqual([UInt8](try Data(contentsOf: dir.appendingPathComponent("m.bin"))), expected)
        XCTAssertEqual(writer.sha256(of: "m.bin"), expected.withUnsafeBytes { SHA256.hex($0) })
        XCTAssertEqual(Set(try FileManager.default.contentsOfDirectory(atPath: dir.path)), ["m.bin"], "no index, no journal")

        let other = dir.appendingPathComponent("other")
        try FileManager.default.createDirectory(at: other, withIntermediateDirectories: true)
        let short = CheckpointWriter(layout: layout, directory: other)
        XCTAssertThrowsError(try short.write("x", count: 10_000) { append in try [UInt8](repeating: 0, count: 9_999).withUnsafeBytes { try append($0) } }) {
            XCTAssertTrue("\($0)".contains("produced 9999 bytes"), "\($0)")
        }
        XCTAssertThrowsError(try short.write("y", count: 3) { append in try [UInt8](repeating: 0, count: 4).withUnsafeBytes { try append($0) } }) {
            XCTAssertTrue("\($0)".contains("more than the planned 3"), "\($0)")
        }
    }

    func testConcurrentWritesProduceIdenticalBytes() throws {
        let planned = (0..<64).map { PlannedTensor(name: "w.\($0)", dtype: .bf16, shape: [17, $0 + 1]) }
        let layout = CheckpointLayout(tensors: planned, maxShardSize: 4000)
        let serial = dir.appendingPathComponent("serial"), parallel = dir.appendingPathComponent("parallel")
        try FileManager.default.createDirectory(at: serial, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(at: parallel, withIntermediateDirectories: true)
        let w1 = CheckpointWriter(layout: layout, directory: serial)
        for t in planned { try w1.write(t.name, bytes: bytes(for: t)) }
        try w1.finish()
        let w2 = CheckpointWriter(layout: layout, directory: parallel)
        let payloads = planned.map { bytes(for: $0) }
        DispatchQueue.concurrentPerform(iterations: planned.count) { i in try! w2.write(planned[i].name, bytes: payloads[i]) }
        try w2.finish()
        for shard in layout.shards {
            XCTAssertEqual(try Data(contentsOf: serial.appendingPathComponent(shard.fileName)),
                           try Data(contentsOf: parallel.appendingPathComponent(shard.fileName)))
        }
        XCTAssertEqual(try Data(contentsOf: serial.appendingPathComponent(Checkpoint.indexFileName)),
                       try Data(contentsOf: parallel.appendingPathComponent(Checkpoint.indexFileName)))
    }

    /// The bytes a shard must hold: length, header, then each tensor's data in file order.
    private func expectedFile(_ shard: ShardPlan, _ data: [String: [UInt8]]) -> [UInt8] {
        withUnsafeBytes(of: UInt64(shard.headerBytes.count).littleEndian) { Array($0) } + shard.headerBytes + shard.tensors.flatMap { data[$0.name]! }
    }

    /// Sizes around the 8 KiB test chunk and the 4 KiB direct-I/O block, in two shards.
    private func stagedLayout() -> (CheckpointLayout, [PlannedTensor]) {
        let sizes = [1, 4095, 4096, 4097, 8191, 8192, 8193, 20_000, 0, 3, 65_537, 12_288]
        let planned = sizes.enumerated().map { PlannedTensor(name: String(format: "t.%02d", $0), dtype: .u8, shape: [$1]) }
        return (CheckpointLayout(tensors: planned, maxShardSize: 70_000), planned)
    }

    func testStagedWritesAcrossChunkBoundariesInAndOutOfOrder() throws {
        let (layout, planned) = stagedLayout()
        XCTAssertGreaterThan(layout.shards.count, 1)
        let data = Dictionary(uniqueKeysWithValues: planned.map { ($0.name, bytes(for: $0)) })
        let fileOrder = layout.shards.flatMap { $0.tensors.map(\.name) }
        // In file order (the sinks' order), then with one tensor of the first shard late, then reversed.
        var late = fileOrder
        late.append(late.remove(at: 2))
        for (label, order) in [("file order", fileOrder), ("one late", late), ("reversed", fileOrder.reversed())] {
            let out = dir.appendingPathComponent(label)
            try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
            let writer = CheckpointWriter(layout: layout, directory: out, key: ResumeKey(conversion: "", input: [:]), resume: false, pool: ChunkPool(size: 8192, inFlight: 2))
            for name in order { try writer.write(name, bytes: data[name]!) }
            try writer.finish()
            for shard in layout.shards {
                let path = out.appendingPathComponent(shard.fileName).path
                XCTAssertEqual([UInt8](try Data(contentsOf: URL(fileURLWithPath: path))), expectedFile(shard, data), "\(label): \(shard.fileName)")
                XCTAssertEqual(writer.sha256(of: shard.fileName), try SHA256.hex(fileAt: path), "\(label): \(shard.fileName)")
            }
        }
    }

    func testStagedCopiesFromViews() throws {
        let (layout, planned) = stagedLayout()
        let data = Dictionary(uniqueKeysWithValues: planned.map { ($0.name, bytes(for: $0)) })
        let source = dir.appendingPathComponent("source"), copy = dir.appendingPathComponent("copy")
        for url in [source, copy] { try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true) }
        let first = CheckpointWriter(layout: layout, directory: source)
        for t in planned { try first.write(t.name, bytes: data[t.name]!) }
        try first.finish()
        let checkpoint = try Checkpoint(directory: source)
        let writer = CheckpointWriter(layout: layout, directory: copy, key: ResumeKey(conversion: "", input: [:]), resume: false, pool: ChunkPool(size: 8192, inFlight: 1))
        // Views in file order except the last tensor of the first shard, which comes last (kernel copy).
        var order = layout.shards.flatMap { $0.tensors.map(\.name) }
        order.append(order.remove(at: layout.shards[0].tensors.count - 1))
        for name in order { try writer.write(name, view: try checkpoint.view(name)) }
        try writer.finish()
        for shard in layout.shards {
            XCTAssertEqual(try Data(contentsOf: copy.appendingPathComponent(shard.fileName)), try Data(contentsOf: source.appendingPathComponent(shard.fileName)))
            XCTAssertEqual(writer.sha256(of: shard.fileName), first.sha256(of: shard.fileName))
        }
    }

    func testMoreOpenShardsThanChunksInFlight() throws {
        // Twelve shards written a tensor at a time, round robin, through one chunk in flight: every
        // open shard holds a partial chunk, which must not starve the others.
        let planned = (0..<48).map { PlannedTensor(name: String(format: "w.%02d", $0), dtype: .u8, shape: [5000 + $0]) }
        let layout = CheckpointLayout(tensors: planned, maxShardSize: 21_000)
        XCTAssertEqual(layout.shards.count, 12)
        let data = Dictionary(uniqueKeysWithValues: planned.map { ($0.name, bytes(for: $0)) })
        let writer = CheckpointWriter(layout: layout, directory: dir, key: ResumeKey(conversion: "", input: [:]), resume: false, pool: ChunkPool(size: 4096, inFlight: 1))
        for k in 0..<4 { for shard in layout.shards where k < shard.tensors.count { try writer.write(shard.tensors[k].name, bytes: data[shard.tensors[k].name]!) } }
        try writer.finish()
        for shard in layout.shards {
            XCTAssertEqual([UInt8](try Data(contentsOf: dir.appendingPathComponent(shard.fileName))), expectedFile(shard, data))
        }
    }

    func testIndexAgreementRules() throws {
        let layout = CheckpointLayout(tensors: [PlannedTensor(name: "a", dtype: .u8, shape: [8]), PlannedTensor(name: "b", dtype: .u8, shape: [8])], maxShardSize: 8)
        let writer = CheckpointWriter(layout: layout, directory: dir)
        try writer.write("a", bytes: [UInt8](repeating: 1, count: 8))
        try writer.write("b", bytes: [UInt8](repeating: 2, count: 8))
        try writer.finish()
        let indexURL = dir.appendingPathComponent(Checkpoint.indexFileName)
        let good = try String(contentsOf: indexURL, encoding: .utf8)

        try good.replacingOccurrences(of: "model-00002-of-00002", with: "model-00009-of-00002").write(to: indexURL, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try Checkpoint(directory: dir)) {
            guard case .indexNamesMissingShard(_, "model-00009-of-00002.safetensors", "b") = $0 as? SafeTensorsError else { return XCTFail("\($0)") }
        }
        // A shard named "", "." or "..": a directory, never opened (found by an audit: the error named
        // the directory as an unreadable file, not the index and the tensor).
        for name in ["", ".", ".."] {
            try good.replacingOccurrences(of: "model-00002-of-00002.safetensors", with: name).write(to: indexURL, atomically: true, encoding: .utf8)
            XCTAssertThrowsError(try Checkpoint(directory: dir), name) {
                guard case .indexNamesMissingShard(_, name, "b") = $0 as? SafeTensorsError else { return XCTFail("\($0)") }
            }
        }
        try good.replacingOccurrences(of: "\"b\"", with: "\"c\"").write(to: indexURL, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try Checkpoint(directory: dir)) {
            guard case .shardLacksTensor(_, _, "c") = $0 as? SafeTensorsError else { return XCTFail("\($0)") }
        }
        try good.replacingOccurrences(of: "model-00002-of-00002", with: "model-00001-of-00002").write(to: indexURL, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try Checkpoint(directory: dir)) {
            guard case .shardLacksTensor(_, _, "b") = $0 as? SafeTensorsError else { return XCTFail("\($0)") }
        }
        try "{\"weight_map\": 3}".write(to: indexURL, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try Checkpoint(directory: dir)) {
            guard case .invalidIndex = $0 as? SafeTensorsError else { return XCTFail("\($0)") }
        }
    }

    func testAtomicOutputDirectory() throws {
        let final = dir.appendingPathComponent("out")
        func open(force: Bool) throws -> AtomicOutputDirectory { try AtomicOutputDirectory(final: final, inputs: [], marker: "m", force: force) }
        let out = try open(force: false)
        try Data("x".utf8).write(to: out.temporaryURL.appendingPathComponent("m"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: final.path))
        try out.commit()
        XCTAssertTrue(FileManager.default.fileExists(atPath: final.appendingPathComponent("m").path))
        XCTAssertThrowsError(try open(force: false)) {
            guard case .outputExists = $0 as? SafeTensorsError else { return XCTFail("\($0)") }
        }
        do {
            let abandoned = try open(force: true)
            try Data("y".utf8).write(to: abandoned.temporaryURL.appendingPathComponent("g"))
            abandoned.discard()
            XCTAssertFalse(FileManager.default.fileExists(atPath: abandoned.temporaryURL.path))
        }
        let replaced = try open(force: true)
        try Data("z".utf8).write(to: replaced.temporaryURL.appendingPathComponent("h"))
        try replaced.commit()
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: final.path), ["h"], "no owner record left in the output")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), ["out"], "no work directories left behind")
    }

    /// `waitForAll`, which every executable's entry and every discard calls before going on, returns
    /// only after each background task has run to its end and its captures are released (their
    /// deinit, which closes files and returns buffers, is over too).
    func testWaitForAllWaitsForTasksAndTheirCaptures() {
        final class Flags: Sendable {
            let ran = Mutex(false), released = Mutex(false)
        }
        final class Tracked: Sendable {
            let flags: Flags
            init(_ flags: Flags) { self.flags = flags }
            deinit { flags.released.withLock { $0 = true } }
        }
        let flags = Flags()
        let queue = DispatchQueue(label: "test.background")
        do {
            let tracked = Tracked(flags)
            BackgroundWrites.run(on: queue) {
                usleep(200_000)
                tracked.flags.ran.withLock { $0 = true }
            }
        }
        BackgroundWrites.waitForAll()
        XCTAssertTrue(flags.ran.withLock { $0 }, "returned before the task ran")
        XCTAssertTrue(flags.released.withLock { $0 }, "returned before the task's captures were released")
    }
}
