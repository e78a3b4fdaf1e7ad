import CKernels
import DeepSeekModel
import Foundation
import SafeTensors
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

/// The prefetcher's window: it reads ahead only as far as the budget allows, each retired tensor
/// frees room for the next, and a tensor retired before its turn is never read.
final class WeightPrefetcherTests: XCTestCase {
    private func waitFor(_ what: String, _ condition: () -> Bool) {
        let deadline = Date().addingTimeInterval(10)
        while !condition(), Date() < deadline { usleep(2000) }
        XCTAssertTrue(condition(), what)
    }

    func testWindowAdvancesAsTensorsAreRetired() throws {
        let checkpoint = try Checkpoint(directory: fixtures.appendingPathComponent("v3"))
        let config = try DeepSeekConfig.load(directory: fixtures.appendingPathComponent("v3"))
        // Routed experts' gate projections: tensors of one size, so the window holds exactly two.
        let names = config.layerTensors(config.numHiddenLayers - 1).map(\.name)
            .filter { checkpoint.contains($0) && $0.contains(".experts.") && $0.hasSuffix("gate_proj.weight") }
        let sizes = names.map { checkpoint.info($0)!.byteCount }
        XCTAssertGreaterThan(names.count, 6)
        XCTAssertEqual(Set(sizes).count, 1)
        // The window is the process's: nothing another test left unused may be in it.
        waitFor("no bytes read ahead by earlier tests are left unused") { WeightPrefetcher.bytesAhead == 0 }
        // Room for the first two tensors only.
        let prefetcher = WeightPrefetcher(budget: sizes[0] + sizes[1])
        var read: Int
        func readSoFar() -> Int { prefetcher.totalsSoFar().bytes }
        prefetcher.enqueue(names, in: checkpoint)
        waitFor("the first two are read") { readSoFar() == sizes[0] + sizes[1] }
        usleep(20_000)
        XCTAssertEqual(readSoFar(), sizes[0] + sizes[1], "no further than the window")
        // Retiring the first makes room; the fourth is retired before its turn and never read.
        prefetcher.retire([names[3]])
        prefetcher.retire([names[0]])
        read = sizes[0] + sizes[1] + sizes[2]
        waitFor("the third is read") { readSoFar() == read }
        prefetcher.retire(Array(names[1...2]))
        // The window holds the fifth and sixth: five tensors read (the fourth would make six).
        waitFor("the fifth and sixth follow, the fourth skipped") { readSoFar() == 5 * sizes[0] }
        usleep(20_000)
        let totals = prefetcher.drain()
        XCTAssertEqual(totals.bytes, 5 * sizes[0], "tensors 1-3, 5 and 6, each once; nothing after drain")
    }
}
