import CSystemCalls
import Foundation
#if canImport(Glibc)
import Glibc
#endif

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

/// One output file: its header bytes and every tensor's final position.
public struct ShardPlan: Sendable {
    public let fileName: String
    /// Tensors in file order (dtype descending, then name), with their data offsets.
    public let tensors: [TensorInfo]
    public let headerBytes: [UInt8]
    public var dataStart: Int { 8 + headerBytes.count }
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
    }
}

/// The files of an output checkpoint, split like Hugging Face's `save_pretrained`.
public struct CheckpointLayout: Sendable {
    public let shards: [ShardPlan]
    /// True when an index file is written (more than one shard).
    public var isSharded: Bool { shards.count > 1 }
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
/// Every tensor's final offset is known from the plan, so data goes straight from the producer to
/// its place in the file with `pwrite`: nothing is buffered, and memory stays bounded by the
/// tensors being produced. A shard is flushed and closed as soon as its last tensor is written.
public final class CheckpointWriter: @unchecked Sendable {
    public let layout: CheckpointLayout
    public let directory: URL
    private let lock = NSLock()
    private var placement: [String: (shard: Int, info: TensorInfo)] = [:]
    private var remaining: [Int]
    private var descriptors: [Int: Int32] = [:]
    private var written = Set<String>()
    private var hashes: [String: String] = [:]
    private let journal: URL
    /// Finished shards are synced, hashed and journaled here, overlapping the next shard's work.
    private let finisher = DispatchQueue(label: "dsconvert.checkpoint-writer.finisher")
    private var finisherError: Error?
    /// Running SHA-256 of each open shard, fed while its bytes arrive in file order.
    private var hashers: [Int: ShardHasher] = [:]
    /// Bounds the computed buffers waiting to be hashed (each is kept alive until then).
    private let hashBacklog = DispatchSemaphore(value: 4)

    /// A shard's SHA-256, computed on its own queue from the buffers being written (computed data, or
    /// the input's mapping for copied tensors), so a finished shard is not read back to be hashed.
    /// When tensors arrive out of file order it gives up and the finished file is hashed instead.
    private final class ShardHasher: @unchecked Sendable {
        var sha = SHA256()
        var next: Int
        var inOrder = true
        let queue: DispatchQueue
        init(shard: Int, prefix: [UInt8]) {
            next = prefix.count
            queue = DispatchQueue(label: "dsconvert.checkpoint-writer.sha256-\(shard)")
            sha.update(prefix)
        }
    }

    /// The journal of finished shards in the work directory (removed before the output is committed).
    public static let journalName = ".dsconvert-journal.jsonl"

    /// - Parameters:
    ///   - fingerprint: identifies the conversion (stage, options, input); a journal written under
    ///     another fingerprint is discarded.
    ///   - resume: keep the shards an interrupted run finished, verified by their recorded SHA-256.
    public init(layout: CheckpointLayout, directory: URL, fingerprint: String = "", resume: Bool = false) {
        self.layout = layout
        self.directory = directory
        journal = directory.appendingPathComponent(Self.journalName)
        remaining = layout.shards.map { $0.tensors.count }
        for (i, shard) in layout.shards.enumerated() {
            for info in shard.tensors { placement[info.name] = (i, info) }
        }
        if resume {
            removeStrayFiles()
            adoptFinishedShards(fingerprint: fingerprint)
        }
        let header = "{\"fingerprint\":\(CompactJSON.quoted(fingerprint))}\n"
        var lines = header
        for shard in layout.shards where hashes[shard.fileName] != nil {
            lines += journalLine(shard)
        }
        try? Data(lines.utf8).write(to: journal)
    }

    private func headerHash(_ shard: ShardPlan) -> String { shard.headerBytes.withUnsafeBytes { SHA256.hex($0) } }

    private func journalLine(_ shard: ShardPlan) -> String {
        "{\"file\":\(CompactJSON.quoted(shard.fileName)),\"header_sha256\":\"\(headerHash(shard))\",\"sha256\":\"\(hashes[shard.fileName]!)\"}\n"
    }

    /// Files an interrupted run left that are not its shards or journal (a killed atomic write's temp
    /// file, a half-written config): removed, so they cannot end up in the resumed output.
    private func removeStrayFiles() {
        let keep = Set(layout.shards.map(\.fileName) + [Self.journalName])
        let fm = FileManager.default
        for name in (try? fm.contentsOfDirectory(atPath: directory.path)) ?? [] where !keep.contains(name) {
            var isDirectory: ObjCBool = false
            let url = directory.appendingPathComponent(name)
            if fm.fileExists(atPath: url.path, isDirectory: &isDirectory), !isDirectory.boolValue { try? fm.removeItem(at: url) }
        }
    }

    /// Marks complete every shard the journal lists under the same fingerprint whose header matches
    /// the plan and whose file still hashes to the recorded value.
    private func adoptFinishedShards(fingerprint: String) {
        guard let text = try? String(contentsOf: journal, encoding: .utf8) else { return }
        let lines = text.split(separator: "\n").compactMap { try? JSONParser.parse(Data($0.utf8)) }
        guard lines.first?["fingerprint"]?.stringValue == fingerprint else { return }
        for entry in lines.dropFirst() {
            guard let file = entry["file"]?.stringValue, let sha = entry["sha256"]?.stringValue,
                  let i = layout.shards.firstIndex(where: { $0.fileName == file }),
                  entry["header_sha256"]?.stringValue == headerHash(layout.shards[i]) else { continue }
            let path = directory.appendingPathComponent(file).path
            guard let attributes = try? FileManager.default.attributesOfItem(atPath: path),
                  (attributes[.size] as? Int) == layout.shards[i].fileSize,
                  (try? SHA256.hex(fileAt: path)) == sha else { continue }
            hashes[file] = sha
            remaining[i] = 0
            for info in layout.shards[i].tensors { written.insert(info.name) }
        }
    }

    /// True when `name` is already on disk (written by this run or kept from an interrupted one).
    public func isWritten(_ name: String) -> Bool {
        lock.lock(); defer { lock.unlock() }
        return written.contains(name)
    }

    /// SHA-256 of a finished shard.
    public func sha256(of file: String) -> String? {
        lock.lock(); defer { lock.unlock() }
        return hashes[file]
    }

    deinit {
        for fd in descriptors.values { close(fd) }
    }

    private func path(_ shard: Int) -> String { directory.appendingPathComponent(layout.shards[shard].fileName).path }

    private func descriptor(_ shard: Int) throws -> Int32 {
        if let fd = descriptors[shard] { return fd }
        let plan = layout.shards[shard]
        let fd = open(path(shard), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw SafeTensorsError.writeFailed(file: path(shard), reason: String(cString: strerror(errno))) }
        descriptors[shard] = fd
        let prefix = withUnsafeBytes(of: UInt64(plan.headerBytes.count).littleEndian) { Array($0) } + plan.headerBytes
        try writeAll(fd: fd, bytes: prefix, at: 0, file: path(shard))
        hashers[shard] = ShardHasher(shard: shard, prefix: prefix)
        return fd
    }

    private func writeAll(fd: Int32, bytes: [UInt8], at offset: Int, file: String) throws {
        try bytes.withUnsafeBytes { try writeAll(fd: fd, buffer: $0, at: offset, file: file) }
    }

    private func writeAll(fd: Int32, buffer: UnsafeRawBufferPointer, at offset: Int, file: String) throws {
        var done = 0
        while done < buffer.count {
            let n = pwrite(fd, buffer.baseAddress! + done, min(buffer.count - done, 1 << 30), off_t(offset + done))
            if n < 0 {
                if errno == EINTR { continue }
                throw SafeTensorsError.writeFailed(file: file, reason: String(cString: strerror(errno)))
            }
            if n == 0 { throw SafeTensorsError.writeFailed(file: file, reason: "no progress (disk full?)") }
            done += n
        }
    }

    /// Claims tensor `name` for writing `count` bytes: its descriptor, absolute offset, file, and the
    /// shard's hasher when these bytes continue the file in order.
    private func begin(_ name: String, count: Int) throws -> (shard: Int, fd: Int32, offset: Int, file: String, hasher: ShardHasher?) {
        lock.lock()
        defer { lock.unlock() }
        guard let (shard, info) = placement[name] else {
            throw SafeTensorsError.writePlanViolation(file: directory.path, tensor: name, reason: "not in the output plan")
        }
        let file = path(shard)
        guard count == info.byteCount else {
            throw SafeTensorsError.writePlanViolation(file: file, tensor: name, reason: "produced \(count) bytes, planned \(info.byteCount)")
        }
        guard written.insert(name).inserted else {
            throw SafeTensorsError.writePlanViolation(file: file, tensor: name, reason: "written twice")
        }
        let fd = try descriptor(shard)
        let offset = layout.shards[shard].dataStart + info.dataOffsets.lowerBound
        var ordered: ShardHasher?
        if let hasher = hashers[shard], hasher.inOrder {
            if hasher.next == offset {
                hasher.next += count
                ordered = hasher
            } else {
                hasher.inOrder = false
            }
        }
        return (shard, fd, offset, file, ordered)
    }

    /// Hashes `bytes` after everything queued before for the same shard; `owner` keeps the memory
    /// alive until then.
    private func hash(_ hasher: ShardHasher?, _ bytes: UnsafeRawBufferPointer, owner: AnyObject) {
        guard let hasher, !bytes.isEmpty else { return }
        hashBacklog.wait()
        let buffer = SendableBuffer(bytes: bytes, owner: owner)
        hasher.queue.async { [hashBacklog] in
            withExtendedLifetime(buffer.owner) {
                // A mapped input is read a window at a time and its pages dropped after, so hashing
                // a large copied tensor keeps the resident set flat.
                if let mapping = buffer.owner as? MappedFile, let base = mapping.base {
                    let start = buffer.bytes.baseAddress! - base
                    var done = 0
                    while done < buffer.bytes.count {
                        let n = min(64 << 20, buffer.bytes.count - done)
                        hasher.sha.update(UnsafeRawBufferPointer(rebasing: buffer.bytes[done..<(done + n)]))
                        mapping.release((start + done)..<(start + done + n))
                        done += n
                    }
                } else {
                    hasher.sha.update(buffer.bytes)
                }
            }
            hashBacklog.signal()
        }
    }

    /// Marks one tensor of `shard` done; the last one hands the shard to the finisher.
    private func end(_ shard: Int, fd: Int32) {
        lock.lock()
        remaining[shard] -= 1
        let finished = remaining[shard] == 0
        let hasher = finished ? hashers.removeValue(forKey: shard) : nil
        if finished { descriptors[shard] = nil }
        lock.unlock()
        guard finished else { return }
        finisher.async { [self] in
            do {
                let ok = fsync(fd) == 0
                let reason = String(cString: strerror(errno))
                close(fd)
                if !ok { throw SafeTensorsError.writeFailed(file: path(shard), reason: reason) }
                var digest: String?
                if let hasher, hasher.inOrder, hasher.next == layout.shards[shard].fileSize {
                    digest = hasher.queue.sync { SHA256.hexString(hasher.sha.finalize()) }
                }
                try recordFinished(shard, sha: digest)
            } catch {
                lock.lock()
                if finisherError == nil { finisherError = error }
                lock.unlock()
            }
        }
    }

    /// Writes the complete data of tensor `name`.
    public func write(_ name: String, bytes: UnsafeRawBufferPointer) throws {
        let (shard, fd, offset, file, hasher) = try begin(name, count: bytes.count)
        if !bytes.isEmpty { try writeAll(fd: fd, buffer: bytes, at: offset, file: file) }
        startWriteback(fd: fd, offset: offset, count: bytes.count)
        // The caller's buffer is not ours to keep: hashed before returning.
        if let hasher, !bytes.isEmpty { hasher.queue.sync { hasher.sha.update(bytes) } }
        end(shard, fd: fd)
    }

    /// Writes the complete data of tensor `name` from an array, hashed in the background.
    public func write(_ name: String, bytes: [UInt8]) throws {
        let (shard, fd, offset, file, hasher) = try begin(name, count: bytes.count)
        let owner = ArrayOwner(bytes)
        try owner.bytes.withUnsafeBytes { buffer in
            if !buffer.isEmpty { try writeAll(fd: fd, buffer: buffer, at: offset, file: file) }
            startWriteback(fd: fd, offset: offset, count: buffer.count)
            hash(hasher, buffer, owner: owner)
        }
        end(shard, fd: fd)
    }

    /// Copies a tensor from its input file: in the kernel with `copy_file_range` (no page faults, no
    /// user-space copy, as `cp` does), else 64 MiB at a time from the mapping, dropping each window's
    /// input pages once written, so copying a large tensor (an embedding) keeps memory flat.
    public func write(_ name: String, view: TensorView) throws {
        let (shard, fd, offset, file, hasher) = try begin(name, count: view.bytes.count)
        let window = 64 << 20
        var done = 0
        let base = view.bytes.baseAddress.map { $0 - view.owner.base! } ?? 0
        var inOffset = Int64(base), outOffset = Int64(offset)
        while done < view.bytes.count {
            let n = dsconvert_copy_file_range(view.owner.descriptor, &inOffset, fd, &outOffset, view.bytes.count - done)
            if n > 0 { done += Int(n); continue }
            if n < 0, errno == EINTR { continue }
            if n < 0, ![EXDEV, ENOSYS, EINVAL, EOPNOTSUPP].contains(errno) {
                throw SafeTensorsError.writeFailed(file: file, reason: String(cString: strerror(errno)))
            }
            break  // not supported here: fall back to writing from the mapping
        }
        while done < view.bytes.count {
            let n = min(window, view.bytes.count - done)
            try writeAll(fd: fd, buffer: UnsafeRawBufferPointer(rebasing: view.bytes[done..<(done + n)]), at: offset + done, file: file)
            view.owner.release((base + done)..<(base + done + n))
            done += n
        }
        startWriteback(fd: fd, offset: offset, count: view.bytes.count)
        // Hashed from the input's mapping: the page cache's pages mapped, not copied.
        hash(hasher, view.bytes, owner: view.owner)
        end(shard, fd: fd)
    }

    /// Starts writeback of a written range without waiting, so the shard's fsync at the end finds
    /// most of it on disk already instead of flushing the whole file on the critical path.
    private func startWriteback(fd: Int32, offset: Int, count: Int) {
        if count >= 1 << 20 { _ = dsconvert_start_writeback(fd, Int64(offset), Int64(count)) }
    }

    /// Waits for shard `file` to be finished (synced and hashed) and returns its SHA-256.
    public func waitForSHA256(of file: String) throws -> String {
        finisher.sync {}
        if let error = finisherError { throw error }
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
        lock.lock()
        let pending = plan.tensors.filter { !written.contains($0.name) }
        lock.unlock()
        guard !pending.isEmpty else { return }
        try? FileManager.default.removeItem(at: target)
        if link(original.path, target.path) != 0 {
            do { try FileManager.default.copyItem(at: original, to: target) } catch {
                throw SafeTensorsError.writeFailed(file: target.path, reason: (error as NSError).localizedDescription)
            }
        }
        lock.lock()
        for info in plan.tensors { written.insert(info.name) }
        remaining[index] = 0
        lock.unlock()
        try recordFinished(index, sha: sha)
    }

    /// Hashes a finished shard and appends it to the journal, durably, so `--resume` can keep it.
    private func recordFinished(_ shard: Int, sha known: String? = nil) throws {
        let plan = layout.shards[shard]
        let sha = try known ?? SHA256.hex(fileAt: directory.appendingPathComponent(plan.fileName).path)
        lock.lock()
        hashes[plan.fileName] = sha
        let line = journalLine(plan)
        let fd = open(journal.path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        if fd >= 0 {
            _ = line.utf8CString.withUnsafeBufferPointer { Glibc.write(fd, $0.baseAddress!, $0.count - 1) }
            fsync(fd)
            close(fd)
        }
        lock.unlock()
    }

    /// Checks every planned tensor was written, then writes the index (for a sharded layout).
    public func finish() throws {
        finisher.sync {}
        if let error = finisherError { throw error }
        lock.lock()
        let missing = placement.keys.filter { !written.contains($0) }.sorted()
        lock.unlock()
        if let first = missing.first {
            throw SafeTensorsError.writePlanViolation(file: directory.path, tensor: first, reason: "planned but never written (\(missing.count) missing)")
        }
        // A shard with no tensors at all never had a write to create it.
        for (i, shard) in layout.shards.enumerated() where shard.tensors.isEmpty && hashes[shard.fileName] == nil {
            let fd = try descriptor(i)
            fsync(fd)
            close(fd)
            descriptors[i] = nil
            hashers[i] = nil
            try recordFinished(i)
        }
        if layout.isSharded {
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

/// Writes small complete tensor sets (forward outputs, goldens) to one safetensors file atomically:
/// into a hidden sibling first, renamed over `url` when complete.
public enum SafeTensorsFileWriter {
    public static func write(_ tensors: [(PlannedTensor, [UInt8])], to url: URL, metadata: [String: String]? = CheckpointLayout.defaultMetadata) throws {
        let directory = url.deletingLastPathComponent()
        let temporary = ".\(url.lastPathComponent).partial-\(getpid())"
        let layout = CheckpointLayout(singleFile: temporary, tensors: tensors.map(\.0), metadata: metadata)
        let writer = CheckpointWriter(layout: layout, directory: directory)
        let temporaryURL = directory.appendingPathComponent(temporary)
        do {
            for (tensor, bytes) in tensors { try writer.write(tensor.name, bytes: bytes) }
            try writer.finish()
            guard rename(temporaryURL.path, url.path) == 0 else {
                throw SafeTensorsError.writeFailed(file: url.path, reason: String(cString: strerror(errno)))
            }
        } catch {
            try? FileManager.default.removeItem(at: temporaryURL)
            throw error
        }
    }
}

/// A buffer handed to a hashing queue, with what keeps its memory alive.
private struct SendableBuffer: @unchecked Sendable {
    let bytes: UnsafeRawBufferPointer
    let owner: AnyObject
}

/// Holds an array's storage (and so its address) while a queue reads it.
private final class ArrayOwner: @unchecked Sendable {
    let bytes: [UInt8]
    init(_ bytes: [UInt8]) { self.bytes = bytes }
}
