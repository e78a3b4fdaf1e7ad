import Conversion
import DeepSeekModel
import Foundation
import Numerics
import SafeTensors
import XCTest
@testable import ReferenceModel
@testable import Validation

final class KV6StageTests: XCTestCase {
    var dir: URL!
    let trained = fixtures.appendingPathComponent("trained")
    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("dsconvert-kv6-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    private func kv6(_ input: URL, calibrated: Bool, fp8: Bool = false, name: String, calibration: URL? = nil) throws -> URL {
        let out = dir.appendingPathComponent(name)
        let tokens = calibrated ? try TokenFile.load(calibration ?? trained.appendingPathComponent("calibration.json")) : nil
        _ = try QuantizeStage.run(input: input, output: out, fp8: fp8 ? .init() : nil,
                                  kv6: .init(calibration: tokens, calibrationSource: "calibration.json"), force: false)
        return out
    }

    /// Drift on `tokens`, with the perplexity of the tokens themselves (held-out text: the README's ratio).
    private func compare(_ reference: LoadedModel, _ candidate: LoadedModel, tokens: [[Int]]) throws -> DriftReport {
        try Validator.compare(reference: reference, candidate: candidate, tokens: tokens, tokensLabel: "t", heldout: nil,
                              thresholds: DriftThresholds(), perplexityOnTokens: true)
    }

    /// `quantize --kv6 --calibration` declares mla-kv6c and changes no weight: every tensor is the input's,
    /// so with an fp32 cache the logits are the original's. Every layer's widths sum to 6 bits per element.
    func testCalibrationDeclaresChannelsAndChangesNoWeight() throws {
        let tokens = try TokenFile.load(trained.appendingPathComponent("tokens.json"))
        let out = try kv6(trained, calibrated: true, name: "kv6c")
        let config = try DeepSeekConfig.load(directory: out)
        let record = try XCTUnwrap(config.kvCache)
        XCTAssertEqual(record.format, "mla-kv6c")
        XCTAssertEqual(record.bytesPerTokenPerLayer, 60, "6 x (64 + 16) / 8")
        XCTAssertEqual(record.bitsPerElement, 6.0)
        XCTAssertEqual(record.channels?.map(\.layer), Array(0..<config.numHiddenLayers))
        for entry in record.channels ?? [] {
            XCTAssertEqual(entry.bits.reduce(0, +), 6 * 80, "layer \(entry.layer)")
            XCTAssertTrue(entry.bits.allSatisfy { (2...12).contains($0) })
            XCTAssertTrue(entry.steps.allSatisfy { $0 > 0 })
            XCTAssertGreaterThan(Set(entry.bits).count, 2, "widths follow the channels' sensitivity")
        }
        let written = try Checkpoint(directory: out), original = try Checkpoint(directory: trained)
        for name in original.tensors.map(\.name) { XCTAssertTrue(try written.view(name).bytes.elementsEqual(try original.view(name).bytes), name) }
        var candidate = try ModelLoader.open(out)
        XCTAssertEqual(candidate.kvCache?.format, .mlaKV6C, "the declared format is the default")
        candidate.kvCache = nil
        XCTAssertEqual(try compare(try ModelLoader.open(trained), candidate, tokens: tokens).logits.maxAbsDelta, 0)
    }

    /// A V3 checkpoint's first MTP layer is calibrated with the main stack: channels for layers 0...L,
    /// applied to the MTP layer's cache (a declaration without them, as earlier versions wrote, still
    /// loads and leaves that cache fp32), and absorbing keeps its codes as it keeps the main layers'.
    func testMTPLayerIsCalibratedToo() throws {
        let v3 = fixtures.appendingPathComponent("v3")
        let tokens = try TokenFile.load(v3.appendingPathComponent("tokens.json"))
        let out = try kv6(v3, calibrated: true, name: "v3-kv6c", calibration: v3.appendingPathComponent("tokens.json"))
        let config = try DeepSeekConfig.load(directory: out)
        let record = try XCTUnwrap(config.kvCache)
        XCTAssertEqual(record.channels?.map(\.layer), Array(0...config.numHiddenLayers))
        for entry in record.channels ?? [] { XCTAssertEqual(entry.bits.reduce(0, +), 6 * (config.kvLoraRank + config.qkRopeHeadDim), "layer \(entry.layer)") }
        XCTAssertNotNil(try KVCacheSetting(declaredBy: config, path: "config.json").codec(layer: config.numHiddenLayers))

        // The same declaration without the MTP layer's channels: main logits identical, the MTP layer's differ.
        let mainOnly = dir.appendingPathComponent("v3-kv6c-main-only")
        try FileManager.default.copyItem(at: out, to: mainOnly)
        let path = mainOnly.appendingPathComponent("config.json")
        var json = try JSONSerialization.jsonObject(with: Data(contentsOf: path)) as! [String: Any]
        var kv = json["dsconvert_kv_cache"] as! [String: Any]
        kv["channels"] = Array((kv["channels"] as! [[String: Any]]).dropLast())
        json["dsconvert_kv_cache"] = kv
        try JSONSerialization.data(withJSONObject: json).write(to: path)
        XCTAssertNil(try KVCacheSetting(declaredBy: try DeepSeekConfig.load(directory: mainOnly), path: "config.json").codec(layer: config.numHiddenLayers))
        let reference = try ModelLoader.open(v3)
        let full = try compare(reference, try ModelLoader.open(out), tokens: tokens)
        let partial = try compare(reference, try ModelLoader.open(mainOnly), tokens: tokens)
        XCTAssertEqual(full.logits.klMean, partial.logits.klMean)
        let fullMTP = try XCTUnwrap(full.mtp), partialMTP = try XCTUnwrap(partial.mtp)
        XCTAssertNotEqual(fullMTP.logits.klMean, partialMTP.logits.klMean)
        XCTAssertEqual([fullMTP.candidateKVCache, partialMTP.candidateKVCache], ["mla-kv6c", "none"])

        // Absorbed (f32): the latent steps divided by each layer's gain, the MTP layer's included.
        let folded = try compare(reference, try ModelLoader.open(try absorbed(out, dtype: .f32, name: "v3-kv6c-absorbed")), tokens: tokens)
        XCTAssertEqual(folded.logits.klMean, full.logits.klMean, accuracy: 1e-3 * full.logits.klMean)
        XCTAssertEqual(try XCTUnwrap(folded.mtp).logits.klMean, fullMTP.logits.klMean, accuracy: 1e-3 * fullMTP.logits.klMean)
    }

    /// A declaration that does not describe a codec for this model is refused when the config is read, with
    /// one line naming config.json's dsconvert_kv_cache and the layer.
    func testBrokenChannelsAreRefused() throws {
        let out = try kv6(trained, calibrated: true, name: "kv6c")
        let path = out.appendingPathComponent("config.json")
        let original = try Data(contentsOf: path)
        func broken(_ edit: (inout [String: Any]) -> Void) throws {
            var json = try JSONSerialization.jsonObject(with: original) as! [String: Any]
            var kv = json["dsconvert_kv_cache"] as! [String: Any]
            edit(&kv)
            json["dsconvert_kv_cache"] = kv
            try JSONSerialization.data(withJSONObject: json).write(to: path)
            defer { try? original.write(to: path) }
            XCTAssertThrowsError(try DeepSeekConfig.load(directory: out)) { error in
                XCTAssertTrue("\(error.localizedDescription)".contains("dsconvert_kv_cache"), "\(error)")
            }
        }
        func editLayer(_ kv: inout [String: Any], _ body: (inout [String: Any]) -> Void) {
            var channels = kv["channels"] as! [[String: Any]]
            body(&channels[2])
            kv["channels"] = channels
        }
        try broken { kv in editLayer(&kv) { layer in var b = layer["bits"] as! [Int]; b[0] += 1; layer["bits"] = b } }   // 481 bits
        try broken { kv in editLayer(&kv) { layer in var b = layer["bits"] as! [Int]; b[0] = 1; b[1] += (layer["bits"] as! [Int])[0] - 1; layer["bits"] = b } }  // width 1
        try broken { kv in editLayer(&kv) { layer in var s = layer["steps"] as! [Double]; s[3] = -0.5; layer["steps"] = s } }
        try broken { kv in editLayer(&kv) { layer in var s = layer["steps"] as! [Double]; s[3] = 0.1; layer["steps"] = s } }  // not an f32 value
        try broken { kv in var channels = kv["channels"] as! [[String: Any]]; channels.removeLast(); kv["channels"] = channels }
        try broken { kv in kv["bytes_per_token_per_layer"] = 64 }
        try broken { kv in kv["format"] = "mla-kv5" }
        try broken { kv in kv["format"] = "mla-kv6" }  // channels only belong to mla-kv6c
        XCTAssertNoThrow(try DeepSeekConfig.load(directory: out), "restored")
    }

    private func absorbed(_ input: URL, mode: AbsorbMode = .split, dtype: AbsorbedDType = .bf16, name: String) throws -> URL {
        let out = dir.appendingPathComponent(name)
        if !FileManager.default.fileExists(atPath: out.path) {
            _ = try AbsorbStage.run(input: input, output: out, options: AbsorbOptions(mode: mode), dtype: dtype, force: false)
        }
        return out
    }

    /// Drift of each cache format on both trained fixtures' held-out text (16 x 256 tokens), and the
    /// issue's criterion: mla-kv6c, at 6.000 bits per element, within 1.25x fp8_ds_mla's KL mean (9.1 bits).
    /// Measured (README "The 6-bit KV cache"): trained bf16 2.14e-4, fp8_ds_mla 1.40e-3, mla-kv6 3.64e-3,
    /// mla-kv6c 1.32e-3 (0.94x); trained-wide bf16 1.87e-3, fp8_ds_mla 4.68e-3, mla-kv6 1.00e-2, mla-kv6c 2.72e-3 (0.58x).
    func testCacheFormatDriftTable() throws {
        for fixture in ["trained", "trained-wide"] {
            let input = fixtures.appendingPathComponent(fixture)
            let heldout = try TokenFile.load(input.appendingPathComponent("heldout.json"))
            let reference = try ModelLoader.open(input)
            func kl(_ model: LoadedModel, _ format: KVCacheCodec.Format) throws -> DriftReport {
                var m = model
                m.kvCache = KVCacheSetting(fixed: format)
                return try compare(reference, m, tokens: heldout)
            }
            let bf16 = try kl(reference, .bf16), fp8 = try kl(reference, .fp8DSMLA), plain = try kl(reference, .mlaKV6)
            let declared = try ModelLoader.open(try kv6(input, calibrated: true, name: "kv6c-\(fixture)",
                                                        calibration: input.appendingPathComponent("calibration.json")))
            let kv6c = try compare(reference, declared, tokens: heldout)
            for (name, r) in [("bf16", bf16), ("fp8_ds_mla", fp8), ("mla-kv6", plain), ("mla-kv6c", kv6c)] {
                print(String(format: "%@ kv-cache %-11@ KL mean %.3e (%.2fx fp8) max %.3e top-1 %.4f perplexity ratio %.5f", fixture, name, r.logits.klMean,
                             r.logits.klMean / fp8.logits.klMean, r.logits.klMax, r.logits.top1Agreement, r.perplexity?.ratio ?? .nan))
            }
            XCTAssertLessThan(bf16.logits.klMean, fp8.logits.klMean, fixture)
            XCTAssertLessThan(fp8.logits.klMean, plain.logits.klMean, fixture)
            // The target, not a pin: a change that loses it fails here.
            XCTAssertLessThanOrEqual(kv6c.logits.klMean, 1.25 * fp8.logits.klMean, fixture)
            XCTAssertGreaterThanOrEqual(kv6c.logits.top1Agreement, 0.98, fixture)
            // Held-out perplexity within 0.1% of the reference's (measured 1.00019 and 1.00008; fp8_ds_mla's
            // ratio falls on either side of 1, 0.99868 and 1.00328, so it is no bound to compare against).
            XCTAssertLessThanOrEqual(abs(try XCTUnwrap(kv6c.perplexity).ratio - 1), 1e-3, fixture)
        }
    }

    /// The codecs run in the absorbed (latent-attention) forms too. Absorbed f32 checkpoints through the
    /// fixed caches, bounded like the original form's: the absorbed cache holds the gain-free latent, so
    /// its quantization differs. mla-kv6c carries over: absorbing a declared checkpoint divides the latent
    /// steps by kv_a_layernorm's gain (same codes), and calibrating an absorbed checkpoint works in its form.
    func testCacheFormatsInAbsorbedForms() throws {
        let heldout = try TokenFile.load(trained.appendingPathComponent("heldout.json"))
        let reference = try ModelLoader.open(trained)
        let declared = try kv6(trained, calibrated: true, name: "kv6c")
        let original = try compare(reference, try ModelLoader.open(declared), tokens: heldout).logits.klMean
        let fp8 = try compare(reference, { var m = reference; m.kvCache = KVCacheSetting(fixed: .fp8DSMLA); return m }(), tokens: heldout).logits.klMean
        for mode in AbsorbMode.allCases {
            let form = mode.form
            let out = try absorbed(trained, mode: mode, dtype: .f32, name: "absorbed-\(form.rawValue)")
            for (format, bound) in [(KVCacheCodec.Format.bf16, 4.3e-4), (.fp8DSMLA, 2.8e-3), (.mlaKV6, 7.3e-3)] {
                var candidate = try ModelLoader.open(out)
                candidate.kvCache = KVCacheSetting(fixed: format)
                let r = try compare(reference, candidate, tokens: heldout)
                print(String(format: "absorbed %@ kv-cache %@: KL mean %.3e top-1 %.4f", form.rawValue, format.rawValue, r.logits.klMean, r.logits.top1Agreement))
                XCTAssertLessThanOrEqual(r.logits.klMean, bound, "\(form) \(format)")
                XCTAssertGreaterThan(r.logits.klMean, 0, "the cache really ran")
            }
            // Absorbing after the declaration: the same codes, so the same drift up to f32 rounding of the folds.
            let carried = try compare(reference, try ModelLoader.open(try absorbed(declared, mode: mode, dtype: .f32, name: "kv6c-absorbed-\(form.rawValue)")),
                                      tokens: heldout).logits.klMean
            // Calibrating the absorbed checkpoint itself.
            let calibrated = try compare(reference, try ModelLoader.open(try kv6(out, calibrated: true, name: "absorbed-kv6c-\(form.rawValue)")),
                                         tokens: heldout).logits.klMean
            print(String(format: "absorbed %@ mla-kv6c: absorbed after %.3e, calibrated absorbed %.3e (original form %.3e, fp8_ds_mla %.3e)",
                         form.rawValue, carried, calibrated, original, fp8))
            XCTAssertEqual(carried, original, accuracy: 0.05 * original, "\(form)")
            XCTAssertLessThanOrEqual(calibrated, 1.25 * fp8, "\(form)")
        }
    }

    func testCombinedWithFP8InOnePass() throws {
        let out = try kv6(trained, calibrated: true, fp8: true, name: "fp8-kv6")
        let config = try DeepSeekConfig.load(directory: out)
        XCTAssertNotNil(config.quantization)
        XCTAssertEqual(config.kvCache?.format, "mla-kv6c")
        XCTAssertEqual(config.kvCache?.bytesPerTokenPerLayer, 60)
        let report = try compare(try ModelLoader.open(trained), try ModelLoader.open(out), tokens: try TokenFile.load(trained.appendingPathComponent("tokens.json")))
        XCTAssertLessThanOrEqual(report.logits.klMean, 1e-2)
        XCTAssertGreaterThanOrEqual(report.logits.top1Agreement, 0.95)
        XCTAssertThrowsError(try kv6(out, calibrated: false, name: "twice"))
    }
}
