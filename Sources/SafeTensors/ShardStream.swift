import CSystemCalls
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Reused page-aligned buffers for shard streams, one pool for the whole process, so memory stays
/// bounded however many writers (a shard run has one per device) and whatever the checkpoint size.
///
/// Taking a buffer never waits: every open stream holds one partial chunk, and a writer may have
/// any number of shards open. The bound comes from `beginFlight`, which caps the chunks handed to
/// the hash and I/O queues; those always drain, so waiting there cannot deadlock.
final class ChunkPool: @unchecked Sendable {
    /// Direct I/O needs buffers, lengths and file offsets aligned to the device's logical block
    /// (512 B on virtio, 4 KiB on most NVMe): 4 KiB satisfies both.
    static let alignment = 4096
    static let shared = ChunkPool()

    let size: Int
    private let keep: Int
    private var free: [UnsafeMutableRawPointer] = []
    private let lock = NSLock()
    private let flights: DispatchSemaphore

    /// - Parameters:
    ///   - size: bytes per chunk, a multiple of `alignment`.
    ///   - inFlight: chunks being hashed or written at once.
    init(size: Int = 8 << 20, inFlight: Int = 8) {
        precondition(size > 0 && size % Self.alignment == 0)
        self.size = size
        keep = inFlight + 2
        flights = DispatchSemaphore(value: inFlight)
    }

    /// A free buffer (a reused one when there is one).
    func take() -> UnsafeMutableRawPointer {
        lock.lock()
        let reused = free.popLast()
        lock.unlock()
        if let reused { return reused }
        var pointer: UnsafeMutableRawPointer?
        guard posix_memalign(&pointer, Self.alignment, size) == 0, let pointer else { fatalError("out of memory for a \(size)-byte write buffer") }
        return pointer
    }

    func give(_ buffer: UnsafeMutableRawPointer) {
        lock.lock()
        let kept = free.count < keep
        if kept { free.append(buffer) }
        lock.unlock()
        if !kept { Glibc.free(buffer) }
    }

    /// Waits for room to hand one more chunk to the background queues.
    func beginFlight() { flights.wait() }
    func endFlight() { flights.signal() }
}

/// One output file written front to back through aligned chunks.
///
/// In-order bytes are gathered into a pool chunk; each full chunk is hashed (SHA-256, one serial
/// queue, so the digest follows file order) and written with `O_DIRECT` on another queue at the
/// same time. Direct I/O skips the kernel's copy into fresh page-cache pages and its writeback,
/// which cost a full core per GB/s on this class of VM, and the closing `fsync` then has almost
/// nothing left to flush. The last partial chunk, and any tensor that arrives out of file order,
/// go through an ordinary descriptor; a shard written out of order is hashed by reading it back.
/// Where the file system refuses `O_DIRECT` (tmpfs), every chunk takes the ordinary path.
final class ShardStream: @unchecked Sendable {
    let path: String
    let fileSize: Int
    private let pool: ChunkPool
    private let fd: Int32
    private let directFD: Int32
    private let lock = NSLock()
    private var chunk: UnsafeMutableRawPointer?
    private var chunkStart = 0
    private var filled = 0
    /// The next file offset an in-order write continues at.
    private var next = 0
    private var inOrder = true
    private var sha = SHA256()
    private let hashQueue: DispatchQueue
    private let ioQueue: DispatchQueue
    private let inFlight = DispatchGroup()
    private let errorLock = NSLock()
    private var firstError: Error?

    /// Creates the file and stages its 8-byte length and header.
    init(path: String, prefix: [UInt8], fileSize: Int, pool: ChunkPool) throws {
        self.path = path
        self.fileSize = fileSize
        self.pool = pool
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw SafeTensorsError.writeFailed(file: path, reason: String(cString: strerror(errno))) }
        directFD = dsconvert_open_direct(path)
        hashQueue = DispatchQueue(label: "dsconvert.shard-stream.sha256")
        ioQueue = DispatchQueue(label: "dsconvert.shard-stream.io")
        try prefix.withUnsafeBytes { try write($0, at: 0) }
    }

    deinit {
        inFlight.wait()
        if let chunk { pool.give(chunk) }
        if directFD >= 0 { Glibc.close(directFD) }
        Glibc.close(fd)
    }

    /// The first error a background write met.
    var error: Error? {
        errorLock.lock(); defer { errorLock.unlock() }
        return firstError
    }

    private func record(_ error: Error) {
        errorLock.lock()
        if firstError == nil { firstError = error }
        errorLock.unlock()
    }

    /// Writes `bytes` at file offset `offset`: staged when it continues the file, else written directly.
    func write(_ bytes: UnsafeRawBufferPointer, at offset: Int) throws {
        lock.lock()
        defer { lock.unlock() }
        if let error { throw error }
        guard continues(at: offset) else {
            try pwriteAll(fd, bytes, at: offset)
            return
        }
        var done = 0
        while done < bytes.count {
            let target = stage()
            let n = min(pool.size - filled, bytes.count - done)
            target.copyMemory(from: bytes.baseAddress! + done, byteCount: n)
            advance(n)
            done += n
        }
    }

    /// Writes `count` bytes of file `input` (from `inputOffset`) at `offset`: read straight into
    /// the staged chunks when they continue the file, else copied in the kernel.
    func copy(from source: MappedFile, inputOffset: Int, count: Int, at offset: Int) throws {
        let input = source.descriptor
        lock.lock()
        defer { lock.unlock() }
        if let error { throw error }
        guard continues(at: offset) else {
            try copyFileRange(from: source, inputOffset: inputOffset, count: count, at: offset)
            return
        }
        var done = 0
        while done < count {
            let target = stage()
            let n = pread(input, target, min(pool.size - filled, count - done), off_t(inputOffset + done))
            if n < 0, errno == EINTR { continue }
            guard n > 0 else {
                // The input ends before its header said: someone truncated it during the run.
                if n == 0 { throw SafeTensorsError.inputChanged(file: source.path, openedSize: source.size, size: source.currentSize ?? 0) }
                throw SafeTensorsError.writeFailed(file: path, reason: "reading \(source.path): \(String(cString: strerror(errno)))")
            }
            advance(n)
            done += n
        }
    }

    /// True when a write at `offset` continues the file in order; on the first one that does not,
    /// the staged bytes are flushed and the stream switches to direct positional writes for good.
    private func continues(at offset: Int) -> Bool {
        if inOrder, offset == next { return true }
        if inOrder {
            inOrder = false
            if chunk != nil { submit() }
        }
        return false
    }

    /// Where the next staged byte goes (a pool chunk, taken when none is open).
    private func stage() -> UnsafeMutableRawPointer {
        if chunk == nil {
            chunk = pool.take()
            chunkStart = next
            filled = 0
        }
        return chunk! + filled
    }

    private func advance(_ n: Int) {
        filled += n
        next += n
        if filled == pool.size { submit() }
    }

    /// Hands the open chunk to the hash and I/O queues; the pool gets it back when both are done.
    private func submit() {
        guard let buffer = chunk else { return }
        let start = chunkStart, count = filled
        chunk = nil
        filled = 0
        pool.beginFlight()
        let pending = PendingChunk(buffer: buffer, count: count, pool: pool, uses: inOrder ? 2 : 1)
        let direct = directFD >= 0 && count % ChunkPool.alignment == 0 && start % ChunkPool.alignment == 0
        if inOrder {
            inFlight.enter()
            hashQueue.async { [self] in
                sha.update(pending.bytes)
                pending.done()
                inFlight.leave()
            }
        }
        inFlight.enter()
        ioQueue.async { [self] in
            do {
                if direct {
                    try directWrite(pending.bytes, at: start)
                } else {
                    try pwriteAll(fd, pending.bytes, at: start)
                    _ = dsconvert_start_writeback(fd, Int64(start), Int64(count))
                }
            } catch {
                record(error)
            }
            pending.done()
            inFlight.leave()
        }
    }

    /// Direct write of a whole aligned chunk; where direct I/O stops, the ordinary descriptor
    /// finishes the chunk.
    private func directWrite(_ bytes: UnsafeRawBufferPointer, at offset: Int) throws {
        let done = try pwriteAll(directFD, bytes, at: offset)
        if done < bytes.count { try pwriteAll(fd, UnsafeRawBufferPointer(rebasing: bytes[done...]), at: offset + done) }
    }

    /// Writes `bytes` at `offset` and returns how many were written: all of them, except through the
    /// direct descriptor, which stops early on EINVAL (a file system or device with stricter
    /// alignment) or after a short write off the block grid.
    @discardableResult
    private func pwriteAll(_ descriptor: Int32, _ bytes: UnsafeRawBufferPointer, at offset: Int) throws -> Int {
        let direct = descriptor == directFD
        var done = 0
        while done < bytes.count {
            let n = pwrite(descriptor, bytes.baseAddress! + done, min(bytes.count - done, 1 << 30), off_t(offset + done))
            if n < 0, errno == EINTR { continue }
            if n < 0, direct, errno == EINVAL { break }
            if n < 0 { throw SafeTensorsError.writeFailed(file: path, reason: String(cString: strerror(errno))) }
            if n == 0 { throw SafeTensorsError.writeFailed(file: path, reason: "no progress (disk full?)") }
            done += n
            if direct, done % ChunkPool.alignment != 0 { break }
        }
        return done
    }

    /// An out-of-order copy in the kernel (`copy_file_range`, as `cp` does), with a read-and-write
    /// fallback where the kernel cannot copy between these files.
    private func copyFileRange(from source: MappedFile, inputOffset: Int, count: Int, at offset: Int) throws {
        let input = source.descriptor
        var inOffset = Int64(inputOffset), outOffset = Int64(offset)
        var done = 0
        while done < count {
            let n = dsconvert_copy_file_range(input, &inOffset, fd, &outOffset, count - done)
            if n > 0 { done += Int(n); continue }
            if n < 0, errno == EINTR { continue }
            if n < 0, ![EXDEV, ENOSYS, EINVAL, EOPNOTSUPP].contains(errno) {
                throw SafeTensorsError.writeFailed(file: path, reason: String(cString: strerror(errno)))
            }
            break
        }
        if done < count {
            let buffer = pool.take()
            defer { pool.give(buffer) }
            while done < count {
                let n = pread(input, buffer, min(pool.size, count - done), off_t(inputOffset + done))
                if n < 0, errno == EINTR { continue }
                if n == 0 { throw SafeTensorsError.inputChanged(file: source.path, openedSize: source.size, size: source.currentSize ?? 0) }
                guard n > 0 else { throw SafeTensorsError.writeFailed(file: path, reason: "reading \(source.path): \(String(cString: strerror(errno)))") }
                try pwriteAll(fd, UnsafeRawBufferPointer(start: buffer, count: n), at: offset + done)
                done += n
            }
        }
    }

    /// Stages no more bytes: submits the last partial chunk. Called once every tensor is written.
    func finishStaging() {
        lock.lock()
        submit()
        lock.unlock()
    }

    /// Waits for every chunk, syncs the file, and returns its SHA-256 when it was written in order
    /// and completely (nil otherwise: the caller hashes the file).
    func complete() throws -> String? {
        inFlight.wait()
        if let error { throw error }
        guard fsync(fd) == 0 else { throw SafeTensorsError.writeFailed(file: path, reason: String(cString: strerror(errno))) }
        lock.lock()
        defer { lock.unlock() }
        guard inOrder, next == fileSize else { return nil }
        return SHA256.hexString(sha.finalize())
    }
}

/// A chunk shared by the hash and I/O queues, returned to the pool by whichever finishes last.
private final class PendingChunk: @unchecked Sendable {
    let buffer: UnsafeMutableRawPointer
    let pool: ChunkPool
    private var uses: Int
    private let lock = NSLock()
    /// The chunk's staged bytes.
    let bytes: UnsafeRawBufferPointer

    init(buffer: UnsafeMutableRawPointer, count: Int, pool: ChunkPool, uses: Int) {
        self.buffer = buffer
        bytes = UnsafeRawBufferPointer(start: buffer, count: count)
        self.pool = pool
        self.uses = uses
    }

    func done() {
        lock.lock()
        uses -= 1
        let last = uses == 0
        lock.unlock()
        if last {
            pool.give(buffer)
            pool.endFlight()
        }
    }
}
