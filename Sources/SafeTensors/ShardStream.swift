import CSystemCalls
import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Every writer's work in the background, process-wide: chunks being hashed and written, finished
/// shards being synced, hashed and journaled. A failed run unwinds while that work may still run;
/// removing its work directory under it left files behind (a journal line appended after the
/// removal), and exiting under it crashed in a hashing thread. So a work directory is removed, and
/// a command exits, only after `waitForAll` (every task ends on its own: none waits for the caller).
public enum BackgroundWrites {
    static let group = DispatchGroup()

    /// Blocks until every background write started so far has ended.
    public static func waitForAll() { group.wait() }

    /// Runs `body` on `queue`, counted in the group. The task's captures (a stream, a writer) are
    /// released before it leaves the group, so what their deinit does (closing a file, returning a
    /// buffer) is also over when `waitForAll` returns.
    static func run(on queue: DispatchQueue, _ body: @escaping @Sendable () -> Void) {
        let task = Task(body)
        group.enter()
        queue.async {
            task.run()
            group.leave()
        }
    }

    /// A task's body, dropped as soon as it has run.
    private final class Task: Sendable {
        private let body: Mutex<(@Sendable () -> Void)?>
        init(_ body: @escaping @Sendable () -> Void) { self.body = Mutex(body) }
        func run() {
            let work = body.withLock { slot in defer { slot = nil }; return slot }
            work?()
        }
    }
}

/// One page-aligned pool buffer, passed between the pool, the stream that stages into it and the
/// background hash and write tasks. It is `@unchecked Sendable` because it is a raw address: the
/// pool's protocol gives each buffer exactly one holder at a time (taken from the pool, staged into
/// by one stream under its lock, then read by the hash and write tasks, returned by whichever
/// finishes last), so no two threads ever write its bytes at once.
struct ChunkBuffer: @unchecked Sendable {
    let pointer: UnsafeMutableRawPointer
}

/// Reused page-aligned buffers for shard streams, one pool for the whole process, so memory stays
/// bounded however many writers (a shard run has one per device) and whatever the checkpoint size.
///
/// Taking a buffer never waits: every open stream holds one partial chunk, and a writer may have
/// any number of shards open. The bound comes from `beginFlight`, which caps the chunks handed to
/// the hash and I/O queues; those always drain, so waiting there cannot deadlock.
final class ChunkPool: Sendable {
    /// Direct I/O needs buffers, lengths and file offsets aligned to the device's logical block
    /// (512 B on virtio, 4 KiB on most NVMe): 4 KiB satisfies both.
    static let alignment = 4096
    static let shared = ChunkPool()

    let size: Int
    private let keep: Int
    private let free = Mutex<[ChunkBuffer]>([])
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

    deinit { for buffer in free.withLock({ $0 }) { Glibc.free(buffer.pointer) } }

    /// A free buffer (a reused one when there is one).
    func take() -> ChunkBuffer {
        if let reused = free.withLock({ $0.popLast() }) { return reused }
        var pointer: UnsafeMutableRawPointer?
        guard posix_memalign(&pointer, Self.alignment, size) == 0, let pointer else { fatalError("out of memory for a \(size)-byte write buffer") }
        return ChunkBuffer(pointer: pointer)
    }

    func give(_ buffer: ChunkBuffer) {
        let kept = free.withLock { free in
            guard free.count < keep else { return false }
            free.append(buffer)
            return true
        }
        if !kept { Glibc.free(buffer.pointer) }
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
final class ShardStream: Sendable {
    let path: String
    let fileSize: Int
    private let pool: ChunkPool
    private let fd: Int32
    private let directFD: Int32
    private let hashQueue: DispatchQueue
    private let ioQueue: DispatchQueue
    private let inFlight = DispatchGroup()
    /// What is staged and where the file continues; held for a whole write, so writes to one
    /// stream are serialized in the order they take it.
    private let staging = Mutex(Staging())
    /// Updated on `hashQueue` only (one chunk after another, in file order), read once all are done.
    private let sha = Mutex(SHA256())
    private let firstError = Mutex<(any Error)?>(nil)

    /// The open chunk and the file position staged bytes continue at.
    private struct Staging {
        var chunk: ChunkBuffer?
        var chunkStart = 0
        var filled = 0
        /// The next file offset an in-order write continues at.
        var next = 0
        var inOrder = true
    }

    /// Creates the file and stages its 8-byte length and header.
    init(path: String, prefix: [UInt8], fileSize: Int, pool: ChunkPool) throws {
        self.path = path
        self.fileSize = fileSize
        self.pool = pool
        // A fresh file, never one already there: a shard left by an interrupted run (or a hard link
        // someone planted in its place, which truncating would write through) is unlinked first.
        do { try systemCall("unlink", path: path) { unlink(path) } } catch let error as SystemCallError where error.code == ENOENT {}
        fd = try systemCall("open", path: path) { open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o644) }
        directFD = dsconvert_open_direct(path)
        hashQueue = DispatchQueue(label: "dsconvert.shard-stream.sha256")
        ioQueue = DispatchQueue(label: "dsconvert.shard-stream.io")
        try prefix.withUnsafeBytes { try write($0, at: 0) }
    }

    deinit {
        inFlight.wait()
        if let chunk = staging.withLock({ $0.chunk }) { pool.give(chunk) }
        if directFD >= 0 { Glibc.close(directFD) }
        Glibc.close(fd)
    }

    /// The first error a background write met.
    var error: (any Error)? { firstError.withLock { $0 } }

    private func record(_ error: any Error) {
        firstError.withLock { first in if first == nil { first = error } }
    }

    /// Writes `bytes` at file offset `offset`: staged when it continues the file, else written directly.
    func write(_ bytes: UnsafeRawBufferPointer, at offset: Int) throws {
        try staging.withLock { state in
            if let error { throw error }
            guard continues(at: offset, &state) else {
                try pwriteAll(fd, bytes, at: offset)
                return
            }
            var done = 0
            while done < bytes.count {
                let target = stage(&state)
                let n = min(pool.size - state.filled, bytes.count - done)
                target.copyMemory(from: bytes.baseAddress! + done, byteCount: n)
                advance(n, &state)
                done += n
            }
        }
    }

    /// Writes `count` bytes of file `input` (from `inputOffset`) at `offset`: read straight into
    /// the staged chunks when they continue the file, else copied in the kernel.
    func copy(from source: MappedFile, inputOffset: Int, count: Int, at offset: Int) throws {
        try staging.withLock { state in
            if let error { throw error }
            guard continues(at: offset, &state) else {
                try copyFileRange(from: source, inputOffset: inputOffset, count: count, at: offset)
                return
            }
            var done = 0
            while done < count {
                let target = stage(&state)
                let n = try read(source, into: target, count: min(pool.size - state.filled, count - done), at: inputOffset + done)
                advance(n, &state)
                done += n
            }
        }
    }

    /// Up to `count` bytes of `source` at `offset` into `target`: at least one, or the input was
    /// truncated under the run (it ends before its header said).
    private func read(_ source: MappedFile, into target: UnsafeMutableRawPointer, count: Int, at offset: Int) throws -> Int {
        let n = try systemCall("pread", path: source.path) { pread(source.descriptor, target, count, off_t(offset)) }
        guard n > 0 else { throw SafeTensorsError.inputChanged(file: source.path, openedSize: source.size, size: source.currentSize ?? 0) }
        return n
    }

    /// True when a write at `offset` continues the file in order; on the first one that does not,
    /// the staged bytes are flushed and the stream switches to direct positional writes for good.
    private func continues(at offset: Int, _ state: inout Staging) -> Bool {
        if state.inOrder, offset == state.next { return true }
        if state.inOrder {
            state.inOrder = false
            if state.chunk != nil { submit(&state) }
        }
        return false
    }

    /// Where the next staged byte goes (a pool chunk, taken when none is open).
    private func stage(_ state: inout Staging) -> UnsafeMutableRawPointer {
        let chunk = state.chunk ?? pool.take()
        if state.chunk == nil {
            state.chunk = chunk
            state.chunkStart = state.next
            state.filled = 0
        }
        return chunk.pointer + state.filled
    }

    private func advance(_ n: Int, _ state: inout Staging) {
        state.filled += n
        state.next += n
        if state.filled == pool.size { submit(&state) }
    }

    /// Hands the open chunk to the hash and I/O queues; the pool gets it back when both are done.
    private func submit(_ state: inout Staging) {
        guard let buffer = state.chunk else { return }
        let start = state.chunkStart, count = state.filled, inOrder = state.inOrder
        state.chunk = nil
        state.filled = 0
        pool.beginFlight()
        let pending = PendingChunk(buffer: buffer, count: count, pool: pool, uses: inOrder ? 2 : 1)
        let direct = directFD >= 0 && count % ChunkPool.alignment == 0 && start % ChunkPool.alignment == 0
        if inOrder {
            inFlight.enter()
            BackgroundWrites.run(on: hashQueue) { [self] in
                sha.withLock { $0.update(pending.bytes) }
                pending.done()
                inFlight.leave()
            }
        }
        inFlight.enter()
        BackgroundWrites.run(on: ioQueue) { [self] in
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
            let n: Int
            do {
                n = try systemCall("pwrite", path: path) { pwrite(descriptor, bytes.baseAddress! + done, min(bytes.count - done, 1 << 30), off_t(offset + done)) }
            } catch let error as SystemCallError where direct && error.code == EINVAL {
                break
            }
            if n == 0 { throw SafeTensorsError.writeFailed(file: path, reason: "no progress (disk full?)") }
            done += n
            if direct, done % ChunkPool.alignment != 0 { break }
        }
        return done
    }

    /// An out-of-order copy in the kernel (`copy_file_range`, as `cp` does), with a read-and-write
    /// fallback where the kernel cannot copy between these files.
    private func copyFileRange(from source: MappedFile, inputOffset: Int, count: Int, at offset: Int) throws {
        var inOffset = Int64(inputOffset), outOffset = Int64(offset)
        // Whatever the kernel did not copy (it cannot, or the input ended) is read and written; a
        // truncated input then shows as `inputChanged`.
        var done = try FilePath.copyInKernel(from: source.descriptor, at: &inOffset, to: fd, at: &outOffset, count: count, path: path).copied
        if done < count {
            let buffer = pool.take()
            defer { pool.give(buffer) }
            while done < count {
                let n = try read(source, into: buffer.pointer, count: min(pool.size, count - done), at: inputOffset + done)
                try pwriteAll(fd, UnsafeRawBufferPointer(start: buffer.pointer, count: n), at: offset + done)
                done += n
            }
        }
    }

    /// Stages no more bytes: submits the last partial chunk. Called once every tensor is written.
    func finishStaging() {
        staging.withLock { submit(&$0) }
    }

    /// Waits for every chunk, syncs the file, and returns its SHA-256 when it was written in order
    /// and completely (nil otherwise: the caller hashes the file).
    func complete() throws -> String? {
        inFlight.wait()
        if let error { throw error }
        try systemCall("fsync", path: path) { fsync(fd) }
        guard staging.withLock({ $0.inOrder && $0.next == fileSize }) else { return nil }
        return sha.withLock { SHA256.hexString($0.finalize()) }
    }
}

/// A chunk shared by the hash and I/O queues, returned to the pool by whichever finishes last.
private final class PendingChunk: Sendable {
    let buffer: ChunkBuffer
    let pool: ChunkPool
    let count: Int
    private let uses: Atomic<Int>

    init(buffer: ChunkBuffer, count: Int, pool: ChunkPool, uses: Int) {
        self.buffer = buffer
        self.count = count
        self.pool = pool
        self.uses = Atomic(uses)
    }

    /// The chunk's staged bytes.
    var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: buffer.pointer, count: count) }

    func done() {
        guard uses.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 else { return }
        pool.give(buffer)
        pool.endFlight()
    }
}
