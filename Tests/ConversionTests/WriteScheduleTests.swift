import XCTest
@testable import Conversion

final class WriteScheduleTests: XCTestCase {
    func testOneLaneIsFileOrder() {
        let shards = [[1, 2, 3], [], [4], [5, 6]]
        XCTAssertEqual(WriteSchedule.interleaved(shards, lanes: 1) { _ in 10 }, [1, 2, 3, 4, 5, 6])
    }

    func testTwoLanesKeepEachShardInOrderAndBalanceBytes() {
        // Items are (shard, index, bytes).
        let sizes = [[50, 50, 50, 50], [10, 10], [30, 30, 30], [], [5]]
        let shards = sizes.enumerated().map { s, list in list.enumerated().map { (shard: s, index: $0, bytes: $1) } }
        let order = WriteSchedule.interleaved(shards, lanes: 2) { $0.bytes }
        XCTAssertEqual(order.count, sizes.joined().count, "every item once")
        for s in sizes.indices {
            XCTAssertEqual(order.filter { $0.shard == s }.map(\.index), Array(sizes[s].indices), "shard \(s) front to back")
        }
        // Lane 0 holds shard 0 (200 B); lane 1 holds shards 1, 2 and 4 (20 + 90 + 5 B). Bytes emitted
        // (lane 0, lane 1) after each step: (50,0) (50,10) (50,20) (50,50) tie to lane 0 (100,50)
        // (100,80) (100,110) (150,110) (150,115) (200,115).
        XCTAssertEqual(order.map(\.shard), [0, 1, 1, 2, 0, 2, 2, 0, 4, 0])
        let pairs = [[(0, 0), (0, 1), (0, 2)], [(1, 0), (1, 1), (1, 2)]]
        XCTAssertEqual(WriteSchedule.interleaved(pairs, lanes: 2) { _ in 1 }.map(\.0), [0, 1, 0, 1, 0, 1], "equal shards alternate")
    }

    func testMoreLanesThanShards() {
        XCTAssertEqual(WriteSchedule.interleaved([[1, 2], [3]], lanes: 4) { _ in 1 }, [1, 3, 2])
    }
}
