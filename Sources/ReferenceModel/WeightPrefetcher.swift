import DeepSeekModel
import Dispatch
import Foundation
import SafeTensors
import Synchronization

/// Reads weights the forward pass will need next into the page cache on a thread of its own, so
/// reading the checkpoint overlaps computing with it (wall time near max(read, compute), not their
/// sum). It reads through `MappedFile.prefetch` (each chunk's pages mapped in one call, then dropped
/// from this process again): the pages are cached, not left mapped into this process, so the
/// resident set does not grow; the forward pass then finds them when it maps them.
///
/// One reader serves the whole process, in the order tensors were queued over every prefetcher (one
/// per model of a comparison, one per device of a sharded model): the order the forward passes use
/// them, reference layer i, candidate layer i, reference layer i + 1. It keeps a window, not a fixed
/// batch: it reads while the bytes read and not yet used stay within `budget`, and each use
/// (`retire`) frees its bytes, so reading runs ahead through a whole MoE layer's experts (11 GB at
/// V3) without holding more than the window in the page cache. A tensor retired before its turn (an
/// expert no token chose) is skipped. (With a reader per model, the candidate's reader filled the
/// window with its next layer while the reference's was starved: 24 of 57 GB were faulted in cold.)
public final class WeightPrefetcher: Sendable {
    /// What the reader did: bytes read and seconds spent reading.
    public struct Totals: Sendable, Equatable {
        public var bytes = 0
        public var seconds = 0.0
        /// The reader's own page faults that waited for the disk: it reads by mapping pages, so these
        /// count among the process's, though no forward pass waited for them.
        public var diskFaults = 0

        /// Nothing read yet, or the figures of one read.
        public init(bytes: Int = 0, seconds: Double = 0, diskFaults: Int = 0) {
            self.bytes = bytes
            self.seconds = seconds
            self.diskFaults = diskFaults
        }

        /// Both readings together (a sharded model's devices, the two models of a comparison).
        public static func + (a: Totals, b: Totals) -> Totals {
            Totals(bytes: a.bytes + b.bytes, seconds: a.seconds + b.seconds, diskFaults: a.diskFaults + b.diskFaults)
        }

        public static func += (a: inout Totals, b: Totals) { a = a + b }
    }

    /// At most this many bytes are read ahead of use: a quarter of physical memory, at most 4 GiB
    /// (a V3 MoE layer's experts are 11 GB; reading one whole ahead would evict what is being used).
    public static let budget = Int(min(UInt64(4) << 30, ProcessInfo.processInfo.physicalMemory / 4))

    private enum Phase { case queued, read, retired }
    private struct Entry {
        let owner: Int
        /// Dropped once the entry is retired, so the queue never keeps a model's files open.
        var checkpoint: Checkpoint?
        let names: [String]
        let bytes: Int
        let budget: Int
        var phase = Phase.queued
    }
    private struct Key: Hashable {
        let owner: Int
        let name: String
    }
    /// The process's one queue of reads.
    private struct Queue {
        var entries: [Entry] = []
        var index: [Key: Int] = [:]
        /// The next entry the reader looks at.
        var next = 0
        /// Bytes read and not yet retired.
        var ahead = 0
        var readerRunning = false
        /// The owner whose entry is being read, if any.
        var reading: Int?
        var totals: [Int: Totals] = [:]
        /// The reader is waiting for room (a retire or cancel signals `roomOpened` once).
        var readerWaiting = false
        /// `drain` calls waiting for a read in flight (the read's end signals `readEnded` for each).
        var drainers = 0
    }

    private static let queue = Mutex(Queue())
    private static let reader = DispatchQueue(label: "dsconvert.weight-prefetch", qos: .utility)
    /// Signalled whenever room may have opened in the window (a retire or cancel) and whenever a read
    /// ends: the reader waits on it while the window is full, `drain` while its read is in flight.
    /// Waits also end after 100 ms, so a lost wake-up costs a moment, never a hang.
    private static let roomOpened = DispatchSemaphore(value: 0)
    private static let readEnded = DispatchSemaphore(value: 0)
    private let budget: Int
    /// This prefetcher's key in the queue: a number never reused (an object's address is, by the
    /// next prefetcher allocated there, which then found the old one's entries and totals).
    private let id: Int
    private static let ids = Atomic<Int>(0)

    /// - Parameter budget: the window this prefetcher's tensors are read in (the process-wide
    ///   window is whatever the entry being considered allows).
    public init(budget: Int = WeightPrefetcher.budget) {
        self.budget = budget
        id = Self.ids.wrappingAdd(1, ordering: .relaxed).oldValue
    }

    deinit {
        cancel()
        let id = id
        Self.queue.withLock { q in q.totals[id] = nil }
    }

    /// Queues the tensors of `checkpoint` named in `names` (each with its FP8 scale), in the order
    /// they will be used; names it does not hold, or already queued, are skipped.
    public func enqueue(_ names: [String], in checkpoint: Checkpoint) {
        let id = id, budget = budget
        let start = Self.queue.withLock { q -> Bool in
            // A name queued before and retired since (a second pass over the same model) is queued again.
            for name in names where checkpoint.contains(name) && q.index[Key(owner: id, name: name)].map({ q.entries[$0].phase == .retired }) ?? true {
                let companions = [name, name + QuantizationConfig.scaleSuffix].filter(checkpoint.contains)
                let bytes = companions.reduce(0) { $0 + (checkpoint.info($1)?.byteCount ?? 0) }
                for c in companions { q.index[Key(owner: id, name: c)] = q.entries.count }
                q.entries.append(Entry(owner: id, checkpoint: checkpoint, names: companions, bytes: bytes, budget: budget))
            }
            guard !q.readerRunning, q.next < q.entries.count else { return false }
            q.readerRunning = true
            return true
        }
        if start { Self.reader.async { Self.readLoop() } }
    }

    /// The forward pass is done with `names`: their bytes leave the window, and any not read yet
    /// will not be.
    public func retire(_ names: [String]) {
        let id = id
        let wake = Self.queue.withLock { q -> Bool in
            for name in names {
                guard let i = q.index[Key(owner: id, name: name)] else { continue }
                Self.retire(&q, i)
            }
            Self.compact(&q)
            return Self.takeReaderWaiting(&q)
        }
        if wake { Self.roomOpened.signal() }
    }

    /// Whether the reader waits for room, clearing the mark: one signal per wait.
    private static func takeReaderWaiting(_ q: inout Queue) -> Bool {
        defer { q.readerWaiting = false }
        return q.readerWaiting
    }

    private static func retire(_ q: inout Queue, _ i: Int) {
        if q.entries[i].phase == .read { q.ahead -= q.entries[i].bytes }
        q.entries[i].phase = .retired
        q.entries[i].checkpoint = nil
    }

    /// Drops the lists once every entry is retired and the reader is idle (they would otherwise
    /// grow by a model's tensors every pass).
    private static func compact(_ q: inout Queue) {
        guard !q.readerRunning, q.ahead == 0, q.entries.allSatisfy({ $0.phase == .retired }) else { return }
        q.entries = []
        q.index = [:]
        q.next = 0
    }

    /// Stops reading for this prefetcher: nothing of it queued is read after this.
    public func cancel() {
        let id = id
        let wake = Self.queue.withLock { q -> Bool in
            for i in q.entries.indices where q.entries[i].owner == id && q.entries[i].phase != .retired { Self.retire(&q, i) }
            Self.compact(&q)
            return Self.takeReaderWaiting(&q)
        }
        if wake { Self.roomOpened.signal() }
    }

    /// Bytes read ahead and not yet used, over the whole process.
    public static var bytesAhead: Int { queue.withLock { $0.ahead } }

    /// What was read so far, without waiting or stopping.
    public func totalsSoFar() -> Totals { Self.queue.withLock { $0.totals[id] ?? Totals() } }

    /// Stops reading for this prefetcher, waits for its read in progress, and returns what was read.
    public func drain() -> Totals {
        cancel()
        let id = id
        while Self.queue.withLock({ q -> Bool in
            guard q.reading == id else { return false }
            q.drainers += 1
            return true
        }) {
            _ = Self.readEnded.wait(timeout: .now() + .milliseconds(100))
        }
        return totalsSoFar()
    }

    /// Reads queued entries in order while the window has room; waits for a retire or cancel while
    /// it is full, since only the forward passes' progress frees it. Ends when nothing is left.
    private static func readLoop() {
        let scratch = UnsafeMutableRawPointer.allocate(byteCount: MappedFile.prefetchChunk, alignment: 4096)
        defer { scratch.deallocate() }
        while true {
            enum Step { case done, wait, read(Entry) }
            let step = queue.withLock { q -> Step in
                while q.next < q.entries.count, q.entries[q.next].phase == .retired { q.next += 1 }
                guard q.next < q.entries.count else {
                    q.readerRunning = false
                    compact(&q)
                    return .done
                }
                let entry = q.entries[q.next]
                // Room in the window, or nothing ahead at all (a tensor larger than the window is still read).
                guard q.ahead == 0 || q.ahead + entry.bytes <= entry.budget else {
                    q.readerWaiting = true
                    return .wait
                }
                q.ahead += entry.bytes
                q.entries[q.next].phase = .read
                q.reading = entry.owner
                q.next += 1
                return .read(entry)
            }
            switch step {
            case .done: return
            case .wait: _ = roomOpened.wait(timeout: .now() + .milliseconds(100))
            case let .read(entry):
                let began = DispatchTime.now(), faultsBefore = threadDiskFaults()
                let bytes = entry.checkpoint.map { checkpoint in entry.names.reduce(0) { $0 + checkpoint.prefetch($1, scratch: scratch) } } ?? 0
                let seconds = Double(DispatchTime.now().uptimeNanoseconds - began.uptimeNanoseconds) / 1e9
                let faults = max(0, threadDiskFaults() - faultsBefore)
                let drainers = queue.withLock { q -> Int in
                    q.totals[entry.owner, default: Totals()] += Totals(bytes: bytes, seconds: seconds, diskFaults: faults)
                    q.reading = nil
                    defer { q.drainers = 0 }
                    return q.drainers
                }
                for _ in 0..<drainers { readEnded.signal() }
            }
        }
    }

    /// Page faults of the calling thread that waited for the disk so far (`RUSAGE_THREAD`).
    private static func threadDiskFaults() -> Int {
        var usage = rusage()
        // RUSAGE_THREAD (1): Swift's Glibc module leaves out the GNU-only constant.
        return getrusage(__rusage_who_t(1), &usage) == 0 ? usage.ru_majflt : 0
    }
}
