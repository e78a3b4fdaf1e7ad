import Numerics

/// The order in which one producer emits the tensors of several output shards.
///
/// Each shard's SHA-256 is computed on its own queue as its bytes arrive, and SHA-256 of one file
/// is serial: about 1.8 GB/s on a core with SHA-NI, slower than the disk. Writing one shard at a
/// time would leave the hash of the current file as the bound of the whole run. So the producer
/// keeps `lanes` shards open at once and feeds whichever lane has emitted fewer bytes, each shard
/// still front to back (the writer needs file order to hash while writing), and the hashes run
/// side by side. Output bytes do not depend on the order, only the time does.
public enum WriteSchedule {
    /// Lanes for this machine: one per core, at most 4 (past that the producer is the bound). From
    /// the cores, not `DSCONVERT_THREADS`: the order is the order tensors are computed in, so with
    /// it would change which of two bad tensors is named first, the progress lines and what an
    /// interrupted run leaves for `--resume` (found by an audit: quantize named a different NaN
    /// tensor at 1 thread than at 2).
    public static var defaultLanes: Int { max(1, min(Parallel.cores, 4)) }

    /// Interleaves `shards` (each a list of items in file order) over `lanes` lanes: a lane takes the
    /// next unstarted shard when its current one is done; the lane with the fewest bytes emitted so
    /// far goes next (ties to the lower lane). Every item appears once; within a shard, in order.
    public static func interleaved<Item>(_ shards: [[Item]], lanes: Int = defaultLanes, bytes: (Item) -> Int) -> [Item] {
        var next = 0
        var open: [(items: ArraySlice<Item>, emitted: Int)] = []
        var out: [Item] = []
        out.reserveCapacity(shards.reduce(0) { $0 + $1.count })
        func refill(_ lane: Int?) {
            while next < shards.count, shards[next].isEmpty { next += 1 }
            guard next < shards.count else {
                if let lane { open.remove(at: lane) }
                return
            }
            if let lane { open[lane].items = shards[next][...] } else { open.append((shards[next][...], 0)) }
            next += 1
        }
        for _ in 0..<max(1, lanes) { refill(nil) }
        while !open.isEmpty {
            let lane = open.indices.min { open[$0].emitted < open[$1].emitted }!
            let item = open[lane].items.removeFirst()
            open[lane].emitted += bytes(item)
            out.append(item)
            if open[lane].items.isEmpty { refill(lane) }
        }
        return out
    }
}
