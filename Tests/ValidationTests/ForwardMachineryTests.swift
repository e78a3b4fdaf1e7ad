import CKernels
import XCTest
@testable import ReferenceModel

/// The machinery under the forward pass: which OpenBLAS kernels run, and the reused weight buffers.
final class ForwardMachineryTests: XCTestCase {
    /// OpenBLAS's SSE3 fallback is never what runs on a CPU with AVX2 unless the user asked for it.
    func testBLASCoreIsNotTheFallbackOnAVX2Machines() {
        let selection = BLASCore.selection
        XCTAssertFalse(selection.core.isEmpty)
        if ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] == nil, BLASCore.coreForThisCPU() != nil {
            XCTAssertNotEqual(selection.core.lowercased(), "prescott", selection.description)
        }
        if let replaced = selection.replaced {
            XCTAssertEqual(replaced.lowercased(), "prescott", "only the fallback is ever replaced")
            XCTAssertEqual(selection.core, BLASCore.coreForThisCPU())
        }
        // The kernels still compute: a product checked by hand.
        let y = Linear.forward([1, 2, 3, 4], rows: 2, weight: [1, 0, 0, 1, 1, 1], inFeatures: 2, outFeatures: 3)
        XCTAssertEqual(y, [1, 2, 3, 3, 4, 7])
    }

    /// Buffers go back to the arena and are lent again (same memory, no fresh pages); the largest
    /// are the ones kept.
    func testArenaLendsTheSameBuffersAgain() {
        let arena = WeightArena(retained: 2)
        var first: UnsafeMutablePointer<Float>?
        do {
            let m = WeightMatrix(count: 1000, arena: arena)
            first = m.destination.baseAddress
            XCTAssertEqual(m.destination.count, 1000)
        }
        do {
            let smaller = WeightMatrix(count: 10, arena: arena)
            XCTAssertEqual(smaller.destination.baseAddress, first, "a kept buffer large enough is lent again")
            XCTAssertEqual(smaller.destination.count, 10)
            let larger = WeightMatrix(count: 2000, arena: arena)
            XCTAssertNotEqual(larger.destination.baseAddress, first)
        }
        let a = WeightMatrix(count: 5, arena: arena), b = WeightMatrix(count: 1500, arena: arena)
        XCTAssertEqual(a.destination.baseAddress, first, "the smallest large-enough buffer is chosen")
        XCTAssertNotEqual(b.destination.baseAddress, first)
    }
}
