import Conversion
import Foundation
import GGUF
import SafeTensors
import XCTest

/// `dsconvert export --gguf` run as a user runs it. What llama.cpp itself says of these files (its converter's
/// metadata and tensors, llama-quantize's bytes, its logits) is the cross-check's (Tests/crosscheck).
final class ExportTests: XCTestCase {
    var dir: URL!
    override func setUpWithError() throws { dir = try makeTemporaryDirectory() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    private func tokenizer() throws -> URL {
        let t = dir.appendingPathComponent("tokenizer")
        try writeByteTokenizer(into: t)
        return t
    }

    /// The one GGUF file of an export's output directory.
    private func gguf(_ output: URL) throws -> URL {
        let names = try FileManager.default.contentsOfDirectory(atPath: output.path).filter { $0.hasSuffix(".gguf") }
        XCTAssertEqual(names.count, 1, "\(names)")
        return output.appendingPathComponent(try XCTUnwrap(names.first))
    }

    private func read(_ url: URL) throws -> (GGUFFile, Data) {
        let data = try Data(contentsOf: url)
        return (try data.withUnsafeBytes { try GGUFFile(bytes: $0) }, data)
    }

    private func floats(_ file: GGUFFile, _ data: Data, _ name: String) throws -> [Float] {
        let t = try XCTUnwrap(file.tensors.first { $0.name == name }, name)
        XCTAssertEqual(t.type, .f32)
        let start = file.dataOffset + t.offset
        return data[start..<(start + t.byteCount)].withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    }

    /// --tokenizer takes the tokenizer.json itself as well as its directory, as forward and validate
    /// do (found by an audit: a file was refused), and both give the same GGUF.
    func testTokenizerIsAFileOrItsDirectory() throws {
        let input = fixtures.appendingPathComponent("lite"), t = try tokenizer()
        var files: [Data] = []
        for (name, path) in [("by-directory", t), ("by-file", t.appendingPathComponent("tokenizer.json"))] {
            let out = dir.appendingPathComponent(name)
            let r = try runTool("dsconvert", ["export", "--gguf", "--type", "f32", "--input", input.path, "--output", out.path, "--tokenizer", path.path])
            XCTAssertEqual(r.status, 0, r.stderr)
            files.append(try Data(contentsOf: try gguf(out)))
        }
        XCTAssertEqual(files[0], files[1])
        let missing = dir.appendingPathComponent("nowhere.json")
        let r = try runTool("dsconvert", ["export", "--gguf", "--type", "f32", "--input", input.path, "--output", dir.appendingPathComponent("none").path,
                                          "--tokenizer", missing.path])
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.stderrLines, ["dsconvert export: error: \(missing.path): cannot convert: missing: llama.cpp needs the vocabulary (give --tokenizer PATH)"])
    }

    /// The f32 file of the FP8-native V3 fixture: llama.cpp's names, shapes in ggml order, every value the exact
    /// dequantized weight, kv_b_proj split per head (attn_k_b transposed), experts stacked, MTP layer left out.
    func testF32ExportOfFP8V3Fixture() throws {
        let input = fixtures.appendingPathComponent("v3-fp8"), out = dir.appendingPathComponent("v3")
        let r = try runTool("dsconvert-export", ["--gguf", "--type", "f32", "--input", input.path, "--output", out.path, "--tokenizer", try tokenizer().path])
        XCTAssertEqual(r.status, 0, r.stderr)
        let (file, data) = try read(out.appendingPathComponent("v3-fp8-F32.gguf"))
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: input.appendingPathComponent("config.json"))) as! [String: Any]
        let layers = config["num_hidden_layers"] as! Int, heads = config["num_attention_heads"] as! Int
        let nope = config["qk_nope_head_dim"] as! Int, dv = config["v_head_dim"] as! Int, kvl = config["kv_lora_rank"] as! Int
        XCTAssertEqual(file.value("general.architecture"), .string("deepseek2"))
        XCTAssertEqual(file.value("deepseek2.block_count"), .uint32(UInt32(layers)))
        XCTAssertEqual(file.value("deepseek2.expert_gating_func"), .uint32(2), "sigmoid routing")
        XCTAssertEqual(file.value("tokenizer.ggml.pre"), .string("deepseek-v3"))
        XCTAssertFalse(file.tensors.contains { $0.name.hasPrefix("blk.\(layers).") }, "the MTP layer is left out")
        XCTAssertTrue(file.tensors.contains { $0.name.hasSuffix("exp_probs_b.bias") })

        // The exact dequantized values (code · block scale), as every stage reads FP8.
        let checkpoint = try CheckpointSource(directory: input)
        let kvB = try checkpoint.floats("model.layers.1.self_attn.kv_b_proj.weight")
        let kB = try floats(file, data, "blk.1.attn_k_b.weight"), vB = try floats(file, data, "blk.1.attn_v_b.weight")
        XCTAssertEqual(file.tensors.first { $0.name == "blk.1.attn_k_b.weight" }?.dimensions, [nope, kvl, heads])
        for h in 0..<heads { for r in stride(from: 0, to: kvl, by: 7) { for c in 0..<nope {
            XCTAssertEqual(kB[(h * kvl + r) * nope + c], kvB[(h * (nope + dv) + c) * kvl + r])
        } } }
        for h in 0..<heads { for j in 0..<dv { for r in stride(from: 0, to: kvl, by: 5) {
            XCTAssertEqual(vB[(h * dv + j) * kvl + r], kvB[(h * (nope + dv) + nope + j) * kvl + r])
        } } }
        let experts = try floats(file, data, "blk.2.ffn_up_exps.weight")
        let e1 = try checkpoint.floats("model.layers.2.mlp.experts.1.up_proj.weight")
        XCTAssertEqual(Array(experts[e1.count..<(2 * e1.count)]), e1, "expert 1 follows expert 0")
    }

    /// Every file type writes and reads back; the quantized types follow llama-quantize's mix and its fallbacks
    /// for rows that do not fill a block (trained-wide: rows of 256 and 512, and narrower ones).
    func testEveryTypeAndItsMix() throws {
        let input = fixtures.appendingPathComponent("trained-wide"), t = try tokenizer()
        for type in ["f32", "f16", "bf16", "q8_0", "q6_k", "q4_k_m"] {
            let out = dir.appendingPathComponent(type)
            let r = try runTool("dsconvert", ["export", "--gguf", "--type", type, "--input", input.path, "--output", out.path, "--tokenizer", t.path])
            XCTAssertEqual(r.status, 0, r.stderr)
            let (file, _) = try read(try gguf(out))
            let byName = Dictionary(uniqueKeysWithValues: file.tensors.map { ($0.name, $0.type) })
            XCTAssertEqual(byName["output_norm.weight"], .f32, type)
            XCTAssertEqual(byName["blk.1.ffn_gate_inp.weight"], .f32, "\(type): the router stays f32")
            switch type {
            case "f16": XCTAssertEqual(byName["blk.0.attn_q.weight"], .f16)
            case "q8_0": XCTAssertEqual(byName["blk.0.attn_kv_a_mqa.weight"], .q8_0)
            case "q6_k":
                XCTAssertEqual(byName["blk.0.attn_kv_a_mqa.weight"], .q6K)
                XCTAssertEqual(byName["blk.0.attn_k_b.weight"], .q8_0, "rows of 64: Q6_K falls back to Q8_0")
            case "q4_k_m":
                XCTAssertEqual(byName["output.weight"], .q6K)
                XCTAssertEqual(byName["token_embd.weight"], .q4K)
                XCTAssertEqual(byName["blk.0.attn_kv_a_mqa.weight"], .q4K)
                XCTAssertEqual(byName["blk.0.ffn_down.weight"], .q4K, "layer 0 of 4 is not a more-bits layer")
                XCTAssertEqual(byName["blk.2.ffn_down_exps.weight"], .q8_0, "layer 2 uses more bits: Q6_K, rows of 32: Q8_0")
                XCTAssertEqual(byName["blk.1.ffn_down_exps.weight"], .q5_0, "layer 1: Q4_K, rows of 32: Q5_0")
                XCTAssertEqual(byName["blk.0.attn_k_b.weight"], .q5_0)
            default: break
            }
            let inspect = try runTool("dsconvert", ["inspect", try gguf(out).path])
            XCTAssertEqual(inspect.status, 0, inspect.stderr)
            XCTAssertTrue(inspect.stdout.contains("GGUF v3, deepseek2"), inspect.stdout)
        }
    }

    /// A GGUF's strings reach the reader's terminal escaped: a name holding an OSC title sequence and a
    /// newline, and a tensor name holding a carriage return and an erase-line sequence, are printed as
    /// \u{…} text inside their own lines.
    func testInspectEscapesTheFilesStrings() throws {
        let metadata = [GGUFMetadata("general.architecture", .string("deepseek2")),
                        GGUFMetadata("general.name", .string("m\u{1B}]0;owned\u{07}\nforged: ok"))]
        let tensors = GGUFEncoder.layout([GGUFTensorInfo(name: "a\r\u{1B}[2Kb", dimensions: [32], type: .f32)])
        var file = GGUFEncoder.header(metadata: metadata, tensors: tensors)
        file += [UInt8](repeating: 0, count: GGUFEncoder.padded(tensors[0].byteCount))
        let path = dir.appendingPathComponent("hostile.gguf")
        try Data(file).write(to: path)
        let r = try runTool("dsconvert", ["inspect", path.path, "--tensors"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertFalse(r.stdout.unicodeScalars.contains { $0.value == 0x1B || $0.value == 0x07 || $0.value == 0x0D }, r.stdout)
        XCTAssertTrue(r.stdout.contains("(m\\u{1b}]0;owned\\u{7}\\u{a}forged: ok)"), r.stdout)
        XCTAssertFalse(r.stdout.contains("\nforged"), "a newline in a name cannot start a report line")
        XCTAssertTrue(r.stdout.contains("  a\\u{d}\\u{1b}[2Kb  "), r.stdout)
    }

    /// Reading large matrices in chunks of rows changes no byte: bf16 (chunks of 1000 values) and FP8 (chunks of
    /// 128·288 values, whole 128-row scale blocks of the dense MLP's 288×144 and 144×288, dequantized alone)
    /// against whole tensors.
    func testChunkedRowsGiveTheSameFile() throws {
        let t = try tokenizer()
        // v3-fp8 at 1000 values: fewer rows than a 128-row scale block fit, so each chunk is one whole block.
        for (fixture, type, chunk) in [("trained-wide", GGUFFileType.q4_k_m, 1000), ("v3-fp8", .f32, 128 * 288), ("v3-fp8", .f32, 1000)] {
            var files: [Data] = []
            for elements in [chunk, 1 << 30] {
                var options = GGUFExport.Options(type: type, tokenizer: t)
                options.chunkElements = elements
                let out = dir.appendingPathComponent("\(fixture)-\(chunk)-chunk-\(elements)")
                _ = try GGUFExport.run(input: fixtures.appendingPathComponent(fixture), output: out, options: options, force: false)
                files.append(try Data(contentsOf: try gguf(out)))
            }
            XCTAssertEqual(files[0], files[1], fixture)
        }
    }

    /// --split-max-size: gguf-split's names and split keys (byte identity with gguf-split is the cross-check's);
    /// the parts hold every tensor once, in order; a first tensor over the limit is refused.
    func testSplitOutput() throws {
        let input = fixtures.appendingPathComponent("trained-wide"), t = try tokenizer()
        let parts = dir.appendingPathComponent("parts")
        let r = try runTool("dsconvert", ["export", "--gguf", "--type", "q8_0", "--input", input.path, "--output", parts.path, "--name", "m",
                                          "--tokenizer", t.path, "--split-max-size", "1MB"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let names = try FileManager.default.contentsOfDirectory(atPath: parts.path).filter { $0.hasSuffix(".gguf") }.sorted()
        XCTAssertGreaterThan(names.count, 1)
        XCTAssertEqual(names, (1...names.count).map { String(format: "m-Q8_0-%05d-of-%05d.gguf", $0, names.count) })
        var tensors: [String] = []
        for (i, name) in names.enumerated() {
            let (file, data) = try read(parts.appendingPathComponent(name))
            XCTAssertEqual(Array(file.metadata.suffix(3).map(\.key)), ["split.no", "split.tensors.count", "split.count"], name)
            XCTAssertEqual(file.value("split.no"), .uint16(UInt16(i)))
            XCTAssertEqual(file.value("split.count"), .uint16(UInt16(names.count)))
            XCTAssertEqual(file.value("general.architecture") != nil, i == 0, "only the first part has the model's metadata")
            XCTAssertLessThanOrEqual(file.tensors.reduce(0) { $0 + GGUFEncoder.padded($1.byteCount) }, 1_000_000, name)
            XCTAssertEqual(data.count, file.dataOffset + file.tensors.reduce(0) { $0 + GGUFEncoder.padded($1.byteCount) })
            tensors += file.tensors.map(\.name)
        }
        let (whole, _) = try read(try {
            let out = dir.appendingPathComponent("whole")
            _ = try runTool("dsconvert", ["export", "--gguf", "--type", "q8_0", "--input", input.path, "--output", out.path, "--tokenizer", t.path])
            return try gguf(out)
        }())
        XCTAssertEqual(tensors, whole.tensors.map(\.name))
        let tooSmall = try runTool("dsconvert", ["export", "--gguf", "--input", input.path, "--output", dir.appendingPathComponent("s").path,
                                                 "--tokenizer", t.path, "--split-max-size", "1000"])
        XCTAssertEqual(tooSmall.status, 1)
        XCTAssertTrue(tooSmall.stderr.contains("larger than --split-max-size"), tooSmall.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("s").path))
        // An existing output is not replaced without --force.
        let again = try runTool("dsconvert", ["export", "--gguf", "--type", "q8_0", "--input", input.path, "--output", parts.path,
                                              "--tokenizer", t.path, "--split-max-size", "1MB"])
        XCTAssertEqual(again.status, 1, again.stderr)
    }

    /// The absorbed split form as input: llama.cpp's tensors hold the same function. W_UK/W_UV carry kv_a_layernorm's
    /// γ (so attn_kv_a_norm is ones), q_b_proj carries q_a_layernorm's (attn_q_a_norm ones), and the softmax scale
    /// is divided back out of the query rows; every other tensor is the published form's, byte for byte. Checked
    /// on the FP8 V3 fixture (query compression) absorbed in f32: each folded value within one f32 rounding of
    /// the published tensor times its gain (1e-6 relative). llama.cpp's logits on such a file are the cross-check's.
    func testAbsorbedSplitFormExportsTheSameFunction() throws {
        let input = fixtures.appendingPathComponent("v3-fp8"), t = try tokenizer()
        let absorbed = dir.appendingPathComponent("absorbed")
        XCTAssertEqual(try runTool("dsconvert", ["absorb", "--mode", "split", "--dtype", "f32", "--input", input.path, "--output", absorbed.path]).status, 0)
        var files: [(GGUFFile, Data)] = []
        for (source, name) in [(input, "published"), (absorbed, "split")] {
            let out = dir.appendingPathComponent("gguf-\(name)")
            let r = try runTool("dsconvert", ["export", "--gguf", "--type", "f32", "--input", source.path, "--output", out.path, "--tokenizer", t.path, "--name", "m"])
            XCTAssertEqual(r.status, 0, r.stderr)
            files.append(try read(try gguf(out)))
        }
        let (published, pData) = files[0], (split, sData) = files[1]
        XCTAssertEqual(published.tensors.map(\.name), split.tensors.map(\.name))
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: absorbed.appendingPathComponent("config.json"))) as! [String: Any]
        let record = config["dsconvert_absorption"] as! [String: Any]
        let scale = (record["original_softmax_scale"] as! Double) / (record["softmax_scale"] as! Double)
        XCTAssertNotEqual(scale, 1)
        func close(_ a: Float, _ b: Double, _ what: String) {
            XCTAssertLessThanOrEqual(abs(Double(a) - b), 1e-6 * max(abs(b), 1e-30), what)
        }
        for t in published.tensors {
            let p = try floats(published, pData, t.name), s = try floats(split, sData, t.name)
            let layer = t.name.hasPrefix("blk.") ? Int(t.name.split(separator: ".")[1])! : -1
            switch t.name.split(separator: ".").dropFirst(2).first.map(String.init) ?? "" {
            case "attn_kv_a_norm", "attn_q_a_norm":
                XCTAssertEqual(s, [Float](repeating: 1, count: p.count), t.name)
            case "attn_k_b", "attn_v_b":
                // The latent dimension r carries γ_kv: attn_k_b is [heads][r][c], attn_v_b [heads][j][r].
                let gamma = try floats(published, pData, "blk.\(layer).attn_kv_a_norm.weight")
                let kvl = gamma.count
                for i in p.indices {
                    let r = t.name.contains("attn_k_b") ? i / t.dimensions[0] % kvl : i % kvl
                    close(s[i], Double(p[i]) * Double(gamma[r]), "\(t.name)[\(i)]")
                }
            case "attn_q_b":
                // Columns carry γ_q; the scale is divided back out of every row.
                let gamma = try floats(published, pData, "blk.\(layer).attn_q_a_norm.weight")
                for i in p.indices { close(s[i], Double(p[i]) * Double(gamma[i % gamma.count]), "\(t.name)[\(i)]") }
            default:
                XCTAssertEqual(s, p, "\(t.name): copied")
            }
        }
    }

    /// The output carries dsconvert.json like every dsconvert output: the input's stages and this one, and each
    /// GGUF file with its size and SHA-256 (computed as it was written); the same run gives the same bytes.
    func testManifestRecordsTheFiles() throws {
        let input = fixtures.appendingPathComponent("trained-wide"), t = try tokenizer()
        let out = dir.appendingPathComponent("q6"), again = dir.appendingPathComponent("q6-again")
        for target in [out, again] {
            let r = try runTool("dsconvert", ["export", "--gguf", "--type", "q6_k", "--input", input.path, "--output", target.path, "--tokenizer", t.path,
                                              "--split-max-size", "2MB"])
            XCTAssertEqual(r.status, 0, r.stderr)
        }
        let manifest = try XCTUnwrap(try ConversionManifest.load(directory: out))
        XCTAssertEqual(manifest.stages.last?.stage, .export)
        XCTAssertEqual(manifest.stages.last?.options["type"], "q6_k")
        let names = try FileManager.default.contentsOfDirectory(atPath: out.path).filter { $0.hasSuffix(".gguf") }.sorted()
        XCTAssertEqual(manifest.files.map(\.name).sorted(), names)
        for file in manifest.files {
            let path = out.appendingPathComponent(file.name).path
            XCTAssertEqual(file.sha256, try SHA256.hex(fileAt: path), file.name)
            XCTAssertEqual(file.bytes, FileEntry.lstat(path)?.size, file.name)
            XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: path)), try Data(contentsOf: again.appendingPathComponent(file.name)), "deterministic")
        }
        XCTAssertEqual(Set(try FileManager.default.contentsOfDirectory(atPath: out.path)), Set(names + ["dsconvert.json"]), "nothing else")
    }

    /// Bad input: one line, non-zero exit, no output.
    func testRefusals() throws {
        let input = fixtures.appendingPathComponent("fp8"), t = try tokenizer(), out = dir.appendingPathComponent("x")
        func refused(_ args: [String], _ text: String, status: Int32 = 1) throws {
            let r = try runTool("dsconvert", ["export"] + args)
            XCTAssertEqual(r.status, status, r.stderr)
            XCTAssertTrue(r.stderr.contains(text), r.stderr)
            XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
            XCTAssertFalse(FileManager.default.fileExists(atPath: out.path))
        }
        try refused(["--gguf", "--input", input.path, "--output", out.path], "tokenizer.json")
        try refused(["--input", input.path, "--output", out.path, "--tokenizer", t.path], "--gguf", status: 64)
        try refused(["--gguf", "--type", "q2_k", "--input", input.path, "--output", out.path, "--tokenizer", t.path], "q2_k", status: 64)
        try refused(["--gguf", "--input", input.path, "--output", out.path, "--tokenizer", t.path, "--split-max-size", "0"], "--split-max-size: invalid size '0'", status: 64)
        for pre in ["", "Deepseek V3"] {
            try refused(["--gguf", "--input", input.path, "--output", out.path, "--tokenizer", t.path, "--tokenizer-pre", pre], "--tokenizer-pre takes one of llama.cpp's", status: 64)
        }
        try refused(["--gguf", "--input", input.path, "--output", dir.appendingPathComponent("m.gguf").path, "--tokenizer", t.path],
                    "--output is a directory", status: 64)
        // The tokenizer's directory is an input too: an output that would contain it is refused.
        try refused(["--gguf", "--input", input.path, "--output", dir.path, "--tokenizer", t.path, "--force"], "output must not contain the input (\(t.path))")
        // A vocabulary larger than the model's: the smallest id outside is named, the same on every run
        // (found by an audit: the dictionary's order named a different id each time).
        let big = dir.appendingPathComponent("big-vocabulary")
        try FileManager.default.createDirectory(at: big, withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: fixtures.appendingPathComponent("tokenizers/v3-style.json"), to: big.appendingPathComponent("tokenizer.json"))
        let lite = fixtures.appendingPathComponent("lite")  // vocabulary 320, under the tokenizer's 336
        let vocabulary = try Checkpoint(directory: lite).tensors.first { $0.name == "model.embed_tokens.weight" }!.shape[0]
        for _ in 0..<3 {
            try refused(["--gguf", "--input", lite.path, "--output", out.path, "--tokenizer", big.path],
                        "token id \(vocabulary) is outside the model's vocabulary 0..<\(vocabulary)")
        }
        let folded = dir.appendingPathComponent("folded")
        XCTAssertEqual(try runTool("dsconvert", ["absorb", "--mode", "fold", "--input", input.path, "--output", folded.path]).status, 0)
        try refused(["--gguf", "--input", folded.path, "--output", out.path, "--tokenizer", t.path], "absorb --mode fold")
        // A split-form record whose scale is not the model's cannot be divided back out: refused, naming config.json.
        let split = dir.appendingPathComponent("split")
        XCTAssertEqual(try runTool("dsconvert", ["absorb", "--input", input.path, "--output", split.path]).status, 0)
        let configURL = split.appendingPathComponent("config.json")
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: configURL)) as! [String: Any]
        var record = config["dsconvert_absorption"] as! [String: Any]
        for bad in [0.0, -0.1, 0.5] {
            record["original_softmax_scale"] = bad
            config["dsconvert_absorption"] = record
            try JSONSerialization.data(withJSONObject: config).write(to: configURL)
            try refused(["--gguf", "--input", split.path, "--output", out.path, "--tokenizer", t.path], "config.json")
        }
        // Inside the input, and an existing directory that is not a dsconvert output, with or without --force.
        let copy = dir.appendingPathComponent("copy")
        try FileManager.default.copyItem(at: input, to: copy)
        let inside = copy.appendingPathComponent("gguf")
        let r = try runTool("dsconvert", ["export", "--gguf", "--input", copy.path, "--output", inside.path, "--tokenizer", t.path])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("must not be the input directory or inside it"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: inside.path))
        try FileManager.default.createDirectory(at: out, withIntermediateDirectories: false)
        try Data("keep".utf8).write(to: out.appendingPathComponent("notes.txt"))
        for force in [[], ["--force"]] {
            let again = try runTool("dsconvert", ["export", "--gguf", "--input", input.path, "--output", out.path, "--tokenizer", t.path] + force)
            XCTAssertEqual(again.status, 1, again.stderr)
            XCTAssertEqual(try String(contentsOf: out.appendingPathComponent("notes.txt"), encoding: .utf8), "keep", "not someone else's directory")
        }
        // A previous export is replaced with --force only.
        let previous = dir.appendingPathComponent("previous")
        XCTAssertEqual(try runTool("dsconvert", ["export", "--gguf", "--input", input.path, "--output", previous.path, "--tokenizer", t.path]).status, 0)
        XCTAssertEqual(try runTool("dsconvert", ["export", "--gguf", "--input", input.path, "--output", previous.path, "--tokenizer", t.path]).status, 1)
        XCTAssertEqual(try runTool("dsconvert", ["export", "--gguf", "--force", "--input", input.path, "--output", previous.path, "--tokenizer", t.path]).status, 0)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasPrefix(".dsconvert") }, [], "no work directory left")
    }
}

/// A byte-level BPE tokenizer of the 256 byte tokens (GPT-2's byte-to-character map, id = byte), below every
/// fixture's vocabulary: the trained fixtures' text is bytes. Written as `DIR/tokenizer.json`.
func writeByteTokenizer(into directory: URL) throws {
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    let printable = Array(33...126) + Array(161...172) + Array(174...255)
    var characters: [Int: Int] = [:]
    var next = 256
    for b in 0..<256 { if printable.contains(b) { characters[b] = b } else { characters[b] = next; next += 1 } }
    let vocab = Dictionary(uniqueKeysWithValues: (0..<256).map { (String(UnicodeScalar(UInt32(characters[$0]!))!), $0) })
    let json: [String: Any] = ["model": ["type": "BPE", "vocab": vocab, "merges": [String]()], "added_tokens": [[String: Any]]()]
    try JSONSerialization.data(withJSONObject: json, options: .sortedKeys).write(to: directory.appendingPathComponent("tokenizer.json"))
}
