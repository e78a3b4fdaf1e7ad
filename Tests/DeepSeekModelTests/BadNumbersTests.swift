import Foundation
import Numerics
import XCTest
@testable import DeepSeekModel
import SafeTensors

/// Absurd numbers in config.json and FP8 data: one typed error naming the file, never a trap.
final class BadNumbersTests: XCTestCase {
    private let path = "/m/config.json"

    private func lite(_ edit: (inout [String: Any]) -> Void = { _ in }) throws -> Data {
        var object = try JSONSerialization.jsonObject(with: Data(contentsOf: fixtures.appendingPathComponent("lite/config.json"))) as! [String: Any]
        edit(&object)
        return try JSONSerialization.data(withJSONObject: object)
    }

    private func assertRefused(_ data: Data, _ expected: DeepSeekModelError, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try DeepSeekConfig.decode(data, path: path), file: file, line: line) { error in
            XCTAssertEqual(error as? DeepSeekModelError, expected, file: file, line: line)
            XCTAssertTrue((error as? DeepSeekModelError)?.errorDescription?.hasPrefix(self.path + ": ") == true, "names the file", file: file, line: line)
        }
    }

    /// A fractional or oversized number where an integer goes: Foundation reports "not valid JSON"
    /// with no key; the error names the key and its literal (found by an audit).
    func testANonIntegerNamesItsKey() throws {
        assertRefused(try lite { $0["hidden_size"] = 64.5 }, .invalidConfig(path: path, reason: "key 'hidden_size': 64.5 is not a 64-bit integer"))
        let huge = String(decoding: try lite(), as: UTF8.self).replacingOccurrences(of: "\"num_hidden_layers\":3", with: "\"num_hidden_layers\":1000000000000000000000000000000")
        XCTAssertTrue(huge.contains("1000000000000000000000000000000"))
        assertRefused(Data(huge.utf8), .invalidConfig(path: path, reason: "key 'num_hidden_layers': 1000000000000000000000000000000 is not a 64-bit integer"))
        assertRefused(try lite { $0["rope_scaling"] = ["type": "yarn", "factor": 40, "original_max_position_embeddings": 4096.5] },
                      .invalidConfig(path: path, reason: "key 'rope_scaling.original_max_position_embeddings': 4096.5 is not a 64-bit integer"))
        // Keys the config does not read are not tried: with 4,000 of them fractional the search
        // once decoded the whole document 4,000 times (6.7 s; 12,000 took 76 s).
        assertRefused(try lite { for i in 0..<4000 { $0["x\(i)"] = Double(i) + 0.5 }; $0["vocab_size"] = 320.5 },
                      .invalidConfig(path: path, reason: "key 'vocab_size': 320.5 is not a 64-bit integer"))
        // Unknown keys inside a member decoding reads are numbers to try too: at most 64 are tried.
        XCTAssertThrowsError(try DeepSeekConfig.decode(try lite {
            var scaling: [String: Any] = ["type": "yarn", "factor": 40, "original_max_position_embeddings": 4096.5]
            for i in 0..<4000 { scaling["x\(i)"] = Double(i) + 0.5 }
            $0["rope_scaling"] = scaling
        }, path: path)) { error in
            XCTAssertTrue((error as? DeepSeekModelError)?.errorDescription?.hasPrefix(self.path + ": invalid config: ") == true, "\(error)")
        }
    }

    /// Reals beyond f32's range, and a softmax scale they make Inf or 0, are refused naming the key
    /// (found by an audit: GGUF wrote +Inf and the forward pass ran to NaN logits).
    func testRealsAndTheSoftmaxScaleFitF32() throws {
        let yarn: [String: Any] = ["type": "yarn", "factor": 40, "mscale": 1, "original_max_position_embeddings": 4096]
        assertRefused(try lite { $0["rope_scaling"] = yarn.merging(["mscale_all_dim": 1e200]) { a, _ in a } },
                      .invalidConfig(path: path, reason: "'rope_scaling.mscale_all_dim' = 1e+200 is beyond the range of f32, in which the forward pass and GGUF use it"))
        assertRefused(try lite { $0["routed_scaling_factor"] = 1e308 },
                      .invalidConfig(path: path, reason: "'routed_scaling_factor' = 1e+308 is beyond the range of f32, in which the forward pass and GGUF use it"))
        // A review found the other end: a positive real below f32's smallest is 0 there.
        assertRefused(try lite { $0["rms_norm_eps"] = 1e-50 },
                      .invalidConfig(path: path, reason: "'rms_norm_eps' = 1e-50 is 0 in f32, in which engines and GGUF use it (the smallest positive f32 is 1.4e-45)"))
        XCTAssertNoThrow(try DeepSeekConfig.decode(try lite { $0["rms_norm_eps"] = 1e-44 }, path: path))
        XCTAssertThrowsError(try DeepSeekConfig.decode(try lite { $0["rope_scaling"] = yarn.merging(["mscale_all_dim": 1e30]) { a, _ in a } }, path: path)) { error in
            XCTAssertTrue((error as? DeepSeekModelError)?.errorDescription?.contains("the softmax scale (qk_head_dim and rope_scaling's mscale_all_dim give") == true, "\(error)")
        }
        XCTAssertNoThrow(try DeepSeekConfig.decode(try lite { $0["rope_scaling"] = yarn.merging(["mscale_all_dim": 0.707]) { a, _ in a } }, path: path))
    }

    func testProductsOfAcceptedDimensionsOverflowIntoOneError() throws {
        let data = try lite { for key in ["hidden_size", "num_attention_heads", "qk_nope_head_dim"] { $0[key] = 1 << 24 } }
        XCTAssertThrowsError(try DeepSeekConfig.decode(data, path: path)) { error in
            guard case let .sizeOverflow(p, quantity)? = error as? DeepSeekModelError else { return XCTFail("\(error)") }
            XCTAssertEqual(p, self.path)
            XCTAssertTrue(quantity.contains("q_proj"), quantity)
        }
    }

    func testAccountingAndCostTableThrowInsteadOfTrapping() throws {
        var config = try DeepSeekConfig.decode(try lite(), path: path)
        config.hiddenSize = 1 << 24
        config.numAttentionHeads = 1 << 24
        config.qkNopeHeadDim = 1 << 24
        XCTAssertThrowsError(try ModelAccounting(config: config)) { XCTAssertTrue($0 is SizeOverflow) }
        XCTAssertThrowsError(try AbsorptionCost(config: config)) { XCTAssertTrue($0 is SizeOverflow) }
        let fine = try AbsorptionCost(config: try DeepSeekConfig.decode(try lite(), path: path))
        XCTAssertThrowsError(try fine.table(contextLength: Int.max)) { XCTAssertTrue($0 is SizeOverflow) }
        XCTAssertEqual(CheckedSize.ceilDiv(Int.max, Int.max), 1)
        XCTAssertEqual(CheckedSize.ceilDiv(129, 128), 2)
        XCTAssertEqual(CheckedSize.ceilDiv(0, 128), 0)
    }

    func testWeightBlockSizes() throws {
        func quantized(_ sizes: [Any]) throws -> Data {
            try lite { $0["quantization_config"] = ["quant_method": "fp8", "fmt": "e4m3", "weight_block_size": sizes] }
        }
        for sizes in [[0, 0], [Int.max, Int.max], [Int.max, 128], [-128, -128], [(1 << 24) + 1, (1 << 24) + 1]] {
            assertRefused(try quantized(sizes), .invalidBlockSize(path: path, value: "\(sizes)", limit: 1 << 24))
        }
        XCTAssertEqual(try DeepSeekConfig.decode(try quantized([1 << 24, 1 << 24]), path: path).quantization?.block, 1 << 24)
        XCTAssertEqual(QuantizationConfig.scaleShape(of: [3, 300, 200], block: Int.max), [3, 1, 1], "no n + b - 1 overflow")
        XCTAssertEqual(FP8BlockQuantizer(block: Int.max).scaleShape(rows: 300, cols: 200), [1, 1])

        // The raw reader --dequantize uses (any architecture's config).
        func raw(_ text: String) throws -> Int { try QuantizationConfig.validatedBlock(rawQuantizationConfig: try JSONParser.parse(Data(text.utf8)), path: path) }
        XCTAssertEqual(try raw(#"{"weight_block_size": [128, 128]}"#), 128)
        XCTAssertEqual(try raw(#"{"quant_method": "fp8"}"#), 128, "absent: DeepSeek's default")
        for bad in [#"[0, 0]"#, #"[18446744073709551615, 18446744073709551615]"#, #"[9223372036854775807, 128]"#, #""128""#, #"[128.5, 128.5]"#, #"[128]"#] {
            XCTAssertThrowsError(try raw(#"{"weight_block_size": "# + bad + "}"), bad) { error in
                guard case .invalidBlockSize(self.path, _, _)? = error as? DeepSeekModelError else { return XCTFail("\(bad): \(error)") }
            }
        }
    }

    func testRealsMustBePositiveAndFinite() throws {
        assertRefused(try lite { $0["rope_theta"] = -1 }, .notPositive(path: path, key: "rope_theta", value: -1))
        assertRefused(try lite { $0["rope_theta"] = 0 }, .notPositive(path: path, key: "rope_theta", value: 0))
        assertRefused(try lite { $0["rms_norm_eps"] = 0 }, .notPositive(path: path, key: "rms_norm_eps", value: 0))
        assertRefused(try lite { $0["routed_scaling_factor"] = -2 }, .notPositive(path: path, key: "routed_scaling_factor", value: -2))
        let yarn: [String: Any] = ["type": "yarn", "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096]
        for (key, value) in [("factor", 0.0), ("factor", -40.0), ("mscale", -0.707), ("mscale_all_dim", 0.0)] {
            assertRefused(try lite { $0["rope_scaling"] = yarn.merging([key: value]) { $1 } }, .notPositive(path: path, key: "rope_scaling.\(key)", value: value))
        }
        XCTAssertNoThrow(try DeepSeekConfig.decode(try lite { $0["rope_scaling"] = yarn }, path: path))
        let text = try fixtureText()
        XCTAssertTrue(text.contains("\"rms_norm_eps\": 1e-06"))
        assertRefused(Data(text.replacingOccurrences(of: "\"rms_norm_eps\": 1e-06", with: "\"rms_norm_eps\": -1e999").utf8),
                      .nonFiniteNumber(path: path, key: "rms_norm_eps"))
    }

    private func fixtureText() throws -> String { try String(contentsOf: fixtures.appendingPathComponent("lite/config.json"), encoding: .utf8) }

    func testDuplicateKeysAreRefused() throws {
        let text = try fixtureText()
        assertRefused(Data(text.replacingOccurrences(of: "{", with: #"{"vocab_size": 64, "#, options: [], range: text.range(of: "{")).utf8),
                      .duplicateKey(path: path, key: "vocab_size"))
        let nested = #"{"quantization_config": {"quant_method": "fp8", "quant_method": "int8"}, "#
        assertRefused(Data(text.replacingOccurrences(of: "{", with: nested, options: [], range: text.range(of: "{")).utf8),
                      .duplicateKey(path: path, key: "quant_method"))
    }

    func testPlacementRecordsMustMatchTheConfig() throws {
        let v2 = try JSONSerialization.jsonObject(with: Data(contentsOf: fixtures.appendingPathComponent("v2/config.json"))) as! [String: Any]
        func device(_ edit: (inout [String: Any], inout [String: Any]) -> Void) throws -> Data {
            var placement: [String: Any] = ["devices": 2, "experts": 16, "groups": 8, "device_bound_m": 2]
            var record: [String: Any] = ["rank": 1, "expert_range": [8, 16], "dense": "replicated", "dense_location": "../device-0"]
            edit(&record, &placement)
            record["placement"] = placement
            return try JSONSerialization.data(withJSONObject: v2.merging(["dsconvert_placement": record]) { $1 })
        }
        XCTAssertNoThrow(try DeepSeekConfig.decode(try device { _, _ in }, path: path))
        let bad: [(String, (inout [String: Any], inout [String: Any]) -> Void)] = [
            ("experts 1", { $1["experts"] = 1 }), ("experts -8", { $1["experts"] = -8 }), ("devices 0", { $1["devices"] = 0 }),
            ("devices 3", { $1["devices"] = 3 }), ("rank 2", { r, _ in r["rank"] = 2 }), ("rank -1", { r, _ in r["rank"] = -1 }),
            ("range", { r, _ in r["expert_range"] = [0, 16] }), ("short range", { r, _ in r["expert_range"] = [8] }),
            ("groups 0", { $1["groups"] = 0 }),
        ]
        for (name, edit) in bad {
            XCTAssertThrowsError(try DeepSeekConfig.decode(try device(edit), path: path), name) { error in
                guard case .inconsistentPlacement(self.path, _)? = error as? DeepSeekModelError else { return XCTFail("\(name): \(error)") }
            }
        }
        // `dense` is an enum decoded at the boundary: another value is refused there, naming the key.
        XCTAssertThrowsError(try DeepSeekConfig.decode(try device { r, _ in r["dense"] = "sometimes" }, path: path)) { error in
            XCTAssertTrue((error as? DeepSeekModelError)?.errorDescription?.contains("key 'dsconvert_placement.dense'") == true, "\(error)")
        }
    }

    func testFP8IntegrityFindsNonFiniteCodesAndBadScales() {
        func first(_ codes: [UInt8], _ format: FP8Format) -> Int? { codes.withUnsafeBytes { FP8Integrity.firstNonFiniteCode($0, format: format) } }
        var codes = [UInt8](repeating: 0x7E, count: 40_000)
        XCTAssertNil(first(codes, .e4m3), "0x7E is 448")
        codes[33_333] = 0xFF
        XCTAssertEqual(first(codes, .e4m3), 33_333)
        codes[20] = 0x7F
        XCTAssertEqual(first(codes, .e4m3), 20)
        XCTAssertNil(first([0x7B, 0xFB, 0x00, 0x80], .e5m2), "57344 is finite")
        for code: UInt8 in [0x7C, 0xFC, 0x7D, 0x7E, 0x7F, 0xFF] { XCTAssertEqual(first([0x01, code], .e5m2), 1, "E5M2 0x\(String(code, radix: 16))") }
        func scale(_ s: [Float]) -> Int? { s.withUnsafeBufferPointer { FP8Integrity.firstInvalidScale($0) } }
        XCTAssertNil(scale([1, Float(bitPattern: 71362), 3e38]))  // 1e-40 as f32
        for bad: Float in [0, -0, -1, .nan, .infinity, -.infinity] { XCTAssertEqual(scale([1, bad]), 1, "\(bad)") }
    }
}
