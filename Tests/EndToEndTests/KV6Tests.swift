import Foundation
import SafeTensors
import XCTest

final class KV6Tests: XCTestCase {
    var dir: URL!
    override func setUpWithError() throws { dir = try makeTemporaryDirectory() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    func testQuantizeKV6ForwardAndValidate() throws {
        let trained = fixtures.appendingPathComponent("trained"), out = dir.appendingPathComponent("kv6")
        let r = try runTool("dsconvert-quantize", ["--kv6", "--calibration", trained.appendingPathComponent("calibration.json").path,
                                                   "--input", trained.path, "--output", out.path])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("mla-kv6c"), r.stdout)
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: out.appendingPathComponent("config.json"))) as! [String: Any]
        let kv = config["dsconvert_kv_cache"] as! [String: Any]
        XCTAssertEqual(kv["format"] as? String, "mla-kv6c")
        XCTAssertEqual(kv["bytes_per_token_per_layer"] as? Int, 60)
        XCTAssertEqual((kv["layout"] as! [[String: Any]]).map { $0["field"] as! String }, ["codes"])
        XCTAssertEqual((kv["channels"] as! [[String: Any]]).count, 4)
        let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: out.appendingPathComponent("dsconvert.json"))) as! [String: Any]
        let options = (manifest["stages"] as! [[String: Any]]).last!["options"] as! [String: String]
        XCTAssertEqual(options["kv6"], "mla-kv6c")

        // The declared format is what validate runs by default; --kv-cache overrides it.
        let v = try runTool("dsconvert", ["validate", "--reference", trained.path, "--candidate", out.path])
        XCTAssertEqual(v.status, 0, v.stderr)
        XCTAssertTrue(v.stdout.contains("(KV cache: mla-kv6c)"), v.stdout)
        let v2 = try runTool("dsconvert", ["validate", "--reference", trained.path, "--candidate", out.path, "--kv-cache", "none", "--max-logit-delta", "0"])
        XCTAssertEqual(v2.status, 0, "the declaration changes no weight: \(v2.stdout)")
        // mla-kv6c needs a checkpoint's calibration: a usage error on one that does not declare it.
        let v3 = try runTool("dsconvert", ["validate", "--reference", trained.path, "--candidate", trained.path, "--kv-cache", "mla-kv6c"])
        XCTAssertEqual(v3.status, 64, v3.stderr)
        XCTAssertTrue(v3.stderr.contains("quantize --kv6 --calibration"), v3.stderr)
        let fwd = try runTool("dsconvert", ["forward", "--model", trained.path, "--tokens", trained.appendingPathComponent("tokens.json").path,
                                            "--output", dir.appendingPathComponent("f.safetensors").path, "--kv-cache", "fp8_ds_mla"])
        XCTAssertEqual(fwd.status, 0, fwd.stderr)

        XCTAssertEqual(try runTool("dsconvert", ["validate", "--reference", trained.path, "--candidate", out.path, "--kv-cache", "int4"]).status, 64)
        XCTAssertEqual(try runTool("dsconvert", ["quantize", "--calibration", "x.json", "--fp8", "--input", "a", "--output", "b"]).status, 64)
        XCTAssertEqual(try runTool("dsconvert", ["quantize", "--kv6", "--dequantize", "--input", "a", "--output", "b"]).status, 64)
        let inspect = try runTool("dsconvert", ["inspect", out.path])
        XCTAssertTrue(inspect.stdout.contains("calibrated on 2048 tokens of \(trained.appendingPathComponent("calibration.json").path), channels for layers 0-3\n"),
                      inspect.stdout)
    }

    /// A V3 checkpoint's MTP layer is calibrated too, and inspect says so.
    func testMTPLayerChannelsAreDeclaredAndShown() throws {
        let v3 = fixtures.appendingPathComponent("v3"), out = dir.appendingPathComponent("v3-kv6c")
        let r = try runTool("dsconvert", ["quantize", "--kv6", "--calibration", v3.appendingPathComponent("tokens.json").path,
                                          "--input", v3.path, "--output", out.path])
        XCTAssertEqual(r.status, 0, r.stderr)
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: out.appendingPathComponent("config.json"))) as! [String: Any]
        let channels = (config["dsconvert_kv_cache"] as! [String: Any])["channels"] as! [[String: Any]]
        XCTAssertEqual(channels.map { $0["layer"] as! Int }, [0, 1, 2, 3])
        let inspect = try runTool("dsconvert", ["inspect", out.path])
        XCTAssertTrue(inspect.stdout.contains("channels for layers 0-3 (the MTP layer's included)"), inspect.stdout)
    }
}
