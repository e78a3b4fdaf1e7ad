import Foundation
import XCTest
@testable import SafeTensors

/// Builds raw safetensors bytes with an arbitrary header, for the negative tests.
func rawFile(header: String, data: [UInt8] = [], lengthOverride: UInt64? = nil) -> [UInt8] {
    let h = Array(header.utf8)
    let length = lengthOverride ?? UInt64(h.count)
    return withUnsafeBytes(of: length.littleEndian) { Array($0) } + h + data
}

func temporaryDirectory() throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("dsconvert-tests-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}

final class SafeTensorsFormatTests: XCTestCase {
    var dir: URL!
    override func setUpWithError() throws { dir = try temporaryDirectory() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    private func open(_ bytes: [UInt8]) throws -> SafeTensorsFile {
        let url = dir.appendingPathComponent("t.safetensors")
        try Data(bytes).write(to: url)
        return try SafeTensorsFile(path: url.path)
    }

    private func assertRejects(_ bytes: [UInt8], _ check: (SafeTensorsError) -> Bool, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try open(bytes), file: file, line: line) { error in
            guard let e = error as? SafeTensorsError else { return XCTFail("wrong error type \(error)", file: file, line: line) }
            XCTAssertTrue(check(e), "unexpected error: \(e.errorDescription ?? "")", file: file, line: line)
            XCTAssertTrue(e.errorDescription!.contains("t.safetensors"), "message must name the file", file: file, line: line)
            XCTAssertFalse(e.errorDescription!.contains("\n"), file: file, line: line)
        }
    }

    func testValidFileReadsZeroCopy() throws {
        let f = try open(rawFile(header: #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"format":"pt"}}"#,
                                 data: [0, 0, 128, 63, 0, 0, 0, 64]))
        XCTAssertEqual(f.metadata, ["format": "pt"])
        XCTAssertEqual(try f.view("a").floats(), [1, 2])
        let view = try f.view("a")
        XCTAssertEqual(view.bytes.baseAddress, f.mapping.base! + f.header.dataStart, "a view points into the mapping")
    }

    func testTruncatedFile() {
        assertRejects([1, 2, 3]) { if case .fileTooSmall = $0 { return true }; return false }
    }

    func testHeaderLengthPastEndOfFile() {
        assertRejects(rawFile(header: "{}", lengthOverride: 1000)) { if case .headerPastEndOfFile = $0 { return true }; return false }
    }

    func testHeaderOverLimit() {
        assertRejects(rawFile(header: "{}", lengthOverride: 100_000_001)) { if case .headerTooLarge = $0 { return true }; return false }
    }

    func testInvalidJSON() {
        assertRejects(rawFile(header: #"{"a":{"dtype":"F32","#)) { if case .invalidHeaderJSON = $0 { return true }; return false }
    }

    func testHeaderNotStartingWithBrace() {
        assertRejects(rawFile(header: #" {"a":1}"#)) { if case .headerDoesNotStartWithBrace = $0 { return true }; return false }
        assertRejects(rawFile(header: "[]")) { if case .headerDoesNotStartWithBrace = $0 { return true }; return false }
    }

    func testHeaderNotUTF8() {
        assertRejects(withUnsafeBytes(of: UInt64(3).littleEndian) { Array($0) } + [0x7B, 0xFF, 0x7D]) {
            if case .headerNotUTF8 = $0 { return true }; return false
        }
    }

    func testUnknownDType() {
        assertRejects(rawFile(header: #"{"w":{"dtype":"F12","shape":[1],"data_offsets":[0,2]}}"#, data: [0, 0])) {
            if case .unknownDType(_, "w", "F12") = $0 { return true }; return false
        }
    }

    func testByteSizeMismatch() {
        assertRejects(rawFile(header: #"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, data: Array(repeating: 0, count: 8))) {
            if case .byteSizeMismatch(_, "w", 12, 8) = $0 { return true }; return false
        }
    }

    func testOverlappingOffsets() {
        let header = #"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#
        assertRejects(rawFile(header: header, data: Array(repeating: 0, count: 6))) {
            if case .overlappingTensors(_, "b", "a") = $0 { return true }; return false
        }
    }

    /// One-byte overlaps and gaps, first and last tensor alike, and offsets listed out of order: the
    /// existing 2-byte cases pass with an off-by-one check. The same cases run against the official
    /// reader in Tests/crosscheck/crosscheck.py (`offset_cases`), which gives the same verdicts.
    func testOneByteOverlapsGapsAndOrderAtBothEnds() throws {
        // (name, [(tensor, begin, end)] in header order, data bytes, expected verdict; nil = accepted)
        let cases: [(String, [(String, Int, Int)], Int, String?)] = [
            ("1-byte overlap, first pair", [("a", 0, 4), ("b", 3, 7), ("c", 7, 9)], 9, "overlap b after a"),
            ("1-byte overlap, last pair", [("a", 0, 4), ("b", 4, 8), ("c", 7, 9)], 9, "overlap c after b"),
            ("1-byte overlap, listed in reverse", [("b", 3, 7), ("a", 0, 4)], 7, "overlap b after a"),
            ("empty tensor inside another", [("a", 0, 4), ("e", 3, 3), ("b", 4, 8)], 8, "overlap e after a"),
            ("1-byte gap at the start", [("a", 1, 5)], 5, "hole before a 0..<1"),
            ("1-byte gap between", [("a", 0, 4), ("b", 5, 9)], 9, "hole before b 4..<5"),
            ("1-byte gap at the end", [("a", 0, 4)], 5, "data ends at 4 of 5"),
            ("1 byte missing at the end", [("a", 0, 4)], 3, "data ends at 4 of 3"),
            ("out of order, tiling", [("c", 8, 12), ("a", 0, 4), ("b", 4, 8)], 12, nil),
            ("empty tensor at the start", [("a", 0, 0), ("b", 0, 4)], 4, nil),
        ]
        for (label, entries, dataBytes, expected) in cases {
            let header = "{" + entries.map { #""\#($0.0)":{"dtype":"U8","shape":[\#($0.2 - $0.1)],"data_offsets":[\#($0.1),\#($0.2)]}"# }
                .joined(separator: ",") + "}"
            let data = (0..<dataBytes).map { UInt8($0) }
            do {
                let f = try open(rawFile(header: header, data: data))
                XCTAssertNil(expected, "\(label): accepted")
                for (name, begin, end) in entries {
                    XCTAssertEqual(Array(try f.view(name).bytes), Array(data[begin..<end]), "\(label): \(name)")
                }
            } catch let error as SafeTensorsError {
                XCTAssertEqual(Self.verdict(error), expected, label)
            }
        }
    }

    private static func verdict(_ error: SafeTensorsError) -> String {
        switch error {
        case let .overlappingTensors(_, tensor, previous): return "overlap \(tensor) after \(previous)"
        case let .holeBeforeTensor(_, tensor, start, end): return "hole before \(tensor) \(start)..<\(end)"
        case let .dataNotCoveringFile(_, end, size): return "data ends at \(end) of \(size)"
        default: return error.errorDescription ?? "\(error)"
        }
    }

    func testHoleBetweenTensors() {
        let header = #"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}}"#
        assertRejects(rawFile(header: header, data: Array(repeating: 0, count: 6))) {
            if case .holeBeforeTensor(_, "b", 2, 4) = $0 { return true }; return false
        }
    }

    func testDataNotCoveringFile() {
        let header = #"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}"#
        assertRejects(rawFile(header: header, data: Array(repeating: 0, count: 5))) {
            if case .dataNotCoveringFile(_, 2, 5) = $0 { return true }; return false
        }
        // and data missing at the end (a truncated shard)
        let twoTensors = #"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#
        assertRejects(rawFile(header: twoTensors, data: Array(repeating: 0, count: 4))) {
            if case .dataNotCoveringFile(_, 6, 4) = $0 { return true }; return false
        }
    }

    func testShapeProductOverflow() {
        let header = #"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}}"#
        assertRejects(rawFile(header: header)) { if case .shapeOverflow(_, "a") = $0 { return true }; return false }
        let huge = #"{"a":{"dtype":"F32","shape":[99999999999999999999],"data_offsets":[0,0]}}"#
        assertRejects(rawFile(header: huge)) {
            if case .shapeOverflow = $0 { return true }
            if case .invalidTensorEntry = $0 { return true }
            return false
        }
    }

    func testDuplicateName() {
        let header = #"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#
        assertRejects(rawFile(header: header, data: [0, 0])) { if case .duplicateTensor(_, "a") = $0 { return true }; return false }
        // A key repeated inside an entry is not a second tensor of that name.
        let inner = #"{"a":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#
        assertRejects(rawFile(header: inner, data: [0])) {
            if case let .invalidHeaderJSON(_, reason) = $0 { return reason.contains("duplicate key \"dtype\"") }
            return false
        }
    }

    func testSubByteTensorMustFillBytes() throws {
        assertRejects(rawFile(header: #"{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}"#, data: [0, 0])) {
            if case .misalignedSubByteTensor = $0 { return true }; return false
        }
        let ok = try open(rawFile(header: #"{"a":{"dtype":"F4","shape":[4],"data_offsets":[0,2]},"b":{"dtype":"F6_E2M3","shape":[4],"data_offsets":[2,5]}}"#, data: [1, 2, 3, 4, 5]))
        XCTAssertEqual(ok.tensors.map(\.byteCount), [2, 3])
    }

    func testEmptyAndScalarTensors() throws {
        let f = try open(rawFile(header: #"{"e":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]},"s":{"dtype":"F64","shape":[],"data_offsets":[0,8]}}"#,
                                 data: withUnsafeBytes(of: 2.5) { Array($0) }))
        XCTAssertEqual(try f.view("s").floats(), [2.5])
        XCTAssertEqual(try f.view("e").floats(), [])
    }

    func testNegativeOrFractionalNumbersRejected() {
        assertRejects(rawFile(header: #"{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}}"#)) { if case .invalidTensorEntry = $0 { return true }; return false }
        assertRejects(rawFile(header: #"{"a":{"dtype":"U8","shape":[1.5],"data_offsets":[0,0]}}"#)) { if case .invalidTensorEntry = $0 { return true }; return false }
        assertRejects(rawFile(header: #"{"a":{"dtype":"U8","shape":[1],"data_offsets":[1,0]}}"#)) { if case .invalidTensorEntry = $0 { return true }; return false }
    }

    func testMetadataMustMapStringsToStrings() {
        assertRejects(rawFile(header: #"{"__metadata__":{"n":1}}"#)) { if case .invalidHeaderJSON = $0 { return true }; return false }
    }
}

final class JSONParserTests: XCTestCase {
    func testParsesAndKeepsOrder() throws {
        let v = try JSONParser.parse(Data(#"{"b":[1,-2.5e3,true,null],"a":"x\u00e9\n\ud83d\ude00"}"#.utf8))
        guard case let .object(entries) = v else { return XCTFail() }
        XCTAssertEqual(entries.map(\.0), ["b", "a"])
        XCTAssertEqual(v["a"], .string("xé\n😀"))
        XCTAssertEqual(v["b"], .array([.number("1"), .number("-2.5e3"), .bool(true), .null]))
    }

    func testRejectsMalformed() {
        for text in ["{", "{\"a\":}", "[1,]", "{\"a\":1,}", "01", "\"\\x\"", "{\"a\" 1}", "tru", "\"\u{01}\"", "1 2", "\"\\ud800\""] {
            XCTAssertThrowsError(try JSONParser.parse(Data(text.utf8)), text)
        }
    }

    /// A repeated key is the error, at the repeat's offset and with its object's depth, whether the
    /// object is read into a tree (keys checked when it ends) or member by member (checked as read),
    /// and also when a malformed value or a deeper repeat follows it.
    func testDuplicateKeyComesFirst() throws {
        func duplicate(_ text: String) -> JSONParseError? {
            do { _ = try JSONParser.parse(Data(text.utf8)) } catch let error as JSONParseError { return error } catch { return nil }
            return nil
        }
        let cases: [(String, key: String, offset: Int, depth: Int)] = [
            (#"{"a":1,"b":2,"a":3}"#, "a", 13, 1),
            (#"{"x":{"a":1,"a":2}}"#, "a", 12, 2),
            (#"{"a":1,"a":2,"c":tru}"#, "a", 7, 1),
            (#"{"a":1,"a":{"b":1,"b":2}}"#, "a", 7, 1),
            (#"{"a":1,"a":[{"b":1,"b":2}]}"#, "a", 7, 1),
            (#"{"x":{"b":1,"b":2},"x":1}"#, "b", 12, 2),
            // A repeat before a value nested too deep: the repeat, at its own object's depth.
            (#"{"a":1,"a":"# + String(repeating: "[", count: 200), "a", 7, 1),
        ]
        for (text, key, offset, depth) in cases {
            let error = duplicate(text)
            XCTAssertEqual(error?.duplicateKey, key, text)
            XCTAssertEqual(error?.offset, offset, text)
            XCTAssertEqual(error?.duplicateKeyDepth, depth, text)
        }
        // A malformed value before the repeat is the error.
        XCTAssertNil(duplicate(#"{"a":tru,"a":1}"#)?.duplicateKey)
        XCTAssertNotNil(duplicate(#"{"a":tru,"a":1}"#))
        // Member by member: the same error, before the malformed value.
        var seen: [String] = []
        XCTAssertThrowsError(try Data(#"{"a":1,"a":2,"c":tru}"#.utf8).withUnsafeBytes { bytes in
            try JSONParser.forEachMember(ofObject: bytes) { key, _ in seen.append(key) }
        }) { error in
            let error = error as? JSONParseError
            XCTAssertEqual(error?.duplicateKey, "a")
            XCTAssertEqual(error?.offset, 7)
            XCTAssertEqual(error?.duplicateKeyDepth, 1)
        }
        XCTAssertEqual(seen, ["a"])
        // A member's own object read into a tree inside the streamed document: its depth.
        XCTAssertThrowsError(try Data(#"{"t":{"dtype":1,"dtype":2}}"#.utf8).withUnsafeBytes { bytes in
            try JSONParser.forEachMember(ofObject: bytes) { _, _ in }
        }) { XCTAssertEqual(($0 as? JSONParseError)?.duplicateKeyDepth, 2) }
    }

    /// Strings are UTF-8 or refused, with and without escapes; valid bytes of U+FFFD are kept.
    func testStringsMustBeUTF8() throws {
        for bytes: [UInt8] in [[0x22, 0xFF, 0x22], [0x22, 0x5C, 0x6E, 0xC3, 0x22], [0x22, 0xED, 0xA0, 0x80, 0x22], [0x22, 0xF0, 0x9F, 0x98, 0x22]] {
            XCTAssertThrowsError(try JSONParser.parse(Data(bytes)), "\(bytes)")
        }
        XCTAssertEqual(try JSONParser.parse(Data([0x22, 0xEF, 0xBF, 0xBD, 0x5C, 0x74, 0xC4, 0xA0, 0x22])), .string("\u{FFFD}\tĠ"))
        XCTAssertEqual(try JSONParser.parse(Data(#""Ġthe""#.utf8)), .string("Ġthe"))
    }

    func testRejectsDeepNesting() {
        XCTAssertThrowsError(try JSONParser.parse(Data((String(repeating: "[", count: 500) + String(repeating: "]", count: 500)).utf8)))
    }

    func testCompactQuoting() {
        XCTAssertEqual(CompactJSON.quoted("a\"b\\c\n\u{01}é"), #""a\"b\\c\n\u0001é""#)
    }
}

final class SHA256Tests: XCTestCase {
    func testKnownVectors() {
        func hex(_ s: String) -> String { Array(s.utf8).withUnsafeBytes { SHA256.hex($0) } }
        XCTAssertEqual(hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        var hasher = SHA256()
        let million = [UInt8](repeating: UInt8(ascii: "a"), count: 1_000_000)
        for chunk in stride(from: 0, to: million.count, by: 777) {
            million[chunk..<min(chunk + 777, million.count)].withUnsafeBytes { hasher.update($0) }
        }
        XCTAssertEqual(hasher.finalize().map { String(format: "%02x", $0) }.joined(),
                       "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }
}

/// Widening a large bf16 tensor on every core (streaming stores) gives every value's exact f32 bits.
final class WidenTests: XCTestCase {
    /// Every bf16 bit pattern (NaN, Inf and subnormal ones included) in a tensor past the parallel
    /// threshold (4 chunks of 2^18), into destinations at every offset from a 64-byte line, with a tail.
    func testLargeBF16WidensToExactBits() {
        let count = 4 << 18 + 37
        let bits = (0..<count).map { UInt16(truncatingIfNeeded: $0 &* 40503) }
        let expected = bits.map { UInt32($0) << 16 }
        bits.withUnsafeBytes { source in
            for offset in [0, 1, 5, 15] {
                let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: count + 16)
                defer { buffer.deallocate() }
                let destination = UnsafeMutableBufferPointer(rebasing: buffer[offset..<(offset + count)])
                XCTAssertTrue(TensorView.widen(source, dtype: .bf16, count: count, into: destination))
                XCTAssertEqual(destination.map(\.bitPattern), expected, "offset \(offset)")
            }
        }
    }
}
