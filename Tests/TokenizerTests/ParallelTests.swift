import Foundation
import XCTest
@testable import Tokenizer

/// The parallel encode hands the pieces of the first pre-tokenizer step to threads in blocks: the
/// ids must not depend on how many threads run.
final class ParallelTests: XCTestCase {
    func testIdsDoNotDependOnThreadCount() throws {
        var text = ""
        for name in ["code", "multilingual", "numbers", "special", "whitespace"] {
            text += try String(contentsOf: tokenizerFixtures.appendingPathComponent("texts/\(name).txt"), encoding: .utf8)
        }
        // Enough text that every thread gets many pieces, with the fixture texts' edge cases at every block edge.
        var long = ""
        for i in 0..<200 { long += text + " \(i * 7919) " + (i % 3 == 0 ? "\n" : "<s>") }
        for fixture in ["v3-style", "v2-style", "added-tokens", "byte-level-regex", "nfkc", "split-merged-next"] {
            let tokenizer = try Tokenizer.load(path: tokenizerFixtures.appendingPathComponent(fixture + ".json").path)
            let serial = try tokenizer.encode(long, threads: 1)
            XCTAssertGreaterThan(serial.count, 10_000)
            for threads in [2, 3, 8, 64] {
                XCTAssertEqual(try tokenizer.encode(long, threads: threads), serial, "\(fixture), \(threads) threads")
            }
        }
    }

    func testBlocksCoverEveryItemInOrder() {
        let items = (0..<100).map { i in Tokenizer.Item.piece(Piece(range: (i * 10)..<(i * 10 + 1 + i % 7), inScratch: false, byteLevel: false)) }
        for count in [1, 2, 3, 7, 100, 500] {
            let blocks = Tokenizer.blocks(items, count: count)
            XCTAssertEqual(blocks.first?.lowerBound, 0)
            XCTAssertEqual(blocks.last?.upperBound, 100)
            XCTAssertLessThanOrEqual(blocks.count, count)
            for (a, b) in zip(blocks, blocks.dropFirst()) { XCTAssertEqual(a.upperBound, b.lowerBound) }
        }
    }
}
