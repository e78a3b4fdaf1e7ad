import DeepSeekModel
import Dispatch
import Foundation
import SafeTensors
import Synchronization

/// Reads weights the forward pass will need next into the page cache on a thread of its own, so
/// reading the checkpoint overlaps computing with it (wall time near max(read, compute), not their
/// sum). It reads with `pread` into a scratch buffer: the pages are cached, not mapped into this
/// process, so the resident set does not grow; the forward pass then finds them when it maps them.
public final class WeightPrefetcher: Sendable {
    /// What the reader did: bytes read and seconds spent reading.
    public struct Totals: Sendable, Equatable {
        public var bytes = 0
        public var seconds = 0.0
    }

    /// At most this many bytes are queued ahead of use: a quarter of physical memory, at most 4 GiB
    /// (a V3 MoE layer's experts are 11 GB; prefetching one whole would evict what is being used).
    public static let budget = Int(min(UInt64(4) << 30, ProcessInfo.processInfo.physicalMemory / 4))

    private let queue = DispatchQueue(label: "dsconvert.weight-prefetch", qos: .utility)
    private let totals = Mutex(Totals())
    /// Bytes queued and not yet read, over every prefetcher of the process (one per device of a
    /// sharded model, one per model of a comparison): the budget bounds them all together.
    private static let outstanding = Mutex(0)

    public init() {}

    /// Queues the tensors of `checkpoint` named in `names` (with their FP8 scales), in order, while
    /// the bytes queued and not yet read, process-wide, stay within `budget`; names it does not hold
    /// are skipped.
    public func enqueue(_ names: [String], in checkpoint: Checkpoint, budget: Int = WeightPrefetcher.budget) {
        var batch: [String] = []
        let queued = Self.outstanding.withLock { outstanding -> Int in
            var queued = 0
            for name in names where checkpoint.contains(name) {
                let companions = [name, name + QuantizationConfig.scaleSuffix].filter(checkpoint.contains)
                let bytes = companions.reduce(0) { $0 + (checkpoint.info($1)?.byteCount ?? 0) }
                if outstanding + queued + bytes > budget { break }
                queued += bytes
                batch += companions
            }
            outstanding += queued
            return queued
        }
        guard !batch.isEmpty else { return }
        let names = batch
        queue.async { [self] in
            let start = DispatchTime.now()
            let bytes = names.reduce(0) { $0 + checkpoint.prefetch($1) }
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
            totals.withLock { $0.bytes += bytes; $0.seconds += seconds }
            Self.outstanding.withLock { $0 -= queued }
        }
    }

    /// Waits for queued reads and returns what was read so far.
    public func drain() -> Totals {
        queue.sync {}
        return totals.withLock { $0 }
    }
}
