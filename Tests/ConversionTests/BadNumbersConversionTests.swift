import XCTest
@testable import Conversion
import DeepSeekModel
import SafeTensors

/// absorb rounds its f64 products once to the storage dtype; products of finite weights can exceed
/// that dtype's range and must fail naming the tensor, not be written as Inf.
final class AbsorbOverflowTests: XCTestCase {
    func testProductsBeyondTheStorageRangeAreRefused() throws {
        for (dtype, limit) in [(DType.bf16, 3.3895313892515355e38), (DType.f32, Double(Float.greatestFiniteMagnitude))] {
            XCTAssertNoThrow(try AbsorbStage.encodeFinite([1, -limit, limit], as: dtype, tensor: "t", path: "/in/m.safetensors"))
            XCTAssertThrowsError(try AbsorbStage.encodeFinite([1, 1e72], as: dtype, tensor: "model.layers.0.self_attn.q_absorbed.weight", path: "/in/m.safetensors")) {
                XCTAssertEqual($0 as? ConversionError, .nonFiniteResult(path: "/in/m.safetensors", tensor: "model.layers.0.self_attn.q_absorbed.weight", dtype: dtype.rawValue))
            }
            XCTAssertThrowsError(try AbsorbStage.encodeFinite([-.infinity], as: dtype, tensor: "t", path: "p"))
        }
    }
}

/// The config document every stage edits names the file in its errors.
final class ConfigDocumentErrorTests: XCTestCase {
    func testDuplicateKeysAndBadJSONNameTheFile() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("config-editor-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("config.json").path
        try Data(#"{"a": 1, "a": 2}"#.utf8).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try ConfigDocument.load(directory: dir)) { XCTAssertEqual($0 as? DeepSeekModelError, .duplicateKey(path: path, key: "a")) }
        try Data(#"{"a": "#.utf8).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try ConfigDocument.load(directory: dir)) {
            XCTAssertTrue(($0 as? DeepSeekModelError)?.errorDescription?.hasPrefix(path + ": invalid config: not valid JSON") == true, "\($0)")
        }
    }
}
