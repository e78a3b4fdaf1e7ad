import CSystemCalls
import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// One written weight file as dsconvert's records list it (`dsconvert.json`, `placement.json`):
/// its name in the output, its size and its SHA-256.
public struct FileRecord: Codable, Equatable, Sendable {
    public var name: String
    public var bytes: Int
    public var sha256: String

    public init(name: String, bytes: Int, sha256: String) {
        self.name = name
        self.bytes = bytes
        self.sha256 = sha256
    }
}

/// A tensor to be written: everything but its data.
public struct PlannedTensor: Equatable, Sendable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]

    public init(name: String, dtype: DType, shape: [Int]) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
    }

    public var byteCount: Int { SafeTensorsHeader.byteCount(shape: shape, dtype: dtype) ?? 0 }
}

/// One output file: the bytes before its data section and every tensor's final position.
///
/// The writer only needs those two, so any container whose header can be computed before its data
/// plugs in: safetensors (`init(fileName:tensors:metadata:)`), or a format laid out elsewhere
/// (`init(fileName:prefix:extents:)`, which GGUF's export uses).
public struct ShardPlan: Sendable {
    public let fileName: String
    /// Tensors in file order, with their data offsets (for safetensors: dtype descending, then name).
    public let tensors: [TensorInfo]
    /// The format's header: for safetensors the JSON after the 8-byte length; otherwise the prefix.
    public let headerBytes: [UInt8]
    /// Everything before the data section, written first.
    public let prefix: [UInt8]
    public var dataStart: Int { prefix.count }
    public var fileSize: Int { dataStart + (tensors.last?.dataOffsets.upperBound ?? 0) }

    /// Lays out one file exactly as the reference serializer would for the same tensors.
    public init(fileName: String, tensors planned: [PlannedTensor], metadata: [String: String]?) {
        self.fileName = fileName
        let ordered = planned.sorted { $0.dtype != $1.dtype ? $0.dtype > $1.dtype : $0.name < $1.name }
        var offset = 0
        var infos: [TensorInfo] = []
        for tensor in ordered {
            infos.append(TensorInfo(name: tensor.name, dtype: tensor.dtype, shape: tensor.shape, dataOffsets: offset..<(offset + tensor.byteCount)))
            offset += tensor.byteCount
        }
        tensors = infos
        headerBytes = SafeTensorsHeader.serialize(tensors: infos, metadata: metadata)
        prefix = withUnsafeBytes(of: UInt64(headerBytes.count).littleEndian) { Array($0) } + headerBytes
    }

    /// A file of another format: `prefix` (its complete header), then each extent's bytes in order,
    /// back to back. An extent is what its producer writes for one named item, padding included;
    /// it is recorded as a `U8` vector of that many bytes.
    public init(fileName: String, prefix: [UInt8], extents: [(name: String, bytes: Int)]) {
        self.fileName = fileName
        self.prefix = prefix
        headerBytes = prefix
        var offset = 0
        tensors = extents.map { extent in
            defer { offset += extent.bytes }
            return TensorInfo(name: extent.name, dtype: .u8, shape: [extent.bytes], dataOffsets: offset..<(offset + extent.bytes))
        }
    }
}

/// The files of an output checkpoint, split like Hugging Face's `save_pretrained`.
public struct CheckpointLayout: Sendable {
    public let shards: [ShardPlan]
    /// True when `model.safetensors.index.json` is written (a safetensors layout of more than one shard).
    public let hasIndex: Bool
    public var totalTensorBytes: Int { shards.reduce(0) { $0 + $1.tensors.reduce(0) { $0 + $1.byteCount } } }

    /// Hugging Face's default `max_shard_size` ("5GB").
    public static let defaultMaxShardSize = 5_000_000_000
    /// What transformers writes in every shard's metadata.
    public static let defaultMetadata = ["format": "pt"]

    /// Splits tensors, in production order, into shards of at most `maxShardSize` bytes of data,
    /// with huggingface_hub's rule: fill greedily, a tensor larger than the limit gets a shard of its own.
    public init(tensors: [PlannedTensor], maxShardSize: Int = defaultMaxShardSize, metadata: [String: String]? = defaultMetadata) {
        self.init(groups: [tensors], maxShardSize: maxShardSize, metadata: metadata)
    }

    /// As `init(tensors:)`, with every non-empty group starting a shard of its own.
    public init(groups tensorGroups: [[PlannedTensor]], maxShardSize: Int = defaultMaxShardSize, metadata: [String: String]? = defaultMetadata) {
        var groups: [[PlannedTensor]] = []
        var current: [PlannedTensor] = []
        var currentSize = 0
        for (g, group) in tensorGroups.enumerated() {
        if g > 0, !current.isEmpty {
            groups.append(current)
            current = []
            currentSize = 0
        }
        for tensor in group {
            let size = tensor.byteCount
            if size > maxShardSize {
                groups.append([tensor])
                continue
            }
            if currentSize + size > maxShardSize, !current.isEmpty {
                groups.append(current)
                current = []
                currentSize = 0
            }
            current.append(tensor)
            currentSize += size
        }
        }
        if !current.isEmpty || groups.isEmpty { groups.append(current) }
        hasIndex = groups.count > 1
        if groups.count == 1 {
            shards = [ShardPlan(fileName: Checkpoint.singleFileName, tensors: groups[0], metadata: metadata)]
        } else {
            let n = groups.count
            shards = groups.enumerated().map { i, group in
                ShardPlan(fileName: String(format: "model-%05d-of-%05d.safetensors", i + 1, n), tensors: group, metadata: metadata)
            }
        }
    }

    /// One file named `fileName`, whatever its size.
    public init(singleFile fileName: String, tensors: [PlannedTensor], metadata: [String: String]? = defaultMetadata) {
        shards = [ShardPlan(fileName: fileName, tensors: tensors, metadata: metadata)]
        hasIndex = false
    }

    /// Files laid out by another format (no index is written; the files are the whole output).
    public init(files: [ShardPlan]) {
        shards = files
        hasIndex = false
    }

    /// `model.safetensors.index.json` as transformers writes it (`json.dumps(indent=2, sort_keys=True)`).
    public func indexJSON() -> String {
        var entries: [(String, String)] = []
        for shard in shards { for t in shard.tensors { entries.append((t.name, shard.fileName)) } }
        entries.sort { $0.0 < $1.0 }
        var out = "{\n  \"metadata\": {\n    \"total_size\": \(totalTensorBytes)\n  },\n  \"weight_map\": {"
        out += entries.map { "\n    \(CompactJSON.quoted($0.0)): \(CompactJSON.quoted($0.1))" }.joined(separator: ",")
        out += entries.isEmpty ? "}\n}\n" : "\n  }\n}\n"
        return out
    }
}

/// Writes a planned checkpoint into a directory, tensor by tensor, in any order and from any thread.
///
/// Every tensor's final offset is known from the plan, so each shard is one `ShardStream`: bytes
/// that continue the file are staged in reused aligned chunks, hashed and written with direct I/O
/// in the background; anything else is written in place. Memory stays bounded by the chunk pool
/// and the tensors being produced. A shard is synced and closed as soon as its last tensor is written.
public final class CheckpointWriter: Sendable {
    public let layout: CheckpointLayout
    public let directory: URL
    /// Each planned tensor's shard and entry.
    private let placement: [String: (shard: Int, info: TensorInfo)]
    private let state: Mutex<State>
    private let journal: URL
    private let pool: ChunkPool
    /// Finished shards are synced, hashed and journaled here, overlapping the next shard's work.
    private let finisher = DispatchQueue(label: "dsconvert.checkpoint-writer.finisher")
    /// The buffer piece-by-piece writes fill, kept for the writer's life: allocating one per tensor
    /// (tens of MB each) let malloc's heap grow by gigabytes over a checkpoint (its mmap threshold
    /// rises to the freed size, so later buffers come from fragmenting arenas).
    private let pieceBuffer = Mutex<[UInt8]>([])
    /// Serializes journal appends (the finisher's, and shards adopted or finished on the caller's thread).
    private let journalAppends = Mutex(())

    /// What the writers and the finisher share: which tensors are on disk, how many each shard
    /// still waits for, the open streams, the finished shards' hashes, the first background error.
    private struct State {
        var remaining: [Int]
        var streams: [Int: ShardStream] = [:]
        var written = Set<String>()
        var hashes: [String: String] = [:]
        var finisherError: (any Error)?
    }

    /// The journal of finished shards in the work directory (removed before the output is committed).
    public static let journalName = ".dsconvert-journal.jsonl"

    /// - Parameters:
    ///   - key: identifies the conversion and its input; a journal written under another key is
    ///     discarded (and the reason said), so no shard of another input or option set is kept.
    ///   - resume: keep the shards an interrupted run finished, verified by their recorded SHA-256.
    public convenience init(layout: CheckpointLayout, directory: URL, key: ResumeKey = ResumeKey(conversion: "", input: [:]), resume: Bool = false) {
        self.init(layout: layout, directory: directory, key: key, resume: resume, pool: .shared)
    }

    /// - Parameter pool: where the staged chunks come from (tests use small chunks to cross many boundaries).
    init(layout: CheckpointLayout, directory: URL, key: ResumeKey, resume: Bool, pool: ChunkPool) {
        self.pool = pool
        self.layout = layout
        self.directory = directory
        journal = directory.appendingPathComponent(Self.journalName)
        var placement: [String: (shard: Int, info: TensorInfo)] = [:]
        for (i, shard) in layout.shards.enumerated() {
            for info in shard.tensors { placement[info.name] = (i, info) }
        }
        self.placement = placement
        var initial = State(remaining: layout.shards.map { $0.tensors.count })
        if resume {
            Self.removeStrayFiles(layout: layout, directory: directory)
            Self.adoptFinishedShards(key: key, layout: layout, directory: directory, journal: journal, into: &initial)
        }
        var lines = key.journalHeader
        for shard in layout.shards {
            if let sha = initial.hashes[shard.fileName] { lines += Self.journalLine(shard, sha: sha) }
        }
        state = Mutex(initial)
        // The adopted journal may be a hard link to a file outside the output, which writing through
        // it would overwrite: it is unlinked, and the new one written as a new file (appends then go
        // to it, or, if it could not be written, to a file they create).
        _ = unlink(journal.path)
        try? AtomicFile.write(Data(lines.utf8), to: journal)
    }

    private static func headerHash(_ shard: ShardPlan) -> String { shard.headerBytes.withUnsafeBytes { SHA256.hex($0) } }

    private static func journalLine(_ shard: ShardPlan, sha: String) -> String {
        "{\"file\":\(CompactJSON.quoted(shard.fileName)),\"header_sha256\":\"\(headerHash(shard))\",\"sha256\":\"\(sha)\"}\n"
    }

    /// What an interrupted run left that is not its shards or journal (a killed atomic write's temp
    /// file, a half-written config, a directory no run writes here): removed, so it cannot end up in
    /// the resumed output.
    /// Best effort: the adopted directory was already cleared of links, special files and other
    /// users' subdirectories, so what remains is this user's own, which unlinking does not fail on.
    private static func removeStrayFiles(layout: CheckpointLayout, directory: URL) {
        try? AtomicOutputDirectory.removeEntries(of: directory, except: Set(layout.shards.map(\.fileName) + [Self.journalName, AtomicOutputDirectory.ownerFileName]))
    }

    /// Marks complete every shard the journal lists under the same key whose header matches the
    /// plan and whose file still hashes to the recorded value.
    private static func adoptFinishedShards(key: ResumeKey, layout: CheckpointLayout, directory: URL, journal: URL, into state: inout State) {
        guard let data = try? FilePath.readRegularFile(journal.path) else { return }
        let lines = String(decoding: data, as: UTF8.self).split(separator: "\n").compactMap { try? JSONParser.parse(Data($0.utf8)) }
        if let reason = key.mismatch(recorded: lines.first) {
            Diagnostics.note("note: \(directory.path): resume starts over: \(reason)")
            return
        }
        for entry in lines.dropFirst() {
            guard let file = entry["file"]?.stringValue, let sha = entry["sha256"]?.stringValue,
                  let i = layout.shards.firstIndex(where: { $0.fileName == file }),
                  entry["header_sha256"]?.stringValue == headerHash(layout.shards[i]) else { continue }
            let path = directory.appendingPathComponent(file).path
            guard let entry = FileEntry.lstat(path), entry.kind == .regular, entry.size == layout.shards[i].fileSize,
                  (try? SHA256.hex(fileAt: path)) == sha else { continue }
            state.hashes[file] = sha
            state.remaining[i] = 0
            for info in layout.shards[i].tensors { state.written.insert(info.name) }
        }
    }

    /// True when `name` is already on disk (written by this run or kept from an interrupted one).
    public func isWritten(_ name: String) -> Bool {
        state.withLock { $0.written.contains(name) }
    }

    /// SHA-256 of a finished shard.
    public func sha256(of file: String) -> String? {
        state.withLock { $0.hashes[file] }
    }

    private func path(_ shard: Int) -> String { directory.appendingPathComponent(layout.shards[shard].fileName).path }

    /// The shard's stream, created (file and header) on first use; called inside `state`'s lock.
    private func stream(_ shard: Int, _ state: inout State) throws -> ShardStream {
        if let stream = state.streams[shard] { return stream }
        let plan = layout.shards[shard]
        let stream = try ShardStream(path: path(shard), prefix: plan.prefix, fileSize: plan.fileSize, pool: pool)
        state.streams[shard] = stream
        return stream
    }

    /// Claims tensor `name` for writing `count` bytes: its shard, stream and absolute offset.
    private func begin(_ name: String, count: Int) throws -> (shard: Int, stream: ShardStream, offset: Int) {
        try state.withLock { state in
            // A background error first: it is what went wrong, whatever this write would say.
            if let error = state.finisherError { throw error }
            guard let (shard, info) = placement[name] else {
                throw SafeTensorsError.writePlanViolation(file: directory.path, tensor: name, reason: "not in the output plan")
            }
            guard count == info.byteCount else {
                throw SafeTensorsError.writePlanViolation(file: path(shard), tensor: name, reason: "produced \(count) bytes, planned \(info.byteCount)")
            }
            guard state.written.insert(name).inserted else {
                throw SafeTensorsError.writePlanViolation(file: path(shard), tensor: name, reason: "written twice")
            }
            return (shard, try stream(shard, &state), layout.shards[shard].dataStart + info.dataOffsets.lowerBound)
        }
    }

    /// Marks one tensor of `shard` done; the last one hands the shard to the finisher.
    private func end(_ shard: Int) {
        let stream = state.withLock { state in
            state.remaining[shard] -= 1
            return state.remaining[shard] == 0 ? state.streams.removeValue(forKey: shard) : nil
        }
        guard let stream else { return }
        stream.finishStaging()
        BackgroundWrites.run(on: finisher) { [self] in
            do {
                try recordFinished(shard, sha: try stream.complete())
            } catch {
                state.withLock { state in if state.finisherError == nil { state.finisherError = error } }
            }
        }
    }

    /// Writes the complete data of tensor `name` (copied: the caller keeps its buffer).
    public func write(_ name: String, bytes: UnsafeRawBufferPointer) throws {
        let (shard, stream, offset) = try begin(name, count: bytes.count)
        try stream.write(bytes, at: offset)
        end(shard)
    }

    /// Writes tensor `name` piece by piece: `produce` fills each consecutive piece of at most
    /// `pieceBytes` (given its offset in the tensor), so a large computed tensor never exists whole.
    public func write(_ name: String, count: Int, pieceBytes: Int, produce: (Int, UnsafeMutableRawBufferPointer) throws -> Void) throws {
        let (shard, stream, offset) = try begin(name, count: count)
        // One piece-by-piece write at a time owns the buffer: taken out, and given back when done.
        let needed = max(1, min(pieceBytes, count))
        var buffer = pieceBuffer.withLock { kept in
            let taken = kept
            kept = []
            return taken
        }
        if buffer.count < needed { buffer = [UInt8](repeating: 0, count: needed) }
        defer { pieceBuffer.withLock { kept in if kept.isEmpty { kept = buffer } } }
        try buffer.withUnsafeMutableBytes { raw in
            for start in stride(from: 0, to: count, by: max(1, pieceBytes)) {
                let piece = UnsafeMutableRawBufferPointer(rebasing: raw[0..<min(pieceBytes, count - start)])
                try produce(start, piece)
                try stream.write(UnsafeRawBufferPointer(piece), at: offset + start)
            }
        }
        end(shard)
    }

    /// Writes tensor `name` as its producer makes it: `produce` hands consecutive byte ranges to
    /// `append`, which stages them in file order (no piece size is imposed, and the producer's buffer
    /// is copied before `append` returns). The pieces must add up to the planned size exactly.
    public func write(_ name: String, count: Int, appending produce: (_ append: (UnsafeRawBufferPointer) throws -> Void) throws -> Void) throws {
        let (shard, stream, offset) = try begin(name, count: count)
        var done = 0
        try produce { bytes in
            guard done + bytes.count <= count else {
                throw SafeTensorsError.writePlanViolation(file: path(shard), tensor: name, reason: "produced more than the planned \(count) bytes")
            }
            try stream.write(bytes, at: offset + done)
            done += bytes.count
        }
        guard done == count else {
            throw SafeTensorsError.writePlanViolation(file: path(shard), tensor: name, reason: "produced \(done) bytes, planned \(count)")
        }
        end(shard)
    }

    /// Writes the complete data of tensor `name` from an array.
    public func write(_ name: String, bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write(name, bytes: $0) }
    }

    /// Copies a tensor from its input file with `pread` into the staged chunks (no page faults on
    /// the input's mapping, one copy), or in the kernel (`copy_file_range`) when out of file order.
    public func write(_ name: String, view: TensorView) throws {
        let (shard, stream, offset) = try begin(name, count: view.bytes.count)
        let base = view.bytes.baseAddress.map { $0 - view.owner.base! } ?? 0
        if !view.bytes.isEmpty {
            try stream.copy(from: view.owner, inputOffset: base, count: view.bytes.count, at: offset)
        }
        end(shard)
    }

    /// Waits for shard `file` to be finished (synced and hashed) and returns its SHA-256.
    public func waitForSHA256(of file: String) throws -> String {
        try waitForShards()
        guard let sha = sha256(of: file) else {
            throw SafeTensorsError.writePlanViolation(file: directory.appendingPathComponent(file).path, tensor: "", reason: "shard not finished")
        }
        return sha
    }

    /// Completes shard `index` as a hard link to `original`, a finished file with the same planned
    /// header and data (a copy where links are not possible).
    public func adoptShard(_ index: Int, identicalTo original: URL, sha256 sha: String) throws {
        let plan = layout.shards[index]
        let target = directory.appendingPathComponent(plan.fileName)
        let pending = state.withLock { state in plan.tensors.filter { !state.written.contains($0.name) } }
        guard !pending.isEmpty else { return }
        try? FileManager.default.removeItem(at: target)
        if link(original.path, target.path) != 0 {
            do { try FileManager.default.copyItem(at: original, to: target) } catch {
                throw SafeTensorsError.writeFailed(file: target.path, reason: (error as NSError).localizedDescription)
            }
        }
        state.withLock { state in
            for info in plan.tensors { state.written.insert(info.name) }
            state.remaining[index] = 0
        }
        try recordFinished(index, sha: sha)
    }

    /// Hashes a finished shard and appends it to the journal (synced; best effort, see `append`), so
    /// `--resume` can keep it.
    private func recordFinished(_ shard: Int, sha known: String? = nil) throws {
        let plan = layout.shards[shard]
        let sha = try known ?? SHA256.hex(fileAt: directory.appendingPathComponent(plan.fileName).path)
        state.withLock { $0.hashes[plan.fileName] = sha }
        journalAppends.withLock { _ in Self.append(Self.journalLine(plan, sha: sha), to: journal) }
    }

    /// Appends one line to the journal and syncs it. Best effort: the journal only lets `--resume`
    /// skip finished shards, so a line that cannot be written (a full disk) costs that shard being
    /// written again, never a wrong output; the shard's own write reports the disk's error.
    private static func append(_ line: String, to journal: URL) {
        guard let fd = try? systemCall("open", path: journal.path, { open(journal.path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o644) }) else { return }
        defer { close(fd) }
        // A line cut short is taken back, so the next line does not run on from it (a reader would
        // then lose both).
        let start = lseek(fd, 0, SEEK_END)
        do {
            try Array(line.utf8).withUnsafeBytes { try FilePath.writeAll(fd, $0, path: journal.path) }
        } catch {
            if start >= 0 { _ = ftruncate(fd, start) }
            return
        }
        _ = try? systemCall("fsync", path: journal.path) { fsync(fd) }
    }

    /// Waits until every shard handed over so far is written, synced and hashed, and throws the
    /// first error met in the background (a full disk shows here, naming its shard). Sinks call it
    /// before writing anything else, so that error is the one reported, not a later one it caused.
    public func waitForShards() throws {
        finisher.sync {}
        if let error = state.withLock({ $0.finisherError }) { throw error }
    }

    /// Checks every planned tensor was written, then writes the index (for a sharded layout).
    public func finish() throws {
        try waitForShards()
        let missing = state.withLock { state in placement.keys.filter { !state.written.contains($0) }.sorted() }
        if let first = missing.first {
            throw SafeTensorsError.writePlanViolation(file: directory.path, tensor: first, reason: "planned but never written (\(missing.count) missing)")
        }
        // A shard with no tensors at all never had a write to create it.
        for (i, shard) in layout.shards.enumerated() where shard.tensors.isEmpty && sha256(of: shard.fileName) == nil {
            let empty = try state.withLock { state in
                defer { state.streams[i] = nil }
                return try stream(i, &state)
            }
            empty.finishStaging()
            try recordFinished(i, sha: try empty.complete())
        }
        if layout.hasIndex {
            try AtomicFile.write(Data(layout.indexJSON().utf8), to: directory.appendingPathComponent(Checkpoint.indexFileName))
        }
        try? FileManager.default.removeItem(at: journal)
    }
}

/// Whole small files (configs, indexes, manifests) written durably.
public enum AtomicFile {
    public static func write(_ data: Data, to url: URL) throws {
        do {
            try data.write(to: url, options: .atomic)
        } catch {
            throw SafeTensorsError.writeFailed(file: url.path, reason: (error as NSError).localizedDescription)
        }
    }
}

/// Writes small complete tensor sets (forward outputs, goldens) to one safetensors file atomically.
///
/// The file is written in a fresh private directory beside `url` (so the writer's journal and
/// temporary file never meet a name someone else planted in the parent) and renamed over `url`
/// when complete; the directory is removed either way.
public enum SafeTensorsFileWriter {
    /// `tensors` are written from their arrays in place (a forward pass's logits are the size of its
    /// largest array: a copy for the writer would double the peak).
    public static func write(_ tensors: [(PlannedTensor, any TensorBytes)], to url: URL, metadata: [String: String]? = CheckpointLayout.defaultMetadata) throws {
        let work = url.deletingLastPathComponent().appendingPathComponent("\(AtomicOutputDirectory.workPrefix)\(url.lastPathComponent)-\(getpid())")
        try systemCall("mkdir", path: work.path) { mkdir(work.path, 0o700) }
        defer {
            BackgroundWrites.waitForAll()
            try? DirectoryTree.remove(work)
        }
        let layout = CheckpointLayout(singleFile: url.lastPathComponent, tensors: tensors.map(\.0), metadata: metadata)
        let writer = CheckpointWriter(layout: layout, directory: work)
        for (tensor, bytes) in tensors { try bytes.withTensorBytes { try writer.write(tensor.name, bytes: $0) } }
        try writer.finish()
        let written = work.appendingPathComponent(url.lastPathComponent)
        try systemCall("rename", path: url.path) { rename(written.path, url.path) }
    }
}

/// A tensor's bytes as `SafeTensorsFileWriter` reads them: an array of plain values, in place.
public protocol TensorBytes {
    func withTensorBytes(_ body: (UnsafeRawBufferPointer) throws -> Void) throws
}

/// A plain value a tensor array holds (its bytes are the tensor's, in the machine's little-endian order).
public protocol TensorElement: BitwiseCopyable {}
extension Float: TensorElement {}
extension Int32: TensorElement {}
extension UInt8: TensorElement {}
extension UInt16: TensorElement {}

extension Array: TensorBytes where Element: TensorElement {
    public func withTensorBytes(_ body: (UnsafeRawBufferPointer) throws -> Void) throws { try withUnsafeBytes(body) }
}
