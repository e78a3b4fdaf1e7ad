import XCTest
@testable import Tokenizer

/// NFC and NFKC as the `tokenizers` library computes them (its outputs below were read from
/// tokenizers 0.23.3's `normalizers.NFC()/NFKC().normalize_str`; the cross-check compares every code
/// point, alone and in one run, with the live library).
final class NormalizerTests: XCTestCase {
    private func nfc(_ v: [UInt32]) -> [UInt32] { NormalizerStep.nfc.apply(v[...]) }
    private func nfkc(_ v: [UInt32]) -> [UInt32] { NormalizerStep.nfkc.apply(v[...]) }

    func testMarksADecompositionBringsInAreSorted() {
        // U+0F81 is 0F71 0F80; 0F71 (class 129) sorts before the 0F80 (130) in front of it.
        XCTAssertEqual(nfc([0x0F80, 0x0F81]), [0x0F71, 0x0F80, 0x0F80])
    }

    func testHangulIsComposedAfterACompatibilityDecomposition() {
        XCTAssertEqual(nfkc([0x314E, 0x314F]), [0xD558])
        XCTAssertEqual(nfc([0x1112, 0x1161, 0x11AB]), [0xD55C], "a syllable with a trailing consonant")
    }

    func testALongRunOfMarksKeepsEveryScalar() {
        let run = Array(UInt32(0x0305)...0x0344)
        let out = nfc(run)
        XCTAssertEqual(out.count, run.count + 1, "U+0344 is two scalars")
        XCTAssertEqual(Array(out.suffix(7)), [0x0301, 0x0342, 0x0313, 0x0308, 0x0301, 0x0315, 0x031A])
    }

    func testCodePointsAfterTheLibrarysUnicodeStayAsTheyAre() {
        XCTAssertEqual(nfkc([0x1FBF0]), [0x1FBF0], "SEGMENTED DIGIT ZERO (13.0) is not 0 in the library")
        XCTAssertEqual(nfkc([0x0041, 0x1FBF0, 0x0301]), [0x0041, 0x1FBF0, 0x0301], "nothing composes across it")
        XCTAssertEqual(nfc([0x1DF8, 0x1DF9]), [0x1DF8, 0x1DF9], "10.0 marks have no combining class in the library")
        XCTAssertEqual(nfkc([0xFB01, 0x0041, 0x030A]), [0x66, 0x69, 0x00C5])
    }

    func testPairsComposeFromTheFirstsDecomposition() {
        // U+0CCB is 0CCA 0CD5, and 0CCA is 0CC6 0CC2: composed back in two steps.
        XCTAssertEqual(nfc([0x0CCB]), [0x0CCB])
        XCTAssertEqual(nfc([0x0CC6, 0x0CC2, 0x0CD5]), [0x0CCB])
    }
}
