import DeepSeekModel
import Dispatch
import Foundation
import SafeTensors
import Synchronization

/// Reads weights the forward pass will need next into the page cache on a thread of its own, so
/// reading the checkpoint overlaps computing with it (wall time near max(read, compute), not their
/// sum). It reads with `pread` into a scratch buffer: the pages are cached, not mapped into this
/// process, so the resident set does not grow; the forward pass then finds them when it maps them.
///
/// It keeps a window, not a fixed batch: tensors are read in the order they were queued while the
/// bytes read and not yet used, over every prefetcher of the process, stay within `budget`; each use
/// (`retire`) frees its bytes from the window, so reading runs ahead of the forward pass through a
/// whole MoE layer's experts (11 GB at V3) without holding more than the window in the page cache.
/// A tensor retired before it was read (an expert no token chose) is skipped.
public final class WeightPrefetcher: Sendable {
    /// What the reader did: bytes read and seconds spent reading.
    public struct Totals: Sendable, Equatable {
        public var bytes = 0
        public var seconds = 0.0
    }

    /// At most this many bytes are read ahead of use: a quarter of physical memory, at most 4 GiB
    /// (a V3 MoE layer's experts are 11 GB; reading one whole ahead would evict what is being used).
    public static let budget = Int(min(UInt64(4) << 30, ProcessInfo.processInfo.physicalMemory / 4))

    private enum Phase { case queued, read, retired }
    private struct Entry {
        let names: [String]
        let bytes: Int
        var phase = Phase.queued
    }
    private struct State {
        var entries: [Entry] = []
        /// Entry of each queued tensor name (and of its FP8 scale).
        var index: [String: Int] = [:]
        /// The next entry the reader looks at.
        var next = 0
        var readerRunning = false
        var cancelled = false
        var totals = Totals()
    }

    private let queue = DispatchQueue(label: "dsconvert.weight-prefetch", qos: .utility)
    private let state = Mutex(State())
    private let budget: Int
    /// Bytes read and not yet retired, over every prefetcher of the process (one per device of a
    /// sharded model, one per model of a comparison): the budget bounds them all together.
    private static let ahead = Mutex(0)

    public init(budget: Int = WeightPrefetcher.budget) { self.budget = budget }

    deinit { cancel() }

    /// Queues the tensors of `checkpoint` named in `names` (each with its FP8 scale), in the order
    /// they will be used; names it does not hold, or already queued, are skipped.
    public func enqueue(_ names: [String], in checkpoint: Checkpoint) {
        let start = state.withLock { s -> Bool in
            for name in names where checkpoint.contains(name) && s.index[name] == nil {
                let companions = [name, name + QuantizationConfig.scaleSuffix].filter(checkpoint.contains)
                let bytes = companions.reduce(0) { $0 + (checkpoint.info($1)?.byteCount ?? 0) }
                for c in companions { s.index[c] = s.entries.count }
                s.entries.append(Entry(names: companions, bytes: bytes))
            }
            guard !s.readerRunning, !s.cancelled, s.next < s.entries.count else { return false }
            s.readerRunning = true
            return true
        }
        if start { queue.async { [self] in readLoop(checkpoint) } }
    }

    /// The forward pass is done with `names`: their bytes leave the window, and any not read yet
    /// will not be.
    public func retire(_ names: [String]) {
        let freed = state.withLock { s -> Int in
            var freed = 0
            for name in names {
                guard let i = s.index[name], s.entries[i].phase != .retired else { continue }
                if s.entries[i].phase == .read { freed += s.entries[i].bytes }
                s.entries[i].phase = .retired
            }
            return freed
        }
        if freed > 0 { Self.ahead.withLock { $0 -= freed } }
    }

    /// Stops reading: nothing queued is read after this.
    public func cancel() {
        let freed = state.withLock { s -> Int in
            s.cancelled = true
            var freed = 0
            for i in s.entries.indices where s.entries[i].phase == .read {
                freed += s.entries[i].bytes
                s.entries[i].phase = .retired
            }
            return freed
        }
        if freed > 0 { Self.ahead.withLock { $0 -= freed } }
    }

    /// What was read so far, without waiting or stopping.
    public func totalsSoFar() -> Totals { state.withLock { $0.totals } }

    /// Stops reading, waits for the read in progress, and returns what was read.
    public func drain() -> Totals {
        cancel()
        queue.sync {}
        return state.withLock { $0.totals }
    }

    /// Reads queued entries in order while the window has room; waits (polling every millisecond)
    /// while it is full, since only the forward pass's progress frees it.
    private func readLoop(_ checkpoint: Checkpoint) {
        let scratch = UnsafeMutableRawPointer.allocate(byteCount: MappedFile.prefetchChunk, alignment: 4096)
        defer { scratch.deallocate() }
        while true {
            let pick = state.withLock { s -> (Int, Entry)? in
                while s.next < s.entries.count, s.entries[s.next].phase == .retired { s.next += 1 }
                guard !s.cancelled, s.next < s.entries.count else {
                    s.readerRunning = false
                    return nil
                }
                return (s.next, s.entries[s.next])
            }
            guard let (i, entry) = pick else { return }
            // Room in the window, or nothing ahead at all (a tensor larger than the window is still read).
            let admitted = Self.ahead.withLock { ahead -> Bool in
                guard ahead == 0 || ahead + entry.bytes <= budget else { return false }
                ahead += entry.bytes
                return true
            }
            guard admitted else {
                usleep(1000)
                continue
            }
            let began = DispatchTime.now()
            let bytes = entry.names.reduce(0) { $0 + checkpoint.prefetch($1, scratch: scratch) }
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - began.uptimeNanoseconds) / 1e9
            let unused = state.withLock { s -> Bool in
                s.totals.bytes += bytes
                s.totals.seconds += seconds
                s.next = max(s.next, i + 1)
                guard s.entries[i].phase == .queued else { return true }  // retired while being read
                s.entries[i].phase = .read
                return false
            }
            if unused { Self.ahead.withLock { $0 -= entry.bytes } }
        }
    }
}
