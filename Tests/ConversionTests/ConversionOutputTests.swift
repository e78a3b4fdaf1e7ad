import Foundation
import XCTest
@testable import Conversion
import SafeTensors

final class ConversionOutputTests: XCTestCase {
    func testParseSize() throws {
        XCTAssertEqual(try ConversionOutput.parseSize("5GB"), 5_000_000_000)
        XCTAssertEqual(try ConversionOutput.parseSize("2GiB"), 2 << 30)
        XCTAssertEqual(try ConversionOutput.parseSize("500mb"), 500_000_000)
        XCTAssertEqual(try ConversionOutput.parseSize("1.5KB"), 1500)
        XCTAssertEqual(try ConversionOutput.parseSize("4096"), 4096)
        // gguf-split's own spellings (a review: export --split-max-size 50G was refused).
        XCTAssertEqual(try ConversionOutput.parseSize("50G"), 50_000_000_000)
        XCTAssertEqual(try ConversionOutput.parseSize("500M"), 500_000_000)
        for bad in ["", "GB", "-1", "0", "12XB", "five", "infGB", "nanGB", "nanMB", "1e30GB", "1e300B", "-5GB", "9223372036854775807GB", "0.1B"] { XCTAssertThrowsError(try ConversionOutput.parseSize(bad), bad) }
    }

    func testOutputInsideInputIsRefused() throws {
        let input = FileManager.default.temporaryDirectory.appendingPathComponent("dsconvert-in-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: input, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: input) }
        let layout = CheckpointLayout(tensors: [])
        for output in [input, input.appendingPathComponent("sub"), URL(fileURLWithPath: input.path + "/./x/..")] {
            XCTAssertThrowsError(try ConversionOutput(input: input, output: output, force: true, layout: layout, stage: .init(stage: .reshard, options: [:], input: input.path))) {
                guard case .outputInsideInput = $0 as? OutputSafetyError else { return XCTFail("\($0)") }
            }
        }
    }

    func testManifestRoundTrip() throws {
        let m = ConversionManifest(stages: [.init(stage: .reshard, options: ["max_shard_size": "1"], input: "/in")],
                                   files: [.init(name: "model.safetensors", bytes: 10, sha256: String(repeating: "0", count: 64))])
        let data = try m.encoded()
        XCTAssertEqual(try JSONDecoder().decode(ConversionManifest.self, from: data), m)
        XCTAssertTrue(String(decoding: data, as: UTF8.self).contains("\"tool_version\""))
    }

    /// An input's manifest is carried into every output made from it, so one this tool would not
    /// write (another format or version, a stage it does not have) is refused naming the file (found
    /// by an audit: it passed through into outputs that failed the manifest schema).
    func testForeignManifestsAreRefused() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("dsconvert-manifest-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent(ConversionManifest.fileName)
        let stage = #"{"stage":"absorb","tool_version":"9","options":{},"input":"/in"}"#
        for (text, reason) in [
            (#"{"format":"x","version":1,"stages":[\#(stage)],"files":[]}"#, "format 'x' version 1, not dsconvert-manifest version 1"),
            (#"{"format":"dsconvert-manifest","version":9,"stages":[\#(stage)],"files":[]}"#, "format 'dsconvert-manifest' version 9, not dsconvert-manifest version 1"),
        ] {
            try Data(text.utf8).write(to: url)
            XCTAssertThrowsError(try ConversionManifest.load(directory: dir)) {
                XCTAssertEqual(($0 as? ConversionError)?.errorDescription?.contains(url.path + ": "), true, "\($0)")
                XCTAssertEqual(($0 as? ConversionError)?.errorDescription?.contains(reason), true, "\($0)")
            }
        }
        try Data(#"{"format":"dsconvert-manifest","version":1,"stages":[{"stage":"bogus","tool_version":"9","options":{},"input":"/in"}],"files":[]}"#.utf8).write(to: url)
        XCTAssertThrowsError(try ConversionManifest.load(directory: dir)) {
            XCTAssertEqual(($0 as? ConversionError)?.errorDescription?.contains(url.path + ": "), true, "\($0)")
        }
        try Data(#"{"format":"dsconvert-manifest","version":1,"stages":[\#(stage)],"files":[]}"#.utf8).write(to: url)
        XCTAssertEqual(try ConversionManifest.load(directory: dir)?.stages.map(\.stage), [.absorb])
    }
}
