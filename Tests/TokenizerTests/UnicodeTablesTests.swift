@testable import Tokenizer
import XCTest

final class UnicodeTablesTests: XCTestCase {
    /// The planes the category table does not look up hold nothing the library's Unicode has: each of
    /// their code points is unassigned in the runtime's Unicode, or dated after the library's.
    func testSkippedPlanesHaveNothingOfTheLibraryUnicode() {
        for value in UnicodeTables.unassignedPlanes {
            let scalar = Unicode.Scalar(value)!
            if scalar.properties.generalCategory != .unassigned {
                XCTAssertTrue(UnicodeTables.isAfterLibraryUnicode(scalar), "U+\(String(value, radix: 16, uppercase: true))")
            }
        }
    }

    /// The table against the runtime, code point by code point, where it does look: the category,
    /// or unassigned for a code point dated after the library's Unicode (private use included).
    func testTableMatchesTheRuntime() {
        for value in stride(from: UInt32(0), to: 0x110000, by: 1) where !UnicodeTables.unassignedPlanes.contains(value) {
            guard let scalar = Unicode.Scalar(value) else {
                XCTAssertEqual(UnicodeTables.categories[Int(value)], UnicodeTables.Category.surrogate.rawValue)
                continue
            }
            let expected = UnicodeTables.isAfterLibraryUnicode(scalar) ? .unassigned : UnicodeTables.Category(scalar.properties.generalCategory)
            if UnicodeTables.categories[Int(value)] != expected.rawValue {
                XCTFail("U+\(String(value, radix: 16, uppercase: true)): \(UnicodeTables.categories[Int(value)]) against \(expected)")
                return
            }
        }
    }
}
