import Foundation
@testable import SafeTensors
import XCTest

/// `MappedFile.prefetch` reads any byte range (unaligned, over several chunks, past the end) and
/// leaves the file's bytes as they were; a file truncated under the mapping stops the reading at its
/// new end, with no fault.
final class MappedFilePrefetchTests: XCTestCase {
    var url: URL!
    let size = 2 * MappedFile.prefetchChunk + 12_345
    /// No two pages alike: each byte mixes its offset's page number and position.
    lazy var contents = Data((0..<size).map { UInt8(truncatingIfNeeded: ($0 &* 2_654_435_761) >> 13 ^ $0 >> 12) })

    override func setUpWithError() throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("dsconvert-prefetch-\(UUID().uuidString)")
        try contents.write(to: url)
    }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: url) }

    func testRangesReadAndBytesUnchanged() throws {
        let file = try MappedFile(path: url.path)
        let scratch = UnsafeMutableRawPointer.allocate(byteCount: MappedFile.prefetchChunk, alignment: 4096)
        defer { scratch.deallocate() }
        XCTAssertEqual(file.prefetch(0..<size, scratch: scratch), size)
        XCTAssertEqual(file.prefetch(4_097..<(MappedFile.prefetchChunk + 5_000), scratch: scratch), MappedFile.prefetchChunk + 903)
        XCTAssertEqual(file.prefetch((size - 10)..<(size + 4_096), scratch: scratch), 10)
        XCTAssertEqual(file.prefetch(size..<(size + 1), scratch: scratch), 0)
        XCTAssertEqual(Data(file.bytes), contents)
    }

    /// This kernel (Linux 5.14 or later) maps the pages: the reading is not the `pread` fallback's.
    func testChunksAreMappedNotCopied() throws {
        let file = try MappedFile(path: url.path)
        XCTAssertTrue(file.populateThenRelease(4_097..<(MappedFile.prefetchChunk + 5_000)))
        XCTAssertEqual(Data(file.bytes), contents)
    }

    func testTruncatedFileStopsAtItsNewEnd() throws {
        let file = try MappedFile(path: url.path)
        let scratch = UnsafeMutableRawPointer.allocate(byteCount: MappedFile.prefetchChunk, alignment: 4096)
        defer { scratch.deallocate() }
        let newSize = MappedFile.prefetchChunk + 3_000
        XCTAssertEqual(truncate(url.path, off_t(newSize)), 0)
        XCTAssertEqual(file.prefetch(0..<size, scratch: scratch), newSize)
    }
}
