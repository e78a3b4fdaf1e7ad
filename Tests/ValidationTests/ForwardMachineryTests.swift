import CKernels
import COpenBLAS
import DeepSeekModel
import Numerics
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
            XCTAssertEqual(selection.core, BLASCore.coreForThisCPU()?.rawValue)
        }
        // A forced core below the CPU is named, and only then.
        if ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] != nil, let level = BLASCore.coreForThisCPU(),
           BLASCore.isBelow(selection.core, better: level) {
            XCTAssertEqual(selection.heldBelow, level.rawValue)
            XCTAssertTrue(selection.description.contains("holds it below"), selection.description)
        } else {
            XCTAssertNil(selection.heldBelow, selection.description)
        }
        XCTAssertTrue(BLASCore.isBelow("Prescott", better: .haswell))
        XCTAssertTrue(BLASCore.isBelow("Sandybridge", better: .haswell))
        XCTAssertTrue(BLASCore.isBelow("Haswell", better: .skylakeX))
        XCTAssertTrue(BLASCore.isBelow("Zen", better: .skylakeX))
        XCTAssertTrue(BLASCore.isBelow("Excavator", better: .skylakeX))
        XCTAssertFalse(BLASCore.isBelow("Haswell", better: .haswell))
        XCTAssertFalse(BLASCore.isBelow("Zen", better: .haswell))
        XCTAssertFalse(BLASCore.isBelow("Excavator", better: .haswell))
        XCTAssertFalse(BLASCore.isBelow("Cooperlake", better: .skylakeX))
        XCTAssertFalse(BLASCore.isBelow("SapphireRapids", better: .skylakeX))
        // What the benchmarks print in each case.
        let held = BLASCore.Selection(core: "Haswell", replaced: nil, heldBelow: "SkylakeX").description
        XCTAssertTrue(held.hasSuffix("core Haswell; OPENBLAS_CORETYPE holds it below this CPU's SkylakeX kernels: sgemm here is not this machine's best"), held)
        let replaced = BLASCore.Selection(core: "SkylakeX", replaced: "Prescott").description
        XCTAssertTrue(replaced.hasSuffix("core SkylakeX (OpenBLAS took this CPU for Prescott; dsconvert selected SkylakeX from its instruction set)"), replaced)
        // glibc took the setting that keeps activations' freed memory for reuse.
        XCTAssertTrue(ActivationMemory.reused, "mallopt refused M_MMAP_THRESHOLD or M_TRIM_THRESHOLD of 1 GiB")
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
            XCTAssertEqual(Int(bitPattern: m.destination.baseAddress) % WeightArena.alignment, 0, "buffers start on a cache line")
        }
        do {
            let smaller = WeightMatrix(count: 10, arena: arena)
            XCTAssertEqual(smaller.destination.baseAddress, first, "a kept buffer large enough is lent again")
            XCTAssertEqual(smaller.destination.count, 10)
            let larger = WeightMatrix(count: 2000, arena: arena)
            XCTAssertNotEqual(larger.destination.baseAddress, first)
        }
        do {
            let a = WeightMatrix(count: 5, arena: arena), b = WeightMatrix(count: 1500, arena: arena)
            XCTAssertEqual(a.destination.baseAddress, first, "the smallest large-enough buffer is chosen")
            XCTAssertNotEqual(b.destination.baseAddress, first)
            XCTAssertEqual(arena.kept, 0, "both kept buffers are lent")
        }
        XCTAssertEqual(arena.kept, 2)
        arena.trim()
        XCTAssertEqual(arena.kept, 0)
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

    /// A second pass over the same model is read ahead again, and the queue lets go of the checkpoint.
    func testASecondPassIsReadAgain() throws {
        let checkpoint = try Checkpoint(directory: fixtures.appendingPathComponent("v3"))
        let names = Array(checkpoint.tensors.map(\.name).prefix(3))
        let bytes = names.reduce(0) { $0 + checkpoint.info($1)!.byteCount }
        let prefetcher = WeightPrefetcher()
        for pass in 1...2 {
            prefetcher.enqueue(names, in: checkpoint)
            waitFor("pass \(pass) read") { prefetcher.totalsSoFar().bytes == pass * bytes }
            prefetcher.retire(names)
        }
        waitFor("nothing left ahead") { WeightPrefetcher.bytesAhead == 0 }
    }
}

/// A routed expert's product from the stored weight equals the product from the weight widened
/// whole and multiplied as stored, bit for bit: FP8 with partial block rows and columns, and bf16.
final class StoredWeightTests: XCTestCase {
    func testStoredProductsEqualTheWideWeightsProducts() throws {
        for storage in [SyntheticWeights.Storage.fp8, .bf16] {
            let weights = SyntheticWeights(storage: storage)
            let (out, inFeatures, rows) = (300, 260, 5)
            let name = "model.layers.0.mlp.experts.0.up_proj.weight"
            let stored = try XCTUnwrap(try weights.stored(name, shape: [out, inFeatures]))
            let whole = WeightMatrix(count: out * inFeatures)
            try weights.floats(name, shape: [out, inFeatures], into: whole.destination)
            let x = (0..<(rows * inFeatures)).map { Float(($0 * 37) % 101) / 50 - 1 }
            let product = try Linear.forward(x, rows: rows, stored: stored, inFeatures: inFeatures, outFeatures: out)
            let reference = Linear.forwardAsStored(x, rows: rows, weight: whole, inFeatures: inFeatures, outFeatures: out)
            XCTAssertEqual(product.map(\.bitPattern), reference.map(\.bitPattern), "\(storage)")
            // And the widening itself: every panel of rows is the whole weight's rows.
            let panel = UnsafeMutablePointer<Float>.allocate(capacity: 128 * inFeatures)
            defer { panel.deallocate() }
            for p0 in stride(from: 0, to: out, by: 128) {
                let p1 = min(out, p0 + 128)
                try stored.widen(p0..<p1, into: panel)
                whole.withUnsafeBufferPointer { w in
                    XCTAssertTrue((0..<((p1 - p0) * inFeatures)).allSatisfy { panel[$0].bitPattern == w[p0 * inFeatures + $0].bitPattern }, "\(storage) rows \(p0)")
                }
            }
        }
    }

    /// An FP8 checkpoint weight with a NaN code: the product throws the error naming the code, as
    /// reading the weight whole does.
    func testNaNCodeIsNamed() throws {
        let directory = try FileManager.default.url(for: .itemReplacementDirectory, in: .userDomainMask,
                                                    appropriateFor: FileManager.default.temporaryDirectory, create: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let source = fixtures.appendingPathComponent("v3-fp8")
        for file in try FileManager.default.contentsOfDirectory(atPath: source.path) {
            try FileManager.default.copyItem(at: source.appendingPathComponent(file), to: directory.appendingPathComponent(file))
        }
        let config = try ConfigDocument.load(directory: directory).model
        let name = "model.layers.0.mlp.gate_proj.weight", shape = [config.intermediateSize, config.hiddenSize]
        let clean = CheckpointWeights(checkpoint: try Checkpoint(directory: directory), fp8Block: config.quantization?.block)
        let x = [Float](repeating: 0.5, count: 3 * shape[1])
        let good = try Linear.forward(x, rows: 3, stored: XCTUnwrap(try clean.stored(name, shape: shape)), inFeatures: shape[1], outFeatures: shape[0])
        XCTAssertTrue(good.allSatisfy(\.isFinite))
        // Code 200 of the weight becomes 0x7F, E4M3FN's NaN, in place in its shard.
        let info = try XCTUnwrap(clean.checkpoint.info(name))
        let file = clean.checkpoint.path(of: name)
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: file))
        let length = try XCTUnwrap(handle.read(upToCount: 8)).enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        try handle.seek(toOffset: UInt64(8 + length + info.dataOffsets.lowerBound + 200))
        try handle.write(contentsOf: Data([0x7F]))
        try handle.close()
        XCTAssertEqual(info.dtype, .f8E4M3)
        let broken = CheckpointWeights(checkpoint: try Checkpoint(directory: directory), fp8Block: config.quantization?.block)
        XCTAssertThrowsError(try Linear.forward(x, rows: 3, stored: XCTUnwrap(try broken.stored(name, shape: shape)), inFeatures: shape[1], outFeatures: shape[0])) { error in
            let message = (error as? LocalizedError)?.errorDescription ?? "\(error)"
            XCTAssertTrue(message.contains(name) && message.contains(file), message)
        }
    }
}

/// Rows read from an FP8 checkpoint weight equal the same rows of the weight read whole, whatever the range:
/// whole scale blocks (dequantized alone), and ranges that start or end inside a block (which dequantize the
/// whole weight rather than a block into a buffer sized for fewer rows).
final class CheckpointRowsTests: XCTestCase {
    func testFP8RowsAtAnyRange() throws {
        let directory = fixtures.appendingPathComponent("v3-fp8")
        let config = try ConfigDocument.load(directory: directory).model
        let checkpoint = try Checkpoint(directory: directory)
        let weights = CheckpointWeights(checkpoint: checkpoint, fp8Block: config.quantization?.block)
        let name = "model.layers.0.mlp.gate_proj.weight", shape = [config.intermediateSize, config.hiddenSize]
        XCTAssertEqual(checkpoint.info(name)?.dtype, .f8E4M3)
        XCTAssertEqual(shape[0], 288, "three blocks of rows, the last partial")
        let whole = try weights.floats(name, shape: shape)
        for range in [0..<128, 128..<256, 256..<288, 0..<288, 0..<100, 0..<130, 130..<131, 250..<288, 128..<200] {
            let got = try weights.rows(name, shape: shape, range: range)
            XCTAssertEqual(got, Array(whole[(range.lowerBound * shape[1])..<(range.upperBound * shape[1])]), "\(range)")
        }
    }
}

/// An embedding lookup's rows are advised to the kernel as one byte range per run of consecutive ids,
/// and nothing is advised when an id is outside the table.
final class RowAdviceTests: XCTestCase {
    func testRunsOfConsecutiveRowsAreOneRange() {
        XCTAssertEqual(CheckpointWeights.rowByteRanges([2, 3, 4, 9, 11, 12], rowCount: 16, rowBytes: 10), [20..<50, 90..<100, 110..<130])
        XCTAssertEqual(CheckpointWeights.rowByteRanges([0, 15], rowCount: 16, rowBytes: 4), [0..<4, 60..<64])
        XCTAssertEqual(CheckpointWeights.rowByteRanges([], rowCount: 16, rowBytes: 4), [])
        XCTAssertNil(CheckpointWeights.rowByteRanges([3, 16], rowCount: 16, rowBytes: 4))
        XCTAssertNil(CheckpointWeights.rowByteRanges([-1, 3], rowCount: 16, rowBytes: 4))
    }

    /// Advising rows (any ids, in the table or not) leaves the lookup's values as they were.
    func testAdvisedRowsReadTheSame() throws {
        let directory = fixtures.appendingPathComponent("v3-fp8")
        let config = try ConfigDocument.load(directory: directory).model
        let weights = CheckpointWeights(checkpoint: try Checkpoint(directory: directory), fp8Block: config.quantization?.block)
        let name = TensorNames.embedding, shape = [config.vocabSize, config.hiddenSize]
        let before = try weights.rows(name, shape: shape, range: 5..<9)
        weights.willNeedRows(name, shape: shape, rows: [5, 6, 7, 8, 40])
        weights.willNeedRows(name, shape: shape, rows: [config.vocabSize])
        weights.willNeedRows(name, shape: [1, 1], rows: [0])
        XCTAssertEqual(try weights.rows(name, shape: shape, range: 5..<9), before)
    }
}

/// Parking OpenBLAS's idle workers (before work that runs one task per core) leaves its thread count
/// and its products as they were: the next multi-threaded product starts the workers again.
final class BLASParkingTests: XCTestCase {
    func testProductsAfterParkingAreUnchanged() {
        let (m, n, k) = (96, 256, 512)
        let a = (0..<(m * k)).map { Float(($0 * 7919) % 1000) / 1000 - 0.5 }
        let b = (0..<(n * k)).map { Float(($0 * 104_729) % 997) / 997 - 0.5 }
        let threads = openblas_get_num_threads()
        let before = Linear.forward(a, rows: m, weight: b, inFeatures: k, outFeatures: n)
        for _ in 0..<3 {
            BLASThreads.parkWorkers()
            BLASThreads.parkWorkers()  // twice in a row: nothing left to stop
            XCTAssertEqual(openblas_get_num_threads(), threads)
            XCTAssertEqual(Linear.forward(a, rows: m, weight: b, inFeatures: k, outFeatures: n).map(\.bitPattern), before.map(\.bitPattern))
        }
    }
}

/// The benchmark's FLOP count and the list of products it is built from.
final class ForwardCostTests: XCTestCase {
    /// The benchmark's list of the pass's sgemm products, against DeepSeek-V3's published widths
    /// worked out by hand (one dense and one MoE layer, 512 tokens): q_a 7168->1536, q_b 1536->128x192,
    /// kv_a 7168->512+64, kv_b 512->128x(128+128), o 128x128->7168, the dense MLP 7168<->18432, the
    /// router 7168->256, one shared expert 7168<->2048, the 2048-token head.
    func testBLASProductsAreTheV3PassShapes() throws {
        let products = ForwardCost.blasProducts(config: try ForwardBenchmark.v3WidthConfig(), batch: 1, seq: 512)
        let expected: [(ReferenceForward.Phase, Int, Int, Int)] = [
            (.attention, 1536, 7168, 2), (.attention, 24576, 1536, 2), (.attention, 576, 7168, 2), (.attention, 32768, 512, 2),
            (.attention, 7168, 16384, 2), (.denseMLP, 18432, 7168, 2), (.denseMLP, 7168, 18432, 1), (.router, 256, 7168, 1),
            (.sharedExperts, 2048, 7168, 2), (.sharedExperts, 7168, 2048, 1), (.head, 2048, 7168, 1),
        ]
        XCTAssertEqual(products, expected.map { ForwardCost.Product(phase: $0.0, m: 512, n: $0.1, k: $0.2, count: $0.3) })
        // The per-part FLOPs are these products, the causal attention and the routed experts.
        let phases = ForwardCost.byPhase(config: try ForwardBenchmark.v3WidthConfig(), batch: 1, seq: 512, routedTokenExperts: 4096)
        XCTAssertEqual(phases[.denseMLP], 2 * 3 * 512 * 7168 * 18432)
        XCTAssertEqual(phases[.routedExperts], 2 * 4096 * 3 * 7168 * 2048)
        let scored = ReferenceForward.causalBlocks(seq: 512).reduce(0) { $0 + $1.queries.count * $1.keys }
        let attentionProducts = expected.filter { $0.0 == .attention }.reduce(0) { $0 + 512 * $1.1 * $1.2 * $1.3 }
        XCTAssertEqual(phases[.attention], Double(2 * (attentionProducts + 2 * 128 * scored * (192 + 128))))
    }

    /// The MTP pass of V3's widths at 512 tokens (511 positions), counted by hand: eh_proj, one MoE
    /// decoder layer (attention's five products and its causal part, the router, the shared expert,
    /// 8 routed experts per position) and the head.
    func testMTPFlopsAreOneMoELayerPlusEhProjAndHead() throws {
        var config = try ForwardBenchmark.v3WidthConfig()
        XCTAssertEqual(ForwardCost.mtpFlops(config: config, batch: 1, seq: 512), 0, "no MTP layer")
        config.numNextnPredictLayers = 1
        let t = 511, h = 7168
        let attention = t * (1536 * 7168 + 24576 * 1536 + 576 * 7168 + 32768 * 512 + 7168 * 16384)
        let scored = ReferenceForward.causalBlocks(seq: t).reduce(0) { $0 + $1.queries.count * $1.keys }
        let layer = attention + 128 * scored * (192 + 128) + t * 256 * h + t * 3 * h * 2048 + t * 8 * 3 * h * 2048
        let expected = 2 * Double(layer + t * 2 * h * h + t * config.vocabSize * h)
        XCTAssertEqual(ForwardCost.mtpFlops(config: config, batch: 1, seq: 512), expected)
        XCTAssertEqual(ForwardCost.mtpFlops(config: config, batch: 1, seq: 1), 0, "no position")
    }

    /// V2-Lite's widths (no query compression): q_proj 2048->16x192, and the shared experts at
    /// 2 x 1408; a config whose n_shared_experts is 0 or absent has no shared-expert products.
    func testBLASProductsWithoutQueryCompressionOrSharedExperts() throws {
        let lite = try ForwardBenchmark.liteWidthConfig()
        let products = ForwardCost.blasProducts(config: lite, batch: 1, seq: 512)
        XCTAssertEqual(products.filter { $0.phase == .attention }.map { [$0.n, $0.k, $0.count] },
                       [[3072, 2048, 2], [576, 2048, 2], [4096, 512, 2], [2048, 2048, 2]])
        XCTAssertEqual(products.filter { $0.phase == .sharedExperts }.map { [$0.n, $0.k, $0.count] }, [[2816, 2048, 2], [2048, 2816, 1]])
        for shared in ["0", "null"] {
            var json = try JSONSerialization.jsonObject(with: Data(ForwardBenchmark.liteWidthConfigJSON().utf8)) as! [String: Any]
            json["n_shared_experts"] = shared == "0" ? 0 : NSNull()
            let config = try DeepSeekConfig.decode(try JSONSerialization.data(withJSONObject: json), path: "lite, n_shared_experts \(shared)")
            XCTAssertTrue(ForwardCost.blasProducts(config: config, batch: 1, seq: 512).allSatisfy { $0.phase != .sharedExperts }, shared)
            XCTAssertEqual(ForwardCost.byPhase(config: config, batch: 1, seq: 512, routedTokenExperts: 3072)[.sharedExperts] ?? 0, 0, shared)
        }
    }
}

/// The element-wise pieces of the pass, spread over the cores, give the bits of the plain loops.
final class ElementwiseTests: XCTestCase {
    /// RMSNorm a chunk of rows per core (V3's width: 9 rows a chunk, so 39 rows are four chunks of
    /// two groups of four rows summed side by side and one row alone, then 3 rows alone) against the
    /// row-by-row loop, bit for bit; SiLU·up in place against the kernel writing elsewhere.
    func testSpreadOverCoresGivesThePlainLoopsBits() {
        // Deterministic inputs (a failure can be run again) spread over many exponents.
        let (rows, width) = (39, 7168)
        let x = (0..<(rows * width)).map { Float(4 * sin(Double($0) * 0.7071) * cos(Double($0) * 0.013)) }
        let gamma = (0..<width).map { Float(1 + 0.5 * sin(Double($0) * 1.3)) }
        var expected = [Float](repeating: 0, count: x.count)
        for r in 0..<rows {
            var sum = 0.0
            for i in 0..<width { sum += Double(x[r * width + i]) * Double(x[r * width + i]) }
            let scale = Float(1.0 / (sum / Double(width) + 1e-6).squareRoot())
            for i in 0..<width { expected[r * width + i] = gamma[i] * (x[r * width + i] * scale) }
        }
        XCTAssertEqual(Elementwise.rmsNorm(x, width: width, gamma: gamma, eps: 1e-6).map(\.bitPattern), expected.map(\.bitPattern))

        let up = (0..<x.count).map { Float(4 * cos(Double($0) * 0.3183)) }
        var separate = [Float](repeating: 0, count: x.count)
        dsconvert_silu_mul(FP8BlockQuantizer.kernelLevel, x, up, &separate, x.count)
        var inPlace = x
        Elementwise.siluTimes(&inPlace, up, onEveryCore: true)
        XCTAssertEqual(inPlace.map(\.bitPattern), separate.map(\.bitPattern))

        var sum = x
        Elementwise.add(up, into: &sum)
        XCTAssertEqual(sum.map(\.bitPattern), zip(x, up).map { ($0 + $1).bitPattern })
    }
}
