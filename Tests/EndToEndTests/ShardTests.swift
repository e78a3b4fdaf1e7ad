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
}
