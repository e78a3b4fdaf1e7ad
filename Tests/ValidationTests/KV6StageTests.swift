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

    private func kv6(_ input: URL, calibrated: Bool, fp8: Bool = false, name: String) throws -> URL {
        let out = dir.appendingPathComponent(name)
        let tokens = calibrated ? try TokenFile.load(trained.appendingPathComponent("calibration.json")) : nil
        _ = try QuantizeStage.run(input: input, output: out, fp8: fp8 ? .init() : nil,
                                  kv6: .init(calibration: tokens, calibrationSource: "calibration.json"), force: false)
        return out
    }

    private func compare(_ reference: LoadedModel, _ candidate: LoadedModel, tokens: [[Int]]) throws -> DriftReport {
        try Validator.compare(reference: reference, candidate: candidate, tokens: tokens, tokensLabel: "t", heldout: nil,
                              thresholds: DriftThresholds())
    }

    /// Power-of-two equalization is exact: with an fp32 cache the equalized checkpoint computes the
    /// same logits as the original (every product (c_i/s_i)·(W s_i) is the same float).
    func testEqualizationFoldIsExact() throws {
        let tokens = try TokenFile.load(trained.appendingPathComponent("tokens.json"))
        for input in [trained, try absorbed()] {
            let equalized = try kv6(input, calibrated: true, name: "eq-\(input.lastPathComponent)")
            var candidate = try ModelLoader.open(equalized)
            XCTAssertEqual(candidate.kvCache, .mlaKV6, "the declared format is the default")
            candidate.kvCache = nil
            let report = try compare(try ModelLoader.open(input), candidate, tokens: tokens)
            XCTAssertLessThanOrEqual(report.logits.maxAbsDelta, 1e-5, input.lastPathComponent)
            // The scales really are not all one (the fold did something) and are powers of two.
            let config = try DeepSeekConfig.load(directory: equalized)
            XCTAssertTrue(config.kvCache!.equalized)
            // Across layers (a layer whose channel ranges span < ~2.8x rounds every s_c to 1).
            var ratios: [Float] = []
            let out = try Checkpoint(directory: equalized), source = try Checkpoint(directory: input)
            for layer in 0..<config.numHiddenLayers {
                let name = "model.layers.\(layer).self_attn.kv_a_layernorm.weight"
                let gain = try out.view(name).floats()
                let original = source.contains(name) ? try source.view(name).floats() : [Float](repeating: 1, count: gain.count)
                ratios += zip(original, gain).map { $0 / $1 }
            }
            XCTAssertTrue(ratios.allSatisfy { $0 > 0 && $0.significandBitPattern == 0 }, "s_c powers of two")
            XCTAssertTrue(ratios.contains { $0 != 1 }, "the fold changed something")
        }
    }

    private func absorbed() throws -> URL {
        let out = dir.appendingPathComponent("absorbed")
        if !FileManager.default.fileExists(atPath: out.path) {
            _ = try AbsorbStage.run(input: trained, output: out, options: AbsorbOptions(form: .split), dtype: .bf16, force: false)
        }
        return out
    }

    /// Drift of each cache format on the trained fixture's held-out text (16 x 256 tokens), pinned.
    /// mla-kv6 reaches 2.6x fp8_ds_mla's KL here, and equalization does not help (README, "6-bit KV cache").
    func testCacheFormatDriftTable() throws {
        let heldout = try TokenFile.load(trained.appendingPathComponent("heldout.json"))
        let reference = try ModelLoader.open(trained)
        func kl(_ model: LoadedModel, _ format: KVCacheCodec.Format) throws -> DriftReport {
            var m = model
            m.kvCache = format
            return try compare(reference, m, tokens: heldout)
        }
        let bf16 = try kl(reference, .bf16), fp8 = try kl(reference, .fp8DSMLA)
        let plain = try kl(try ModelLoader.open(try kv6(trained, calibrated: false, name: "plain")), .mlaKV6)
        let equalized = try kl(try ModelLoader.open(try kv6(trained, calibrated: true, name: "equalized")), .mlaKV6)
        let table = [("bf16", bf16), ("fp8_ds_mla", fp8), ("mla-kv6", plain), ("mla-kv6+eq", equalized)]
        for (name, r) in table { print(String(format: "kv-cache %-11@ KL mean %.3e max %.3e top-1 %.4f", name, r.logits.klMean, r.logits.klMax, r.logits.top1Agreement)) }
        // Pinned at 2x the measured values (deterministic up to BLAS summation order):
        // bf16 2.1e-4, fp8_ds_mla 1.40e-3, mla-kv6 3.64e-3, mla-kv6 with equalization 4.08e-3 nats.
        XCTAssertLessThanOrEqual(bf16.logits.klMean, 4.3e-4)
        XCTAssertLessThanOrEqual(fp8.logits.klMean, 2.8e-3)
        XCTAssertLessThanOrEqual(plain.logits.klMean, 7.3e-3)
        XCTAssertLessThanOrEqual(equalized.logits.klMean, 8.2e-3)
        XCTAssertGreaterThanOrEqual(plain.logits.top1Agreement, 0.95)
        XCTAssertGreaterThanOrEqual(equalized.logits.top1Agreement, 0.95)
        // The ordering the measurements show: bf16 < fp8_ds_mla < mla-kv6.
        XCTAssertLessThan(bf16.logits.klMean, fp8.logits.klMean)
        XCTAssertLessThan(fp8.logits.klMean, plain.logits.klMean)
    }

    /// The cache codecs run in the absorbed (latent-attention) forms too: absorbed f32 checkpoints through
    /// each cache against the original. The absorbed cache holds the gain-free latent, so its quantization
    /// differs from the original form's; measured KL is printed and bounded like the original form's pins.
    func testCacheFormatsInAbsorbedForms() throws {
        let heldout = try TokenFile.load(trained.appendingPathComponent("heldout.json"))
        let reference = try ModelLoader.open(trained)
        for form in [AttentionForm.split, .fold] {
            let out = dir.appendingPathComponent("absorbed-\(form.rawValue)")
            _ = try AbsorbStage.run(input: trained, output: out, options: AbsorbOptions(form: form), dtype: .f32, force: false)
            for (format, bound) in [(KVCacheCodec.Format.bf16, 4.3e-4), (.fp8DSMLA, 2.8e-3), (.mlaKV6, 7.3e-3)] {
                var candidate = try ModelLoader.open(out)
                candidate.kvCache = format
                let r = try compare(reference, candidate, tokens: heldout)
                print(String(format: "absorbed %@ kv-cache %@: KL mean %.3e top-1 %.4f", form.rawValue, format.rawValue, r.logits.klMean, r.logits.top1Agreement))
                XCTAssertLessThanOrEqual(r.logits.klMean, bound, "\(form) \(format)")
                XCTAssertGreaterThan(r.logits.klMean, 0, "the cache really ran")
            }
        }
    }

    func testCombinedWithFP8InOnePass() throws {
        let out = try kv6(trained, calibrated: true, fp8: true, name: "fp8-kv6")
        let config = try DeepSeekConfig.load(directory: out)
        XCTAssertNotNil(config.quantization)
        XCTAssertEqual(config.kvCache?.format, "mla-kv6")
        XCTAssertEqual(config.kvCache?.bytesPerTokenPerLayer, 64)
        let report = try compare(try ModelLoader.open(trained), try ModelLoader.open(out), tokens: try TokenFile.load(trained.appendingPathComponent("tokens.json")))
        XCTAssertLessThanOrEqual(report.logits.klMean, 1e-2)
        XCTAssertGreaterThanOrEqual(report.logits.top1Agreement, 0.95)
        XCTAssertThrowsError(try kv6(out, calibrated: false, name: "twice"))
    }
}
