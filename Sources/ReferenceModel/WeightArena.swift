import Synchronization

/// Buffers the forward pass widens weights into, lent and taken back so a weight never costs fresh pages.
///
/// A weight read as a fresh array is fresh anonymous memory: the kernel maps and zeroes every page
/// on first touch, and the allocator returns the pages on release (blocks over 32 MB are always
/// their own mapping). At V3 scale that is 4 bytes of faulted, zeroed memory per parameter, twice per
/// comparison: 228 GB and most of `validate`'s weight-reading time. Lending the same few buffers back
/// keeps their pages mapped, so widening writes into memory that is already there.
final class WeightArena: Sendable {
    /// One arena for the process: the two models of a comparison run one after the other, so they
    /// share it, and its retained memory is counted once.
    static let shared = WeightArena()

    /// Addresses and capacities of the buffers kept (a Sendable form of the pointers).
    private let free = Mutex<[(address: Int, count: Int)]>([])
    /// Buffers kept for reuse; a layer holds at most two weights at once (a product's weight and the
    /// split form's per-head matrix), plus, from a provider that holds weights only as fp32, one
    /// routed expert's weight per core: four cover most requests after the first layers (at V3: two
    /// of 528 MB, the dense MLP's, which every other weight fits in).
    private let retained: Int

    init(retained: Int = 4) { self.retained = retained }

    deinit { for buffer in free.withLock({ $0 }) { Self.deallocate(buffer) } }

    private static func pointer(_ buffer: (address: Int, count: Int)) -> UnsafeMutableBufferPointer<Float> {
        UnsafeMutableBufferPointer(start: UnsafeMutablePointer<Float>(bitPattern: buffer.address), count: buffer.count)
    }

    /// Buffers start on a cache line: the widening kernels stream a row's values only from a 64-byte
    /// boundary on (the ones before it are stored ordinarily, per FP8 block), and malloc's 16-byte
    /// alignment would put every row of a weight off one.
    static let alignment = 64

    private static func deallocate(_ buffer: (address: Int, count: Int)) {
        UnsafeMutableRawPointer(bitPattern: buffer.address)?.deallocate()
    }

    /// Buffers kept now.
    var kept: Int { free.withLock { $0.count } }

    /// Frees every kept buffer (after a run: a later stage need not carry a forward pass's memory).
    func trim() {
        for buffer in free.withLock({ free in defer { free = [] }; return free }) { Self.deallocate(buffer) }
    }

    /// A buffer of at least `count` floats: the smallest kept one that is large enough, else a new one.
    func lend(count: Int) -> UnsafeMutableBufferPointer<Float> {
        let kept = free.withLock { free -> (address: Int, count: Int)? in
            guard let i = free.indices.filter({ free[$0].count >= count }).min(by: { free[$0].count < free[$1].count }) else { return nil }
            return free.remove(at: i)
        }
        if let kept { return Self.pointer(kept) }
        let capacity = max(count, 1)
        let raw = UnsafeMutableRawPointer.allocate(byteCount: capacity * MemoryLayout<Float>.stride, alignment: Self.alignment)
        return UnsafeMutableBufferPointer(start: raw.bindMemory(to: Float.self, capacity: capacity), count: capacity)
    }

    /// Takes `buffer` back; past `retained` buffers the smallest is freed (the large ones are the
    /// ones whose pages are expensive to fault again).
    func takeBack(_ buffer: UnsafeMutableBufferPointer<Float>) {
        let dropped = free.withLock { free -> (address: Int, count: Int)? in
            free.append((Int(bitPattern: buffer.baseAddress), buffer.count))
            guard free.count > retained, let i = free.indices.min(by: { free[$0].count < free[$1].count }) else { return nil }
            return free.remove(at: i)
        }
        if let dropped { Self.deallocate(dropped) }
    }
}

/// One weight widened to fp32 in a buffer lent by a `WeightArena`, given back when dropped.
final class WeightMatrix {
    let count: Int
    private let buffer: UnsafeMutableBufferPointer<Float>
    private let arena: WeightArena

    init(count: Int, arena: WeightArena = .shared) {
        self.count = count
        self.arena = arena
        buffer = arena.lend(count: count)
    }

    deinit { arena.takeBack(buffer) }

    /// The destination to widen into: exactly `count` floats.
    var destination: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(rebasing: buffer[0..<count]) }

    func withUnsafeBufferPointer<R>(_ body: (UnsafeBufferPointer<Float>) throws -> R) rethrows -> R {
        try body(UnsafeBufferPointer(destination))
    }
}
