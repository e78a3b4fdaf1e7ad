import CMappingGuard
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A read-only memory mapping of a whole file. Pages are faulted in on access, never copied.
///
/// `@unchecked Sendable` because `base` is a raw address: the mapping is read-only (PROT_READ) and
/// every property is a constant, so any thread may read through it while the object lives.
public final class MappedFile: @unchecked Sendable {
    public let path: String
    public let size: Int
    /// Start of the mapping; nil for an empty file.
    public let base: UnsafeRawPointer?
    /// The open file, kept for in-kernel copies (`copy_file_range`) of byte ranges.
    public let descriptor: Int32

    public init(path: String) throws {
        self.path = path
        // Non-blocking, so a FIFO planted as a shard is refused instead of hanging the open.
        let opened: (descriptor: Int32, entry: FileEntry)
        do { opened = try FilePath.openRegularFile(path) } catch let error as SystemCallError {
            throw SafeTensorsError.cannotOpen(file: path, reason: error.reason)
        }
        let fd = opened.descriptor
        descriptor = fd
        var mapped = false
        defer { if !mapped { close(fd) } }
        size = opened.entry.size
        if size == 0 {
            base = nil
            mapped = true
            return
        }
        let mapping = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0)
        guard let mapping, mapping != MAP_FAILED else {
            throw SystemCallError(call: "mmap", path: path, code: errno)
        }
        base = UnsafeRawPointer(mapping)
        mapped = true
        // A read past the end of a file someone truncates meanwhile faults: say which file, exit 1.
        dsconvert_guard_install()
        dsconvert_guard_watch(mapping, Int64(size), fd, path)
    }

    deinit {
        if let base {
            dsconvert_guard_unwatch(base)
            munmap(UnsafeMutableRawPointer(mutating: base), size)
        }
        close(descriptor)
    }

    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: size) }

    /// The file's size now (nil if it cannot be read): smaller than `size` when someone truncated it.
    public var currentSize: Int? {
        var info = stat()
        return fstat(descriptor, &info) == 0 ? Int(info.st_size) : nil
    }

    /// Bytes `prefetch` reads per step: one `madvise` call, or one `pread` into its scratch buffer.
    public static let prefetchChunk = 8 << 20

    /// Reads a byte range into the page cache, so that a later read through the mapping finds it
    /// there, and returns the bytes read; stops early at a read error or end of file. Each chunk of
    /// `prefetchChunk` bytes has its pages mapped in one call (`MADV_POPULATE_READ`, which waits for
    /// the disk) and dropped from this process again at once (`MADV_DONTNEED`: they stay cached), so
    /// the resident set grows by one chunk at most and no byte is copied: reading the same 5 GB shard
    /// cold, `pread` into a scratch buffer took 0.6-2.0 s of CPU time, this 0.03-0.04 s, and the copy
    /// had been a tenth of `validate`'s CPU time at V3. Where the kernel lacks that advice (Linux
    /// before 5.14) or refuses it (a file truncated meanwhile: pages past its end), the chunk is read
    /// with `pread` into `scratch` (of `prefetchChunk` bytes) instead.
    @discardableResult
    public func prefetch(_ range: Range<Int>, scratch: UnsafeMutableRawPointer) -> Int {
        var offset = max(0, range.lowerBound), total = 0
        let end = min(size, range.upperBound)
        while offset < end {
            let count = min(MappedFile.prefetchChunk, end - offset)
            let read = populateThenRelease(offset..<(offset + count))
                ? count : (try? systemCall("pread", path: path, { pread(descriptor, scratch, count, off_t(offset)) })) ?? 0
            guard read > 0 else { break }
            offset += read
            total += read
        }
        return total
    }

    /// Maps a range's pages into this process, reading any the page cache lacks, then drops them
    /// from it (also when the kernel refused part way); false if it refused (the caller then reads
    /// the range another way).
    func populateThenRelease(_ range: Range<Int>) -> Bool {
        guard let base else { return false }
        let start = range.lowerBound / Self.pageSize * Self.pageSize
        let address = UnsafeMutableRawPointer(mutating: base + start)
        defer { release(range) }
        return (try? systemCall("madvise", path: path, { madvise(address, range.upperBound - start, MADV_POPULATE_READ) })) != nil
    }

    private static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

    /// Asks the kernel to start reading a byte range into the page cache, queuing the reads without
    /// waiting for them (nor mapping the pages into this process: RSS does not grow). For scattered
    /// reads, such as an embedding lookup's rows: queued together, the disk serves them concurrently,
    /// where touching them in turn waits for one read after another (512 rows of V3's table, cold: 1.4 s).
    public func willNeed(_ range: Range<Int>) { advise(range, MADV_WILLNEED) }
    /// Tells the kernel a byte range will be read front to back soon.
    public func adviseSequential(_ range: Range<Int>) { advise(range, MADV_SEQUENTIAL) }
    /// Lets the kernel drop a range's pages from this process (they stay in the page cache),
    /// which keeps resident memory bounded while streaming a checkpoint larger than RAM.
    public func release(_ range: Range<Int>) { advise(range, MADV_DONTNEED) }

    private func advise(_ range: Range<Int>, _ advice: Int32) {
        guard let base, !range.isEmpty else { return }
        let start = range.lowerBound / Self.pageSize * Self.pageSize
        let end = min(size, range.upperBound)
        guard end > start else { return }
        madvise(UnsafeMutableRawPointer(mutating: base + start), end - start, advice)
    }
}

/// A zero-copy view of one tensor's bytes inside a mapped file (`@unchecked Sendable` as its
/// `MappedFile` is: read-only bytes, kept mapped by `owner`).
public struct TensorView: @unchecked Sendable {
    public let info: TensorInfo
    /// The tensor's bytes in the mapping; valid while this view (or its checkpoint) is alive, so
    /// do not keep the buffer past a view taken from a temporary checkpoint.
    public let bytes: UnsafeRawBufferPointer
    /// Keeps the mapping alive for as long as the view exists.
    public let owner: MappedFile

    public var name: String { info.name }
    public var dtype: DType { info.dtype }
    public var shape: [Int] { info.shape }
}

/// One safetensors file, validated on open and memory-mapped.
public final class SafeTensorsFile: Sendable {
    public let path: String
    public let header: SafeTensorsHeader
    public let mapping: MappedFile
    private let byName: [String: Int]

    public init(path: String) throws {
        mapping = try MappedFile(path: path)
        self.path = path
        header = try SafeTensorsHeader.parse(prefix: mapping.bytes, fileSize: mapping.size, file: path)
        // The parsed header is all that is kept of it: its pages (up to 100 MB) leave the resident set.
        mapping.release(0..<header.dataStart)
        var index: [String: Int] = [:]
        for (i, info) in header.tensors.enumerated() { index[info.name] = i }
        byName = index
    }

    public var tensors: [TensorInfo] { header.tensors }
    public var metadata: [String: String]? { header.metadata }
    public func contains(_ name: String) -> Bool { byName[name] != nil }
    public func info(_ name: String) -> TensorInfo? { byName[name].map { header.tensors[$0] } }

    /// The bytes of tensor `name`, without copying.
    public func view(_ name: String) throws -> TensorView {
        guard let i = byName[name] else { throw SafeTensorsError.tensorNotFound(tensor: name) }
        return view(header.tensors[i])
    }

    func view(_ info: TensorInfo) -> TensorView {
        TensorView(info: info, bytes: UnsafeRawBufferPointer(rebasing: mapping.bytes[fileRange(of: info)]), owner: mapping)
    }

    /// Where a tensor's data lies in the file (and so in the mapping).
    private func fileRange(of info: TensorInfo) -> Range<Int> {
        let start = header.dataStart + info.dataOffsets.lowerBound
        return start..<(start + info.byteCount)
    }

    /// Reads tensor `name`'s bytes into the page cache (see `MappedFile.prefetch`); returns the bytes read.
    @discardableResult
    public func prefetch(_ name: String, scratch: UnsafeMutableRawPointer) -> Int {
        guard let info = info(name) else { return 0 }
        return mapping.prefetch(fileRange(of: info), scratch: scratch)
    }

    /// Asks the kernel to start reading `bytes` (offsets within tensor `name`'s data, clamped to it)
    /// into the page cache, without waiting (see `MappedFile.willNeed`).
    public func willNeed(_ name: String, bytes: Range<Int>) {
        guard let info = info(name) else { return }
        let whole = fileRange(of: info), within = bytes.clamped(to: 0..<info.byteCount)
        mapping.willNeed((whole.lowerBound + within.lowerBound)..<(whole.lowerBound + within.upperBound))
    }

    /// Drops the pages of `name` from this process's resident set after it has been consumed.
    public func release(_ name: String) {
        guard let info = info(name) else { return }
        mapping.release(fileRange(of: info))
    }
}
