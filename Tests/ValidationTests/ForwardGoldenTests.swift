import DeepSeekModel
import Foundation
import SafeTensors
import XCTest
@testable import ReferenceModel
@testable import Validation

let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
let fixtures = packageRoot.appendingPathComponent("Fixtures")
let fixtureNames = ["lite", "v2", "fp8", "trained", "trained-wide"]

/// The reference forward pass against transformers 5.23.0's DeepseekV2ForCausalLM (golden.safetensors).
///
/// Tolerances: logits max |Δ| ≤ 1e-3 (the bar; observed ≤ 1.6e-4, on the random `fp8` fixture
/// whose residual stream grows to ~1e5). Hidden states: max |Δ| ≤ 2e-4 of the layer's max |value|
/// (observed ≤ 4.6e-5); both are fp32 with a different summation order than torch, so the error
/// scales with the magnitude of the residual stream. Routing: the selected experts exactly; weights
/// within 1e-4 · routed_scaling_factor (observed 1.1e-5 at scaling 16).
final class ForwardGoldenTests: XCTestCase {
    func testEveryFixtureMatchesTransformers() throws {
        for name in fixtureNames {
            let dir = fixtures.appendingPathComponent(name)
            let model = try ModelLoader.open(dir)
            let tokens = try TokenFile.load(dir.appendingPathComponent("tokens.json"))
            let result = try ReferenceForward(config: model.config, weights: model.weights).run(tokens: tokens, recordHiddenStates: true)
            let golden = try SafeTensorsFile(path: dir.appendingPathComponent("golden.safetensors").path)

            let logits = try golden.view("logits").floats()
            XCTAssertEqual(try golden.view("logits").shape, [result.batch, result.sequenceLength, result.vocabSize])
            XCTAssertLessThanOrEqual(DriftMetrics.maxAbsDifference(logits, result.logits), 1e-3, name)

            XCTAssertEqual(result.hiddenStates.count, model.config.numHiddenLayers + 1)
            for (i, hidden) in result.hiddenStates.enumerated() {
                let expected = try golden.view("hidden_states.\(i)").floats()
                let scale = Double(expected.map { abs($0) }.max()!)
                XCTAssertLessThanOrEqual(DriftMetrics.maxAbsDifference(expected, hidden) / scale, 2e-4, "\(name) hidden_states.\(i)")
            }

            XCTAssertEqual(result.routing.map(\.layer), (0..<model.config.numHiddenLayers).filter(model.config.isMoELayer))
            for record in result.routing {
                let experts = try golden.view("routing.\(record.layer).experts")
                let expectedExperts = (0..<(experts.bytes.count / 4)).map { experts.bytes.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self) }
                XCTAssertEqual(record.experts, expectedExperts, "\(name) layer \(record.layer): routing must match exactly")
                let weights = try golden.view("routing.\(record.layer).weights").floats()
                XCTAssertLessThanOrEqual(DriftMetrics.maxAbsDifference(weights, record.weights), 1e-4 * model.config.routedScalingFactor, name)
            }
        }
    }

    func testValidateEveryFixtureAgainstItself() throws {
        for name in fixtureNames {
            let dir = fixtures.appendingPathComponent(name)
            let tokens = try TokenFile.load(dir.appendingPathComponent("tokens.json"))
            let report = try Validator.compare(reference: try ModelLoader.open(dir), candidate: try ModelLoader.open(dir), tokens: tokens,
                                               tokensLabel: "tokens.json", heldout: nil, thresholds: DriftThresholds(maxLogitDelta: 0))
            XCTAssertTrue(report.verdict.passed, "\(name): \(report.verdict.failures)")
            XCTAssertEqual(report.logits.maxAbsDelta, 0)
            XCTAssertEqual(report.logits.klMax, 0)
            XCTAssertEqual(report.logits.top1Agreement, 1)
            XCTAssertEqual(report.routing?.agreement ?? 1, 1)
            XCTAssertTrue(report.hiddenStates.allSatisfy { $0.relativeError == 0 && $0.cosineMin > 0.999999 })
        }
    }
}

/// A candidate whose weights differ from the reference's by a given edit.
final class EditedWeights: WeightProvider {
    let base: WeightProvider
    let edit: (String, inout [Float]) -> Void
    var label: String { base.label + " (edited)" }
    init(base: WeightProvider, edit: @escaping (String, inout [Float]) -> Void) {
        self.base = base
        self.edit = edit
    }
    func floats(_ name: String, shape: [Int]) throws -> [Float] {
        var values = try base.floats(name, shape: shape)
        edit(name, &values)
        return values
    }
    func release(_ name: String) { base.release(name) }
}

final class ValidatorTests: XCTestCase {
    func testPerplexityOnHeldOutTextAndDriftDetection() throws {
        let dir = fixtures.appendingPathComponent("trained")
        let reference = try ModelLoader.open(dir)
        let tokens = try TokenFile.load(dir.appendingPathComponent("tokens.json"))
        let heldout = Array(try TokenFile.load(dir.appendingPathComponent("heldout.json")).prefix(4))

        // Perplexity agrees with transformers' (heldout-perplexity.json covers all 16 sequences; here 4 of them).
        let same = try Validator.compare(reference: reference, candidate: reference, tokens: tokens, tokensLabel: "t",
                                         heldout: (heldout, "heldout.json"), thresholds: .defaults)
        XCTAssertEqual(same.perplexity?.ratio, 1)
        XCTAssertTrue(same.verdict.passed)

        // A wrong kv_a_layernorm gain (the kind of scale a bad fold loses) is caught and named.
        let broken = try LoadedModel(label: "broken", config: reference.config, weights: EditedWeights(base: reference.weights) { name, values in
            if name == "model.layers.1.self_attn.kv_a_layernorm.weight" { values = values.map { $0 * 3 } }
        })
        let report = try Validator.compare(reference: reference, candidate: broken, tokens: tokens, tokensLabel: "t",
                                           heldout: (heldout, "heldout.json"), thresholds: .defaults)
        XCTAssertFalse(report.verdict.passed)
        XCTAssertEqual(report.hiddenStates[0].relativeError, 0)
        XCTAssertEqual(report.hiddenStates[1].relativeError, 0, "layer 0 is untouched")
        XCTAssertGreaterThan(report.hiddenStates[2].relativeError, 1e-3)
        XCTAssertGreaterThan(report.perplexity!.ratio, 1)
        XCTAssertFalse(report.verdict.failures.isEmpty)
    }

    func testHeldOutPerplexityMatchesTransformers() throws {
        let dir = fixtures.appendingPathComponent("trained")
        let model = try ModelLoader.open(dir)
        let heldout = try TokenFile.load(dir.appendingPathComponent("heldout.json"))
        let logits = try ReferenceForward(config: model.config, weights: model.weights).run(tokens: heldout).logits
        let ours = DriftMetrics.perplexity(logits: logits, tokens: heldout, vocab: model.config.vocabSize)
        let recorded = try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent("heldout-perplexity.json"))) as! [String: Any]
        XCTAssertEqual(ours, recorded["perplexity"] as! Double, accuracy: 1e-4 * ours)
    }
}

final class RouterTests: XCTestCase {
    private func config(_ edit: (inout DeepSeekConfig) -> Void) throws -> DeepSeekConfig {
        var c = try DeepSeekConfig.load(directory: fixtures.appendingPathComponent("v2"))
        edit(&c)
        return c
    }

    func testGroupLimitedKeepsTopGroupsByTheirBestExpert() throws {
        // 8 experts in 4 groups of 2; top-2 groups, top-2 experts. Group maxima: g0 0.9(e1), g1 0.8(e2), g2 0.85(e5), g3 0.1.
        let c = try config { $0.nRoutedExperts = 8; $0.nGroup = 4; $0.topkGroup = 2; $0.numExpertsPerTok = 2; $0.routedScalingFactor = 1 }
        let logits: [Float] = [0.7, 0.9, 0.8, 0.1, 0.2, 0.85, 0.05, 0.1].map { Float(log(Double($0))) }
        let route = MoERouter(config: c).route(logits: logits)
        // Groups 0 and 2 survive; the best two experts among {0, 1, 4, 5} are 1 and 5 (2 is better than 5 but its group is cut).
        XCTAssertEqual(route.map(\.expert), [1, 5])
        let total = [0.7, 0.9, 0.8, 0.1, 0.2, 0.85, 0.05, 0.1].reduce(0, +)
        XCTAssertEqual(Double(route[0].weight), 0.9 / total, accuracy: 1e-6)
    }

    /// V2's group score is the group's best expert; V3's is the sum of its top two (and a plain sum is a
    /// third rule). Here the rules choose different groups, so a router scoring by either sum fails.
    func testGroupScoreIsTheBestExpertNotASum() throws {
        // 8 experts in 2 groups of 4; top-1 group, top-2 experts.
        // g0: max 0.30, top-2 sum 0.31, sum 0.33; g1: max 0.20, top-2 sum 0.40, sum 0.67.
        let c = try config { $0.nRoutedExperts = 8; $0.nGroup = 2; $0.topkGroup = 1; $0.numExpertsPerTok = 2; $0.routedScalingFactor = 1 }
        let probabilities = [0.30, 0.01, 0.01, 0.01, 0.20, 0.20, 0.20, 0.07]
        let route = MoERouter(config: c).route(logits: probabilities.map { Float(log($0)) })
        XCTAssertEqual(route.map(\.expert), [0, 1], "max keeps g0 (a sum would keep g1: experts 4, 5)")
        XCTAssertEqual(Double(route[0].weight), 0.30, accuracy: 1e-6)

        // 12 experts in 4 groups of 3; top-2 groups, top-3 experts. Maxima keep g0 and g2; sums keep g1 and g3.
        // g0 (0.16, 0.01, 0.01) max 0.16 sum 0.18; g1 (0.12, 0.11, 0.11) max 0.12 sum 0.34;
        // g2 (0.15, 0.01, 0.01) max 0.15 sum 0.17; g3 (0.10, 0.10, 0.10) max 0.10 sum 0.30.
        let c2 = try config { $0.nRoutedExperts = 12; $0.nGroup = 4; $0.topkGroup = 2; $0.numExpertsPerTok = 3; $0.routedScalingFactor = 1 }
        let p2 = [0.16, 0.01, 0.01, 0.12, 0.11, 0.11, 0.15, 0.01, 0.01, 0.10, 0.10, 0.10]
        XCTAssertEqual(MoERouter(config: c2).route(logits: p2.map { Float(log($0)) }).map(\.expert), [0, 1, 6],
                       "groups 0 and 2 by their best expert; the third pick is the first 0.01 of g0 (ties go to the lower index)")
    }

    func testGreedyWithScalingAndNormTopkProb() throws {
        let logits: [Float] = [1, 3, 2, 0]
        let scaled = MoERouter(config: try config { $0.nRoutedExperts = 4; $0.topkMethod = .greedy; $0.numExpertsPerTok = 2; $0.routedScalingFactor = 16 }).route(logits: logits)
        let p = logits.map { exp(Double($0)) }
        let z = p.reduce(0, +)
        XCTAssertEqual(scaled.map(\.expert), [1, 2])
        XCTAssertEqual(Double(scaled[0].weight), 16 * p[1] / z, accuracy: 1e-5)
        // DeepSeek-V2's code: with norm_topk_prob the weights are renormalized and NOT scaled.
        let normalized = MoERouter(config: try config { $0.nRoutedExperts = 4; $0.topkMethod = .greedy; $0.numExpertsPerTok = 2; $0.routedScalingFactor = 16; $0.normTopkProb = true }).route(logits: logits)
        XCTAssertEqual(Double(normalized[0].weight), p[1] / (p[1] + p[2]), accuracy: 1e-6)
        XCTAssertEqual(Double(normalized[0].weight + normalized[1].weight), 1, accuracy: 1e-6)
        // k = 1 never renormalizes (it would always give 1).
        let single = MoERouter(config: try config { $0.nRoutedExperts = 4; $0.topkMethod = .greedy; $0.numExpertsPerTok = 1; $0.routedScalingFactor = 2; $0.normTopkProb = true }).route(logits: logits)
        XCTAssertEqual(Double(single[0].weight), 2 * p[1] / z, accuracy: 1e-5)
    }
}

final class MetricsTests: XCTestCase {
    func testKLAndTop1() {
        let r: [Float] = [0, 0, 0, 0, 1, 0]
        let c: [Float] = [0, 0, 0, 1, 0, 0]
        let (kl, top1) = DriftMetrics.klAndTop1(reference: r, candidate: c, vocab: 3)
        XCTAssertEqual(kl[0], 0)
        // p = softmax(1,0,0), q = softmax(0,1,0): KL = (e-1)/(e+2)
        XCTAssertEqual(kl[1], (M_E - 1) / (M_E + 2), accuracy: 1e-12)
        XCTAssertEqual(top1, [true, false])
    }

    func testPerplexityOfUniformModelIsVocab() {
        XCTAssertEqual(DriftMetrics.perplexity(logits: [Float](repeating: 0.3, count: 2 * 4 * 5), tokens: [[1, 2, 3, 4], [0, 0, 0, 0]], vocab: 5), 5, accuracy: 1e-9)
    }

    func testRelativeErrorAndCosine() {
        XCTAssertEqual(DriftMetrics.relativeError(reference: [3, 4], candidate: [3, 4.5]), 0.1, accuracy: 1e-12)
        let cos = DriftMetrics.rowCosines(reference: [1, 0, 0, 1], candidate: [1, 0, 1, 1], width: 2)
        XCTAssertEqual(cos.min, 1 / 2.0.squareRoot(), accuracy: 1e-12)
    }

    func testYaRNSoftmaxScaleAndRopeTable() throws {
        let config = try DeepSeekConfig.load(directory: fixtures.appendingPathComponent("configs/DeepSeek-V2"))
        let rope = RotaryEmbedding(config: config)
        XCTAssertEqual(rope.attentionScaling, 1, "mscale == mscale_all_dim")
        XCTAssertEqual(rope.invFreq.count, 32)
        XCTAssertEqual(rope.invFreq[0], 1, "the fastest dimension extrapolates")
        XCTAssertEqual(Double(rope.invFreq[31]), 1 / (40 * pow(10000, 62.0 / 64)), accuracy: 1e-12, "the slowest interpolates by the factor")
    }
}
