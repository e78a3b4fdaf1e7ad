import Foundation
import SafeTensors
import XCTest

/// A V3 checkpoint as transformers' save_pretrained writes it: config.json declares an MTP layer
/// (num_nextn_predict_layers 1) and the files hold none of its weights. It is the main model, whole: every
/// command takes it as such (one note), and the main model's logits are the published checkpoint's. A
/// checkpoint missing only some MTP tensors is still refused, naming the tensor. (transformers' own logits
/// on such a file are the cross-check's.)
final class AbsentMTPTests: XCTestCase {
    var dir: URL!
    override func setUpWithError() throws { dir = try makeTemporaryDirectory() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    /// The v3 fixture (MTP layer 3), or `source`, without the tensors `dropped` selects, config.json unchanged.
    private func v3(without dropped: (String) -> Bool, name: String, source: URL = fixtures.appendingPathComponent("v3")) throws -> URL {
        let out = dir.appendingPathComponent(name)
        try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
        let checkpoint = try Checkpoint(directory: source)
        let kept = try checkpoint.tensors.filter { !dropped($0.name) }.map { info -> (PlannedTensor, any TensorBytes) in
            (PlannedTensor(name: info.name, dtype: info.dtype, shape: info.shape), Array(try checkpoint.view(info.name).bytes))
        }
        try SafeTensorsFileWriter.write(kept, to: out.appendingPathComponent(Checkpoint.singleFileName))
        try FileManager.default.copyItem(at: source.appendingPathComponent("config.json"), to: out.appendingPathComponent("config.json"))
        return out
    }

    /// A mla-kv6c checkpoint calibrated with its MTP layer, the MTP weights then dropped: its channels'
    /// last entry is for a layer it does not hold; it loads, runs, and inspect says so.
    func testCalibratedThenSavedWithoutMTPStillLoads() throws {
        let v3 = fixtures.appendingPathComponent("v3"), calibrated = dir.appendingPathComponent("kv6c")
        let q = try runTool("dsconvert", ["quantize", "--kv6", "--calibration", v3.appendingPathComponent("tokens.json").path,
                                          "--input", v3.path, "--output", calibrated.path])
        XCTAssertEqual(q.status, 0, q.stderr)
        let input = try self.v3(without: { $0.hasPrefix("model.layers.3.") }, name: "kv6c-as-saved", source: calibrated)
        let inspect = try runTool("dsconvert", ["inspect", input.path])
        XCTAssertEqual(inspect.status, 0, inspect.stderr)
        XCTAssertTrue(inspect.stdout.contains("channels for layers 0-3 (the last for an MTP layer this checkpoint does not hold)"), inspect.stdout)
        let v = try runTool("dsconvert", ["validate", "--reference", v3.path, "--candidate", input.path, "--max-kl-mean", "none",
                                          "--max-kl-max", "none", "--min-top1", "none", "--min-routing", "none"])
        XCTAssertEqual(v.status, 0, v.stderr)
        XCTAssertTrue(v.stdout.contains("(KV cache: mla-kv6c)"), v.stdout)
        XCTAssertTrue(v.stdout.contains("note         the MTP layer is not compared: the reference holds the weights of 1 MTP layer(s), the candidate of 0"), v.stdout)
        // absorb divides the held layers' latent steps by their gains and keeps the MTP layer's entry
        // (found by an audit: it asked for the absent layer's kv_a_layernorm and refused the checkpoint).
        let absorbed = dir.appendingPathComponent("absorbed")
        let a = try runTool("dsconvert", ["absorb", "--input", input.path, "--output", absorbed.path])
        XCTAssertEqual(a.status, 0, a.stderr)
        XCTAssertEqual(a.stderr.components(separatedBy: "declares 1 MTP layer(s)").count - 1, 1, "one note: \(a.stderr)")
        func channels(_ model: URL) throws -> [[String: Any]] {
            let config = try JSONSerialization.jsonObject(with: Data(contentsOf: model.appendingPathComponent("config.json"))) as! [String: Any]
            return (config["dsconvert_kv_cache"] as! [String: Any])["channels"] as! [[String: Any]]
        }
        let before = try channels(input), after = try channels(absorbed)
        XCTAssertEqual(after.map { $0["layer"] as! Int }, [0, 1, 2, 3])
        XCTAssertEqual(after[3] as NSDictionary, before[3] as NSDictionary, "the MTP layer's entry as calibrated")
        XCTAssertNotEqual(after[0] as NSDictionary, before[0] as NSDictionary, "a held layer's steps divided by its gain")
    }

    func testTransformersSavedV3IsTheMainModel() throws {
        let input = try v3(without: { $0.hasPrefix("model.layers.3.") }, name: "as-saved")
        let inspect = try runTool("dsconvert", ["inspect", input.path, "--json"])
        XCTAssertEqual(inspect.status, 0, inspect.stderr)
        XCTAssertTrue(inspect.stdout.contains("\"mtp_layers\" : 0") || inspect.stdout.contains("\"mtp_layers\":0"), inspect.stdout)
        XCTAssertTrue(inspect.stderr.contains("declares 1 MTP layer(s)"), inspect.stderr)

        let quantized = dir.appendingPathComponent("fp8")
        let q = try runTool("dsconvert", ["quantize", "--fp8", "--input", input.path, "--output", quantized.path])
        XCTAssertEqual(q.status, 0, q.stderr)
        XCTAssertEqual(q.stderr.components(separatedBy: "declares 1 MTP layer(s)").count - 1, 1, "one note: \(q.stderr)")
        XCTAssertFalse(try Checkpoint(directory: quantized).tensors.contains { $0.name.hasPrefix("model.layers.3.") })
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: quantized.appendingPathComponent("config.json"))) as! [String: Any]
        XCTAssertEqual(config["num_nextn_predict_layers"] as? Int, 1, "config.json is the input's")

        // The main model's logits: the same bytes as the published checkpoint's (which has the MTP layer).
        var outputs: [Data] = []
        for model in [fixtures.appendingPathComponent("v3"), input] {
            let out = dir.appendingPathComponent("forward-\(outputs.count).safetensors")
            let r = try runTool("dsconvert", ["forward", "--model", model.path, "--tokens", fixtures.appendingPathComponent("v3/tokens.json").path, "--output", out.path])
            XCTAssertEqual(r.status, 0, r.stderr)
            outputs.append(try Data(contentsOf: out))
        }
        XCTAssertEqual(outputs[0], outputs[1])
        // validate pairs the two forms layer by layer: no drift, although one declares weights the other lacks.
        let validate = try runTool("dsconvert", ["validate", "--reference", fixtures.appendingPathComponent("v3").path, "--candidate", input.path,
                                                 "--max-logit-delta", "0"])
        XCTAssertEqual(validate.status, 0, validate.stderr)
    }

    /// Every stage takes it, and a run that opens it (or its sharded output) several times notes it once.
    func testStagesAndOneNotePerRun() throws {
        let input = try v3(without: { $0.hasPrefix("model.layers.3.") }, name: "as-saved")
        func notes(_ r: RunResult) -> Int { r.stderr.components(separatedBy: "declares 1 MTP layer(s)").count - 1 }
        let converted = dir.appendingPathComponent("converted")
        let c = try runTool("dsconvert", ["convert", "--absorb", "--fp8", "--devices", "2", "--input", input.path, "--output", converted.path])
        XCTAssertEqual(c.status, 0, c.stderr)
        XCTAssertEqual(notes(c), 1, c.stderr)
        let tokens = fixtures.appendingPathComponent("v3/tokens.json").path
        let f = try runTool("dsconvert", ["forward", "--model", converted.path, "--tokens", tokens, "--output", dir.appendingPathComponent("f.safetensors").path])
        XCTAssertEqual(f.status, 0, f.stderr)
        XCTAssertEqual(notes(f), 1, "one note for the 2 devices: \(f.stderr)")
        let v = try runTool("dsconvert", ["validate", "--reference", input.path, "--candidate", input.path, "--max-logit-delta", "0"])
        XCTAssertEqual(v.status, 0, v.stderr)
        XCTAssertEqual(notes(v), 1, v.stderr)
        let tokenizer = dir.appendingPathComponent("tokenizer")
        try writeByteTokenizer(into: tokenizer)
        let e = try runTool("dsconvert", ["export", "--gguf", "--type", "f32", "--input", input.path, "--tokenizer", tokenizer.path,
                                          "--output", dir.appendingPathComponent("gguf").path])
        XCTAssertEqual(e.status, 0, e.stderr)
    }

    func testPartlyMissingMTPLayerIsRefused() throws {
        let input = try v3(without: { $0 == "model.layers.3.eh_proj.weight" }, name: "partial")
        let r = try runTool("dsconvert", ["quantize", "--fp8", "--input", input.path, "--output", dir.appendingPathComponent("out").path])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("missing tensor 'model.layers.3.eh_proj.weight'"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("out").path))
    }
}
