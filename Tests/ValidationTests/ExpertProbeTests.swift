import DeepSeekModel
import Foundation
import XCTest
@testable import ReferenceModel
@testable import Validation

/// `validate` checks every routed expert: those no token chose are run on the same rows in both models.
final class ExpertProbeTests: XCTestCase {
    /// The experts each MoE layer's tokens chose, from a plain forward pass (not from the validator).
    private func chosen(_ model: LoadedModel, _ tokens: [[Int]]) throws -> [Int: Set<Int>] {
        let routing = try model.forward().run(tokens: tokens).routing
        return Dictionary(uniqueKeysWithValues: routing.map { ($0.layer, Set($0.experts.map(Int.init))) })
    }

    func testEveryExpertIsRoutedOrProbedAndItselfHasNoDrift() throws {
        for name in fixtureNames {
            let dir = fixtures.appendingPathComponent(name)
            let model = try ModelLoader.open(dir)
            let tokens = try TokenFile.load(dir.appendingPathComponent("tokens.json"))
            let report = try Validator.compare(reference: model, candidate: model, tokens: tokens, tokensLabel: "t", heldout: nil, thresholds: .defaults)
            let experts = try XCTUnwrap(report.experts, name)
            let chosen = try chosen(model, tokens)
            let total = model.config.nRoutedExperts ?? 0
            XCTAssertEqual(experts.total, chosen.count * total, name)
            XCTAssertEqual(experts.perLayer.map(\.layer), chosen.keys.sorted(), name)
            for layer in experts.perLayer {
                XCTAssertEqual(layer.routed, chosen[layer.layer]!.count, "\(name) layer \(layer.layer)")
                XCTAssertEqual(layer.routed + layer.probed, total, "\(name) layer \(layer.layer)")
            }
            XCTAssertEqual(experts.routed + experts.probed, experts.total, name)
            let rows = min(ExpertProbes.rows, tokens.count * tokens[0].count)
            XCTAssertEqual(experts.probeRows, experts.probed > 0 ? rows : 0, name)
            XCTAssertTrue(experts.perLayer.allSatisfy { $0.probeRows == rows }, name)
            if experts.probed > 0 { XCTAssertEqual(experts.relativeErrorMax, 0, name) } else { XCTAssertNil(experts.relativeErrorMax, name) }
            XCTAssertTrue(report.verdict.passed, "\(name): \(report.verdict.failures)")
        }
    }

    /// The trained fixture, its tokens, and the first (layer, expert) its tokens leave unchosen with the
    /// model `edit` makes of it by changing that expert's `projection` (labelled `label`).
    private func unchosenExpert(_ projection: MLPProjection, label: String, _ edit: @escaping (inout [Float]) -> Void) throws
        -> (reference: LoadedModel, edited: LoadedModel, tokens: [[Int]], layer: Int, expert: Int) {
        let dir = fixtures.appendingPathComponent("trained")
        let reference = try ModelLoader.open(dir)
        let tokens = try TokenFile.load(dir.appendingPathComponent("tokens.json"))
        let chosen = try chosen(reference, tokens)
        let (layer, expert) = try XCTUnwrap(chosen.keys.sorted().lazy.compactMap { layer in
            (0..<(reference.config.nRoutedExperts ?? 0)).first { !chosen[layer]!.contains($0) }.map { (layer, $0) }
        }.first, "the trained fixture's sample leaves some expert unchosen")
        let target = TensorNames.mlp(.expert(expert), projection, layer: layer)
        let edited = try LoadedModel(label: label, config: reference.config, weights: EditedWeights(base: reference.weights) { name, values in
            if name == target { edit(&values) }
        })
        return (reference, edited, tokens, layer, expert)
    }

    /// An expert no token chose, its down_proj doubled: the forward passes cannot see it (the logits
    /// and every hidden state are identical), the probe does, at exactly 1 (doubling an f32 weight
    /// doubles every product and sum exactly, so the candidate's output is twice the reference's).
    func testABrokenExpertNoTokenChoseFailsNamed() throws {
        let (reference, broken, tokens, layer, expert) = try unchosenExpert(.down, label: "broken") { $0 = $0.map { $0 * 2 } }
        let report = try Validator.compare(reference: reference, candidate: broken, tokens: tokens, tokensLabel: "t", heldout: nil, thresholds: .defaults)
        XCTAssertEqual(report.logits.maxAbsDelta, 0)
        XCTAssertTrue(report.hiddenStates.allSatisfy { $0.relativeError == 0 })
        let experts = try XCTUnwrap(report.experts)
        XCTAssertEqual(experts.relativeErrorMax, 1)
        XCTAssertEqual(experts.worst.first, .init(layer: layer, expert: expert, relativeError: 1))
        XCTAssertEqual(experts.worst.dropFirst().map(\.relativeError).max() ?? 0, 0)
        XCTAssertEqual(experts.perLayer.first { $0.layer == layer }?.relativeErrorMax, 1)
        XCTAssertEqual(report.verdict.failures, ["unchosen expert's relative error (layer \(layer) expert \(expert)) 1 > 0.25"])
        XCTAssertTrue(report.table().contains("rel. error max 1.000e+00 (layer \(layer) expert \(expert))"), report.table())

        // Without the limit the verdict is the forward passes' alone: they pass.
        var unlimited = DriftThresholds.defaults
        unlimited.maxExpertRelativeError = nil
        XCTAssertTrue(try Validator.compare(reference: reference, candidate: broken, tokens: tokens, tokensLabel: "t", heldout: nil,
                                            thresholds: unlimited).verdict.passed)
    }

    /// An expert whose drift has no finite measure stops the comparison with one line naming it: the
    /// reference's output all zero (its down_proj zeroed) against the candidate's, or a NaN in the
    /// candidate's (one of its up_proj weights); the forward passes never ran either expert.
    func testAnExpertWithNoFiniteDriftIsNamed() throws {
        let zeroed = try unchosenExpert(.down, label: "zeroed") { $0 = $0.map { _ in 0 } }
        XCTAssertThrowsError(try Validator.compare(reference: zeroed.edited, candidate: zeroed.reference, tokens: zeroed.tokens, tokensLabel: "t",
                                                   heldout: nil, thresholds: .defaults)) { error in
            XCTAssertEqual(error as? ValidationError, .expertDriftNotFinite(model: "zeroed", layer: zeroed.layer, expert: zeroed.expert, problem: .zeroInReference))
        }
        let nan = try unchosenExpert(.up, label: "nan") { $0[0] = .nan }
        XCTAssertThrowsError(try Validator.compare(reference: nan.reference, candidate: nan.edited, tokens: nan.tokens, tokensLabel: "t",
                                                   heldout: nil, thresholds: .defaults)) { error in
            XCTAssertEqual(error as? ValidationError, .expertDriftNotFinite(model: "nan", layer: nan.layer, expert: nan.expert, problem: .notFinite))
        }
    }

    /// Models whose MoE layers differ in shape are refused before any pass, naming what differs (the
    /// probes and the routing are compared expert by expert).
    func testModelsWithOtherExpertsAreRefused() throws {
        let lite = try ModelLoader.open(fixtures.appendingPathComponent("lite"))
        let tokens = try TokenFile.load(fixtures.appendingPathComponent("lite/tokens.json"))
        var config = lite.config
        config.nRoutedExperts = (config.nRoutedExperts ?? 0) / 2
        config.firstKDenseReplace += 1
        let fewer = try LoadedModel(label: "fewer", config: config, weights: lite.weights)
        XCTAssertThrowsError(try Validator.compare(reference: lite, candidate: fewer, tokens: tokens, tokensLabel: "t", heldout: nil,
                                                   thresholds: .defaults)) { error in
            guard case let .incompatibleModels(_, candidate, reason)? = error as? ValidationError else { return XCTFail("\(error)") }
            XCTAssertEqual(candidate, "fewer")
            XCTAssertTrue(reason.contains("n_routed_experts \(lite.config.nRoutedExperts!) and \(config.nRoutedExperts!)"), reason)
            XCTAssertTrue(reason.contains("first_k_dense_replace \(lite.config.firstKDenseReplace) and \(config.firstKDenseReplace)"), reason)
        }
    }
}
