import Foundation
import SafeTensors
import XCTest

final class ShardTests: XCTestCase {
    var dir: URL!
    override func setUpWithError() throws { dir = try makeTemporaryDirectory() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    func testShardCommand() throws {
        let out = dir.appendingPathComponent("ep")
        let r = try runTool("dsconvert-shard", ["--input", fixtures.appendingPathComponent("v2").path, "--output", out.path])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("16 experts over 8 devices, 2 per device; device bound M = 3"), r.stdout)
        XCTAssertTrue(r.stdout.contains("expert bytes spread across devices: 0.0000%"), r.stdout)
        for d in 0..<8 {
            let inspect = try runTool("dsconvert", ["inspect", out.appendingPathComponent("device-\(d)").path])
            XCTAssertEqual(inspect.status, 0, "device-\(d): \(inspect.stderr)")
        }
        let placement = try JSONSerialization.jsonObject(with: Data(contentsOf: out.appendingPathComponent("placement.json"))) as! [String: Any]
        for file in placement["files"] as! [[String: Any]] {
            XCTAssertEqual(file["sha256"] as? String, try SHA256.hex(fileAt: out.appendingPathComponent(file["name"] as! String).path))
        }
        let v = try runTool("dsconvert-validate", ["--reference", fixtures.appendingPathComponent("v2").path, "--candidate", out.path,
                                                   "--max-logit-delta", "1e-5"])
        XCTAssertEqual(v.status, 0, v.stderr)
        XCTAssertTrue(v.stdout.contains("fan-out      devices per token max 3"), v.stdout)

        let refused = try runTool("dsconvert", ["shard", "--devices", "8", "--input", fixtures.appendingPathComponent("fp8").path, "--output", dir.appendingPathComponent("x").path])
        XCTAssertEqual(refused.status, 1)
        XCTAssertTrue(refused.stderr.contains("4 routed experts do not split evenly over 8 devices"), refused.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("x").path))
        let twice = try runTool("dsconvert", ["shard", "--input", out.appendingPathComponent("device-0").path, "--output", dir.appendingPathComponent("y").path])
        XCTAssertEqual(twice.status, 1)
        XCTAssertTrue(twice.stderr.contains("already sharded"), twice.stderr)
        XCTAssertEqual(try runTool("dsconvert", ["shard", "--devices", "0", "--input", "a", "--output", "b"]).status, 64)
        XCTAssertEqual(try runTool("dsconvert", ["shard", "--dense", "twice", "--input", "a", "--output", "b"]).status, 64)
    }

    /// A V3 config whose only MoE layer is the MTP layer (every main layer dense) is sharded as
    /// declared: its experts are placed and accounted, and the sharded output validates against the
    /// original, MTP drift included. Built from the v3 fixture by keeping its dense layer 0 and
    /// renaming its MTP layer 3 to layer 1.
    func testOnlyMoELayerIsTheMTPLayer() throws {
        let source = try Checkpoint(directory: fixtures.appendingPathComponent("v3"))
        let model = dir.appendingPathComponent("mtp-only-moe")
        func renamed(_ name: String) -> String? {
            if name.hasPrefix("model.layers.1.") || name.hasPrefix("model.layers.2.") { return nil }
            return name.hasPrefix("model.layers.3.") ? "model.layers.1." + name.dropFirst("model.layers.3.".count) : name
        }
        try FileManager.default.createDirectory(at: model, withIntermediateDirectories: true)
        let kept = source.tensors.compactMap { t in renamed(t.name).map { (from: t.name, to: $0, t: t) } }
        let writer = CheckpointWriter(layout: CheckpointLayout(tensors: kept.map { PlannedTensor(name: $0.to, dtype: $0.t.dtype, shape: $0.t.shape) }),
                                      directory: model)
        for k in kept { try writer.write(k.to, bytes: try source.view(k.from).bytes) }
        try writer.finish()
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: fixtures.appendingPathComponent("v3/config.json"))) as! [String: Any]
        config["num_hidden_layers"] = 1
        XCTAssertEqual(config["first_k_dense_replace"] as? Int, 1)
        XCTAssertEqual(config["num_nextn_predict_layers"] as? Int, 1)
        try JSONSerialization.data(withJSONObject: config).write(to: model.appendingPathComponent("config.json"))
        try FileManager.default.copyItem(at: fixtures.appendingPathComponent("v3/tokens.json"), to: dir.appendingPathComponent("tokens.json"))

        let out = dir.appendingPathComponent("ep")
        let r = try runTool("dsconvert", ["shard", "--devices", "4", "--input", model.path, "--output", out.path])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("16 experts over 4 devices, 4 per device"), r.stdout)
        let placement = try JSONSerialization.jsonObject(with: Data(contentsOf: out.appendingPathComponent("placement.json"))) as! [String: Any]
        let layers = try XCTUnwrap(placement["layers"] as? [[String: Any]])
        XCTAssertEqual(layers.count, 1, "one MoE layer: the MTP layer")
        for d in 0..<4 {
            let device = try Checkpoint(directory: out.appendingPathComponent("device-\(d)"))
            let experts = Set(device.tensors.compactMap { t -> Int? in
                let parts = t.name.split(separator: ".")
                return t.name.hasPrefix("model.layers.1.mlp.experts.") ? Int(parts[5]) : nil
            })
            XCTAssertEqual(experts, Set((4 * d)..<(4 * d + 4)), "device-\(d) holds its own four of the MTP layer's experts")
        }
        let v = try runTool("dsconvert", ["validate", "--reference", model.path, "--candidate", out.path, "--tokens", dir.appendingPathComponent("tokens.json").path,
                                          "--max-logit-delta", "1e-5"])
        XCTAssertEqual(v.status, 0, v.stderr)
        // The MTP layer's experts run from their devices: its routing agrees everywhere.
        XCTAssertTrue(v.stdout.contains("MTP layer 1 ") && v.stdout.contains("routing 1.0000"), v.stdout)
    }
}
