import Conversion
import DeepSeekModel
import Foundation
import SafeTensors
import XCTest
@testable import ReferenceModel
@testable import Validation

/// Absorbed checkpoints run through the latent-attention forward and are compared with the original.
final class AbsorbValidationTests: XCTestCase {
    var dir: URL!
    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("dsconvert-absorb-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    private func absorb(_ fixture: String, _ options: AbsorbOptions, _ dtype: AbsorbedDType) throws -> URL {
        let out = dir.appendingPathComponent("\(fixture)-\(options.form.rawValue)-\(dtype.rawValue)-\(options.softmaxScaleOverride ?? 0)")
        _ = try AbsorbStage.run(input: fixtures.appendingPathComponent(fixture), output: out, options: options, dtype: dtype, force: false)
        return out
    }

    private func compare(_ fixture: String, _ candidate: URL, heldout: Bool = false) throws -> DriftReport {
        let reference = fixtures.appendingPathComponent(fixture)
        let held = heldout ? (Array(try TokenFile.load(reference.appendingPathComponent("heldout.json")).prefix(4)), "heldout") : nil
        return try Validator.compare(reference: try ModelLoader.open(reference), candidate: try ModelLoader.open(candidate),
                                     tokens: try TokenFile.load(reference.appendingPathComponent("tokens.json")), tokensLabel: "tokens.json",
                                     heldout: held.map { (tokens: $0.0, label: $0.1) }, thresholds: .defaults)
    }

    /// f32 storage: logits within 1e-3 of the original (observed ≤ 1.4e-4 over all fixtures and both modes).
    func testF32AbsorbedMatchesOriginalOnEveryFixture() throws {
        for fixture in fixtureNames {
            for mode in AbsorbMode.allCases {
                let form = mode.form
                let report = try compare(fixture, try absorb(fixture, AbsorbOptions(mode: mode, keepKVB: mode == .split), .f32))
                XCTAssertLessThanOrEqual(report.logits.maxAbsDelta, 1e-3, "\(fixture) \(form)")
                XCTAssertEqual(report.logits.top1Agreement, 1, "\(fixture) \(form)")
                XCTAssertTrue(report.verdict.passed, "\(fixture) \(form): \(report.verdict.failures)")
            }
        }
    }

    /// bf16 storage on the trained fixture: one extra rounding per folded weight.
    /// Observed: split KL mean 3.2e-7, fold 3.9e-7 nats; top-1 1.0. Bounds leave ~30x headroom, far
    /// below the ~1 nat a lost scale costs (testWrongSoftmaxScaleFailsValidation).
    func testBF16AbsorbedOnTrainedFixture() throws {
        for mode in AbsorbMode.allCases {
            let form = mode.form
            let report = try compare("trained", try absorb("trained", AbsorbOptions(mode: mode), .bf16), heldout: true)
            XCTAssertLessThanOrEqual(report.logits.klMean, 1e-5, "\(form)")
            XCTAssertGreaterThanOrEqual(report.logits.top1Agreement, 0.99, "\(form)")
            XCTAssertGreaterThanOrEqual(report.routing!.agreement, 0.99, "\(form)")
            XCTAssertEqual(report.perplexity!.ratio, 1, accuracy: 1e-3)
        }
    }

    /// The softmax scale is right by construction: folding the scales engines get wrong fails validation.
    func testWrongSoftmaxScaleFailsValidation() throws {
        let config = try DeepSeekConfig.load(directory: fixtures.appendingPathComponent("trained"))
        let withoutMscale = 1 / Double(config.qkHeadDim).squareRoot()  // YaRN mscale² forgotten
        let absorbedWidth = 1 / Double(config.kvLoraRank + config.qkRopeHeadDim).squareRoot()  // the 576^-0.5 bug
        XCTAssertNotEqual(config.softmaxScale, withoutMscale)
        for wrong in [withoutMscale, absorbedWidth] {
            for mode in AbsorbMode.allCases {
                let form = mode.form
                let report = try compare("trained", try absorb("trained", AbsorbOptions(mode: mode, softmaxScaleOverride: wrong), .f32))
                XCTAssertFalse(report.verdict.passed, "scale \(wrong) \(form) must fail")
                XCTAssertGreaterThan(report.logits.maxAbsDelta, 0.1)
            }
        }
    }

    func testAbsorbIsDeterministic() throws {
        let a = try absorb("v2", AbsorbOptions(mode: .fold), .bf16)
        let b = dir.appendingPathComponent("again")
        _ = try AbsorbStage.run(input: fixtures.appendingPathComponent("v2"), output: b, options: AbsorbOptions(mode: .fold), dtype: .bf16, force: false)
        for name in try FileManager.default.contentsOfDirectory(atPath: a.path) where name.hasSuffix(".safetensors") || name == "config.json" {
            XCTAssertEqual(try Data(contentsOf: a.appendingPathComponent(name)), try Data(contentsOf: b.appendingPathComponent(name)), name)
        }
    }
}
