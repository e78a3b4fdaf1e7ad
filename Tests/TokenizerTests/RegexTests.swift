import XCTest
@testable import Tokenizer

final class RegexTests: XCTestCase {
    func matches(_ pattern: String, _ text: String) throws -> [String] {
        let regex = try ScalarRegex(pattern)
        let scalars = UTF8Text.scalars(of: text)
        var stack: [ScalarRegex.Backtrack] = []
        var found: [String] = []
        scalars.withUnsafeBufferPointer { buffer in
            regex.forEachMatch(buffer, start: 0, end: scalars.count, stack: &stack) { s, e in
                found.append(String(String.UnicodeScalarView(scalars[s..<e].map { Unicode.Scalar($0)! })))
            }
        }
        return found
    }

    func testGreedyRepeatsAndAlternationOrder() throws {
        XCTAssertEqual(try matches("\\p{N}{1,3}", "1234567 89"), ["123", "456", "7", "89"])
        XCTAssertEqual(try matches("\\s+(?!\\S)|\\s+", "a   b  "), ["  ", " ", "  "])
    }
}
