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
        for bad in ["", "GB", "-1", "0", "12XB", "five", "infGB", "nanGB", "nanMB", "1e30GB", "1e300B", "-5GB", "9223372036854775807GB", "0.1B"] { XCTAssertThrowsError(try ConversionOutput.parseSize(bad), bad) }
    }

    func testOutputInsideInputIsRefused() throws {
        let input = FileManager.default.temporaryDirectory.appendingPathComponent("dsconvert-in-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: input, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: input) }
        let layout = CheckpointLayout(tensors: [])
        for output in [input, input.appendingPathComponent("sub"), URL(fileURLWithPath: input.path + "/./x/..")] {
            XCTAssertThrowsError(try ConversionOutput(input: input, output: output, force: true, layout: layout, stage: .init(stage: "reshard", options: [:], input: input.path))) {
                guard case .outputInsideInput = $0 as? OutputSafetyError else { return XCTFail("\($0)") }
            }
        }
    }

    func testManifestRoundTrip() throws {
        let m = ConversionManifest(stages: [.init(stage: "reshard", options: ["max_shard_size": "1"], input: "/in")],
                                   files: [.init(name: "model.safetensors", bytes: 10, sha256: String(repeating: "0", count: 64))])
        let data = try m.encoded()
        XCTAssertEqual(try JSONDecoder().decode(ConversionManifest.self, from: data), m)
        XCTAssertTrue(String(decoding: data, as: UTF8.self).contains("\"tool_version\""))
    }
}
