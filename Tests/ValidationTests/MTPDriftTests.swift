import DeepSeekModel
import Foundation
import XCTest
@testable import ReferenceModel
@testable import Validation

/// `validate` runs the first MTP layer of both models and reports its drift (the torch reference of
/// the MTP pass itself is the cross-check's `check_mtp`).
final class MTPDriftTests: XCTestCase {
    private let v3 = fixtures.appendingPathComponent("v3")

    func testItselfHasNoMTPDrift() throws {
        let model = try ModelLoader.open(v3)
        let tokens = try TokenFile.load(v3.appendingPathComponent("tokens.json"))
        let report = try Validator.compare(reference: model, candidate: model, tokens: tokens, tokensLabel: "t", heldout: nil, thresholds: .defaults)
        let mtp = try XCTUnwrap(report.mtp)
        XCTAssertEqual(mtp, .init(layer: model.config.numHiddenLayers, positions: tokens.count * (tokens[0].count - 1),
                                  logits: .init(maxAbsDelta: 0, klMean: 0, klMax: 0, klP99: 0, top1Agreement: 1), routingAgreement: 1,
                                  candidateKVCache: "none"))
        XCTAssertNil(report.notes)
        XCTAssertTrue(report.table().contains("MTP layer 3  max |Δ| 0.000e+00"), report.table())
        // The MTP layer's experts are counted and probed with the main stack's.
        let experts = try XCTUnwrap(report.experts)
        XCTAssertEqual(experts.perLayer.map(\.layer), [1, 2, 3])
        XCTAssertEqual(experts.perLayer.map(\.probeRows), [32, 32, 30], "the MTP layer has 2 x 15 positions")
        let chosen = Set(try XCTUnwrap(try model.forward().run(tokens: tokens, mtp: true).mtp?.routing).experts)
        XCTAssertEqual(experts.perLayer.last?.routed, chosen.count)
        XCTAssertEqual(experts.total, 3 * (model.config.nRoutedExperts ?? 0))
    }

    /// A broken eh_proj leaves the main model's logits and hidden states identical: only the MTP line
    /// sees it, and it does not fail the check (a draft's drift costs accepted drafts, not outputs).
    func testABrokenMTPLayerIsReportedNotJudged() throws {
        let reference = try ModelLoader.open(v3)
        let tokens = try TokenFile.load(v3.appendingPathComponent("tokens.json"))
        let target = TensorNames.name(.mtpProjection, layer: reference.config.numHiddenLayers)
        let broken = try LoadedModel(label: "broken", config: reference.config, weights: EditedWeights(base: reference.weights) { name, values in
            if name == target { values = values.map { -$0 } }
        })
        let report = try Validator.compare(reference: reference, candidate: broken, tokens: tokens, tokensLabel: "t", heldout: nil,
                                           thresholds: DriftThresholds(maxLogitDelta: 0))
        XCTAssertEqual(report.logits.maxAbsDelta, 0)
        XCTAssertTrue(report.hiddenStates.allSatisfy { $0.relativeError == 0 })
        let mtp = try XCTUnwrap(report.mtp)
        XCTAssertGreaterThan(mtp.logits.klMean, 0.01)
        XCTAssertLessThan(mtp.logits.top1Agreement, 1)
        XCTAssertTrue(report.verdict.passed, "\(report.verdict.failures)")
        // The MTP layer's input drifted, its experts did not: probes run the reference's rows in both models.
        let last = try XCTUnwrap(report.experts?.perLayer.last)
        XCTAssertEqual(last.layer, reference.config.numHiddenLayers)
        XCTAssertGreaterThan(last.probed, 0)
        XCTAssertEqual(last.relativeErrorMax, 0)
    }

    /// No MTP layer (V2), or sequences of one token: no MTP line.
    func testNoMTPWithoutTheLayerOrASecondToken() throws {
        let lite = try ModelLoader.open(fixtures.appendingPathComponent("lite"))
        let liteTokens = try TokenFile.load(fixtures.appendingPathComponent("lite/tokens.json"))
        XCTAssertNil(try Validator.compare(reference: lite, candidate: lite, tokens: liteTokens, tokensLabel: "t", heldout: nil, thresholds: .defaults).mtp)
        let model = try ModelLoader.open(v3)
        let single = try TokenFile.load(v3.appendingPathComponent("tokens.json")).map { Array($0.prefix(1)) }
        let report = try Validator.compare(reference: model, candidate: model, tokens: single, tokensLabel: "t", heldout: nil, thresholds: .defaults)
        XCTAssertNil(report.mtp)
        XCTAssertEqual(report.notes, ["the MTP layer is not compared: sequences of one token leave it no position (position i reads token i + 1)"])
        XCTAssertNil(try model.forward().run(tokens: single, mtp: true).mtp)
    }

    /// The MTP pass reads position i's final hidden state and token i + 1: changing the last token of a
    /// sequence moves only that sequence's last MTP position.
    func testPositionIReadsTokenIPlusOne() throws {
        let model = try ModelLoader.open(v3)
        var tokens = try TokenFile.load(v3.appendingPathComponent("tokens.json"))
        let before = try XCTUnwrap(try model.forward().run(tokens: tokens, mtp: true).mtp)
        let seq = tokens[0].count, vocab = model.config.vocabSize
        tokens[0][seq - 1] = (tokens[0][seq - 1] + 1) % vocab
        let after = try XCTUnwrap(try model.forward().run(tokens: tokens, mtp: true).mtp)
        XCTAssertEqual(before.sequenceLength, seq - 1)
        let positions = before.batch * before.sequenceLength
        let changed = (0..<positions).filter { p in before.logits[(p * vocab)..<((p + 1) * vocab)] != after.logits[(p * vocab)..<((p + 1) * vocab)] }
        XCTAssertEqual(changed, [seq - 2])
    }

    /// Position i reads the final hidden state at i, not at i + 1: changing row j of `final` moves MTP
    /// positions j onwards of that sequence (causal attention), and not j - 1.
    func testPositionIReadsTheFinalHiddenStateAtI() throws {
        let model = try ModelLoader.open(v3)
        let tokens = try TokenFile.load(v3.appendingPathComponent("tokens.json"))
        let forward = model.forward()
        var state = try forward.start(tokens: tokens)
        for _ in 0..<model.config.numHiddenLayers { try forward.runLayer(&state) }
        var final = try forward.finish(state).final
        let before = try XCTUnwrap(try forward.mtpPass(tokens: tokens, final: final))
        let seq = tokens[0].count, h = model.config.hiddenSize, vocab = model.config.vocabSize, j = 5
        for k in (j * h)..<((j + 1) * h) { final[k] = -final[k] }
        let after = try XCTUnwrap(try forward.mtpPass(tokens: tokens, final: final))
        let changed = (0..<(tokens.count * (seq - 1))).filter { p in before.logits[(p * vocab)..<((p + 1) * vocab)] != after.logits[(p * vocab)..<((p + 1) * vocab)] }
        XCTAssertEqual(changed, Array(j..<(seq - 1)))
    }

    /// An MTP layer only one model holds is not compared, and the report says so.
    func testAnMTPLayerOnlyOneModelHoldsIsNamed() throws {
        let model = try ModelLoader.open(v3)
        var config = model.config
        config.numNextnPredictLayers = 0
        let without = try LoadedModel(label: "without", config: config, weights: model.weights)
        let tokens = try TokenFile.load(v3.appendingPathComponent("tokens.json"))
        let report = try Validator.compare(reference: model, candidate: without, tokens: tokens, tokensLabel: "t", heldout: nil, thresholds: .defaults)
        XCTAssertNil(report.mtp)
        XCTAssertEqual(report.notes, ["the MTP layer is not compared: the reference holds the weights of 1 MTP layer(s), the candidate of 0"])
        XCTAssertTrue(report.table().contains("note         the MTP layer is not compared"), report.table())
    }
}
