import Dispatch
import Foundation
import Synchronization

/// Data-parallel loops for the conversion kernels.
///
/// Every kernel splits its work so that each index writes its own output only: results never
/// depend on how many threads run, which `DSCONVERT_THREADS=1` (serial) versus the default (all
/// cores) checks in the determinism test.
public enum Parallel {
    /// Worker threads: `DSCONVERT_THREADS` when set to a positive number, otherwise every core.
    public static let threads: Int = {
        if let text = ProcessInfo.processInfo.environment["DSCONVERT_THREADS"], let n = Int(text), n > 0 { return n }
        return cores
    }()

    /// The machine's cores, whatever `DSCONVERT_THREADS` says: for choices that must not change
    /// with the thread count (the order in which a conversion emits its tensors).
    public static let cores = ProcessInfo.processInfo.activeProcessorCount

    /// Runs `body(i)` for i in 0..<count on up to `threads` threads, each taking the next index as
    /// it finishes one, so tasks of uneven size balance when given largest first (a routed expert's
    /// work grows with the tokens that chose it). Each index writes its own output only.
    public static func forEach(_ count: Int, _ body: (Int) -> Void) {
        guard count > 0 else { return }
        if threads <= 1 || count == 1 {
            for i in 0..<count { body(i) }
            return
        }
        let next = Atomic<Int>(0)
        withoutActuallyEscaping(body) { body in
            let shared = UnsafeSendableClosure(body)
            DispatchQueue.concurrentPerform(iterations: min(threads, count)) { _ in
                while true {
                    let i = next.wrappingAdd(1, ordering: .relaxed).oldValue
                    guard i < count else { return }
                    shared.body(i)
                }
            }
        }
    }

    /// Runs `body` on consecutive ranges of `size` indices that cover 0..<count (the last one may be
    /// shorter), spread over the threads as `forEach` spreads indices: for element-wise work whose
    /// elements are each their own result, so the bits do not depend on the thread count.
    public static func forEachChunk(of count: Int, size: Int, _ body: (Range<Int>) -> Void) {
        precondition(size > 0, "chunks of \(size)")
        forEach((count + size - 1) / size) { c in body((c * size)..<min(count, (c + 1) * size)) }
    }
}

/// A pointer handed to concurrent tasks that each touch their own part of its memory.
public struct SharedPointer<T>: @unchecked Sendable {
    public let pointer: UnsafeMutablePointer<T>
    public init(_ pointer: UnsafeMutablePointer<T>) { self.pointer = pointer }
}

private struct UnsafeSendableClosure: @unchecked Sendable {
    let body: (Int) -> Void
    init(_ body: @escaping (Int) -> Void) { self.body = body }
}
