import XCTest
@testable import Conversion
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
