import Foundation
import SafeTensors
import XCTest

/// `dsconvert convert` against the stages run one after another: the same bytes.
final class ConvertTests: XCTestCase {
    var dir: URL!
    override func setUpWithError() throws { dir = try makeTemporaryDirectory() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    /// One stage of the staged run: the binary, its arguments (without input/output) and the convert flags it stands for.
    struct Stage { let tool: String; let arguments: [String] }

    /// Runs `stages` one after another from `fixture`, then `convert` with `flags`; returns both outputs.
    func runBoth(_ fixture: String, stages: [Stage], flags: [String], tag: String) throws -> (staged: URL, single: URL) {
        var input = fixtures.appendingPathComponent(fixture)
        for (i, stage) in stages.enumerated() {
            let out = dir.appendingPathComponent("\(tag)-stage\(i)")
            let r = try runTool(stage.tool, stage.arguments + ["--input", input.path, "--output", out.path])
            XCTAssertEqual(r.status, 0, "\(stage.tool): \(r.stderr)")
            input = out
        }
        let single = dir.appendingPathComponent("\(tag)-convert")
        let r = try runTool("dsconvert", ["convert"] + flags + ["--input", fixtures.appendingPathComponent(fixture).path, "--output", single.path])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("in one pass"), r.stdout)
        return (input, single)
    }

    /// Every file under `a` and `b` (recursively) is byte-identical; manifests are compared with each
    /// stage's recorded input removed (a staged run records its intermediate directories).
    func assertSameTree(_ a: URL, _ b: URL, file: StaticString = #filePath, line: UInt = #line) throws {
        let fm = FileManager.default
        let left = fm.enumerator(atPath: a.path)!.compactMap { $0 as? String }.filter { !isDirectory(a.appendingPathComponent($0)) }.sorted()
        let right = fm.enumerator(atPath: b.path)!.compactMap { $0 as? String }.filter { !isDirectory(b.appendingPathComponent($0)) }.sorted()
        XCTAssertEqual(left, right, "file lists differ", file: file, line: line)
        XCTAssertTrue(left.contains { $0.hasSuffix(".safetensors") }, file: file, line: line)
        for name in left where right.contains(name) {
            let x = try Data(contentsOf: a.appendingPathComponent(name)), y = try Data(contentsOf: b.appendingPathComponent(name))
            if name.hasSuffix("dsconvert.json") {
                XCTAssertEqual(try withoutInputs(x), try withoutInputs(y), "\(name): manifests differ beyond the stages' inputs", file: file, line: line)
            } else {
                XCTAssertTrue(x == y, "\(name) differs (\(x.count) vs \(y.count) bytes)", file: file, line: line)
            }
        }
    }

    func isDirectory(_ url: URL) -> Bool {
        var flag: ObjCBool = false
        return FileManager.default.fileExists(atPath: url.path, isDirectory: &flag) && flag.boolValue
    }

    func withoutInputs(_ data: Data) throws -> NSDictionary {
        var object = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        object["stages"] = (object["stages"] as! [[String: Any]]).map { $0.filter { $0.key != "input" } }
        return object as NSDictionary
    }

    func testMainPathMatchesStages() throws {
        // The demo's path: absorb (split), FP8 + calibrated mla-kv6, 8 devices.
        let calibration = fixtures.appendingPathComponent("trained/calibration.json").path
        let (staged, single) = try runBoth("trained", stages: [
            Stage(tool: "dsconvert-absorb", arguments: ["--mode", "split"]),
            Stage(tool: "dsconvert-quantize", arguments: ["--fp8", "--kv6", "--calibration", calibration]),
            Stage(tool: "dsconvert-shard", arguments: ["--devices", "8"]),
        ], flags: ["--absorb", "--fp8", "--kv6", "--calibration", calibration, "--devices", "8"], tag: "main")
        try assertSameTree(staged, single)
        let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: single.appendingPathComponent("dsconvert.json"))) as! [String: Any]
        XCTAssertEqual((manifest["stages"] as! [[String: Any]]).map { $0["stage"] as! String }, ["absorb", "quantize", "shard"])
        let v = try runTool("dsconvert-validate", ["--reference", fixtures.appendingPathComponent("trained").path, "--candidate", single.path])
        XCTAssertEqual(v.status, 0, v.stderr)
    }

    func testOtherCombinationsMatchStages() throws {
        // fold + FP8 (single checkpoint), several shards.
        var (staged, single) = try runBoth("v2", stages: [
            Stage(tool: "dsconvert-absorb", arguments: ["--mode", "fold", "--max-shard-size", "300KB"]),
            Stage(tool: "dsconvert-quantize", arguments: ["--fp8", "--max-shard-size", "300KB"]),
        ], flags: ["--absorb", "--mode", "fold", "--fp8", "--max-shard-size", "300KB"], tag: "fold")
        try assertSameTree(staged, single)
        // FP8 + uncalibrated kv6 on the q_lora-less fixture.
        (staged, single) = try runBoth("lite", stages: [Stage(tool: "dsconvert-quantize", arguments: ["--fp8", "--kv6", "--block", "32"])],
                                       flags: ["--kv6", "--fp8", "--block", "32"], tag: "lite")
        try assertSameTree(staged, single)
        // Absorb with kv_b kept, then shard with dense weights once.
        (staged, single) = try runBoth("v2", stages: [
            Stage(tool: "dsconvert-absorb", arguments: ["--keep-kv-b", "--dtype", "f32"]),
            Stage(tool: "dsconvert-shard", arguments: ["--devices", "4", "--dense", "once"]),
        ], flags: ["--absorb", "--keep-kv-b", "--dtype", "f32", "--devices", "4", "--dense", "once"], tag: "keep")
        try assertSameTree(staged, single)
    }

    func testUsageAndBadInput() throws {
        for args in [["--input", "a", "--output", "b"], ["--mode", "fold", "--fp8", "--input", "a", "--output", "b"],
                     ["--calibration", "c.json", "--fp8", "--input", "a", "--output", "b"], ["--dense", "once", "--fp8", "--input", "a", "--output", "b"]] {
            let r = try runTool("dsconvert", ["convert"] + args)
            XCTAssertEqual(r.status, 64, "\(args): \(r.stderr)")
            XCTAssertEqual(r.stderrLines.count, 1, r.stderr)
        }
    }
}
