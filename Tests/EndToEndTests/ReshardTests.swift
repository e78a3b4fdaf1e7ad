import Foundation
import XCTest
import SafeTensors

final class ReshardTests: XCTestCase {
    var dir: URL!
    override func setUpWithError() throws { dir = try makeTemporaryDirectory() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    func testReshardKeepsEveryTensorByteForByte() throws {
        let input = fixtures.appendingPathComponent("v2")
        let output = dir.appendingPathComponent("out")
        let r = try runTool("dsconvert", ["reshard", "--input", input.path, "--output", output.path, "--max-shard-size", "300KB"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let a = try Checkpoint(directory: input), b = try Checkpoint(directory: output)
        XCTAssertEqual(Set(a.tensors.map(\.name)), Set(b.tensors.map(\.name)))
        for t in a.tensors { XCTAssertEqual(Array(try a.view(t.name).bytes), Array(try b.view(t.name).bytes), t.name) }
        XCTAssertEqual(b.shardNames.count, 4)
        XCTAssertTrue(FileManager.default.fileExists(atPath: output.appendingPathComponent("config.json").path))
        XCTAssertTrue(FileManager.default.fileExists(atPath: output.appendingPathComponent("tokens.json").path), "side files copied")

        // The manifest records the stage and every shard's checksum.
        let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: output.appendingPathComponent("dsconvert.json"))) as! [String: Any]
        let files = manifest["files"] as! [[String: Any]]
        XCTAssertEqual(files.count, 4)
        for f in files {
            XCTAssertEqual(f["sha256"] as? String, try SHA256.hex(fileAt: output.appendingPathComponent(f["name"] as! String).path))
        }

        // Deterministic: the same input and options give the same bytes.
        let again = dir.appendingPathComponent("again")
        XCTAssertEqual(try runTool("dsconvert", ["reshard", "--input", input.path, "--output", again.path, "--max-shard-size", "300KB"]).status, 0)
        for name in b.shardNames + ["model.safetensors.index.json"] {
            XCTAssertEqual(try Data(contentsOf: output.appendingPathComponent(name)), try Data(contentsOf: again.appendingPathComponent(name)), name)
        }

        // Existing output needs --force; the old output is untouched without it.
        let refused = try runTool("dsconvert", ["reshard", "--input", input.path, "--output", output.path])
        XCTAssertEqual(refused.status, 1)
        XCTAssertEqual(refused.stderrLines, ["dsconvert reshard: error: \(output.path): output already exists (pass --force to replace it)"])
        XCTAssertEqual(try Checkpoint(directory: output).shardNames.count, 4)
        let forced = try runTool("dsconvert", ["reshard", "--input", input.path, "--output", output.path, "--force", "--max-shard-size", "5GB"])
        XCTAssertEqual(forced.status, 0, forced.stderr)
        XCTAssertEqual(try Checkpoint(directory: output).shardNames, ["model.safetensors"])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted(), ["again", "out"], "no work directories left")
    }

    func testFailedRunLeavesNoOutput() throws {
        let input = try copyFixture("lite", to: dir)
        let shard = try FileManager.default.contentsOfDirectory(atPath: input.path).filter { $0.hasPrefix("model-") }.sorted().last!
        let handle = try FileHandle(forWritingTo: input.appendingPathComponent(shard))
        try handle.truncate(atOffset: 100)
        try handle.close()
        let output = dir.appendingPathComponent("out")
        let r = try runTool("dsconvert", ["reshard", "--input", input.path, "--output", output.path])
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.stderrLines.count, 1)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), ["lite"])

        let inside = try runTool("dsconvert", ["reshard", "--input", fixtures.appendingPathComponent("lite").path, "--output", fixtures.appendingPathComponent("lite/sub").path])
        XCTAssertEqual(inside.status, 1)
        XCTAssertTrue(inside.stderr.contains("output must not be the input directory or inside it"), inside.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: fixtures.appendingPathComponent("lite/sub").path))
    }
}
