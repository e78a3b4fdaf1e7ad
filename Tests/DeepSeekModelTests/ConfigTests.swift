import Foundation
import XCTest
@testable import DeepSeekModel
import SafeTensors

let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
let fixtures = packageRoot.appendingPathComponent("Fixtures")

final class ConfigTests: XCTestCase {
    func testRealDeepSeekV2Accounting() throws {
        let config = try DeepSeekConfig.load(directory: fixtures.appendingPathComponent("configs/DeepSeek-V2"))
        let a = try ModelAccounting(config: config)
        XCTAssertEqual(a.totalParameters, 235_741_434_880, "236B in the paper")
        XCTAssertEqual(a.activeParameters, 20_851_512_320, "21B activated in the paper")
        XCTAssertEqual(config.softmaxScale, 0.1147214, accuracy: 5e-8, "192^-0.5 * m(40, 0.707)^2 (README, the reference forward pass)")
        XCTAssertEqual(a.kvCache.map(\.bytesPerTokenPerLayer), [1152, 656, 432, 432], "bf16, fp8_ds_mla, mla-kv6, mla-kv6c")
        XCTAssertEqual(a.kvCache[2].bitsPerElement, 6.0)
        XCTAssertEqual(a.kvCache[3].bitsPerElement, 6.0)
        XCTAssertEqual(a.routing?.deviceBoundM, 3)
        XCTAssertEqual(a.routing?.expertsPerGroup, 20)
        XCTAssertEqual(a.layerKinds.dense, [0])
        XCTAssertEqual(a.layerKinds.moe.count, 59)
    }

    func testRealDeepSeekV2LiteAccounting() throws {
        let config = try DeepSeekConfig.load(directory: fixtures.appendingPathComponent("configs/DeepSeek-V2-Lite"))
        let a = try ModelAccounting(config: config)
        XCTAssertEqual(a.totalParameters, 15_706_484_224, "15.7B in the paper")
        XCTAssertEqual(a.activeParameters, 2_451_435_008, "2.4B activated in the paper")
        XCTAssertFalse(config.hasQueryCompression)
        XCTAssertEqual(a.routing?.method, "greedy")
        XCTAssertEqual(a.kvCache[0].bytesPerToken, 1152 * 27)
    }

    /// Every published config in Fixtures/configs against the counts transformers computes for it
    /// (Fixtures/configs/param-counts.json: the model built on the meta device, numel summed; the MTP
    /// layer by its tensors; active = DeepSeek's definition, no embedding lookup).
    func testPublishedConfigsMatchTransformersCounts() throws {
        let counts = try JSONSerialization.jsonObject(with: Data(contentsOf: fixtures.appendingPathComponent("configs/param-counts.json"))) as! [String: Any]
        let names = try FileManager.default.contentsOfDirectory(atPath: fixtures.appendingPathComponent("configs").path).filter { !$0.hasSuffix(".json") }.sorted()
        XCTAssertEqual(names, ["DeepSeek-R1", "DeepSeek-V2", "DeepSeek-V2-Lite", "DeepSeek-V3", "Kimi-K2-Instruct", "Moonlight-16B-A3B-Instruct"])
        for name in names {
            let expected = try XCTUnwrap(counts[name] as? [String: Any], name)
            let config = try DeepSeekConfig.load(directory: fixtures.appendingPathComponent("configs/\(name)"))
            let a = try ModelAccounting(config: config)
            XCTAssertEqual(a.totalParameters, expected["total_main"] as? Int, name)
            XCTAssertEqual(a.mtpParameters, expected["mtp"] as? Int, name)
            XCTAssertEqual(a.activeParameters, expected["active_main"] as? Int, name)
            XCTAssertEqual(a.activeParametersWithEmbedding, expected["active_main_with_embedding"] as? Int, name)
            XCTAssertEqual(a.kvCache[0].bytesPerToken, expected["kv_cache_bf16_bytes_per_token"] as? Int, name)
            XCTAssertEqual(a.layerKinds.moe.count, expected["moe_layers"] as? Int, name)
        }
    }

    /// DeepSeek-V3 as published: 671B + the 14B MTP layer, ~37B active, node-limited routing M = 4,
    /// bf16 MLA cache 61 × 576 × 2 bytes per token; the YaRN softmax-scale correction is applied even
    /// with mscale = mscale_all_dim = 1 (m(40, 1)² = 1.8754).
    func testRealDeepSeekV3Accounting() throws {
        let config = try DeepSeekConfig.load(directory: fixtures.appendingPathComponent("configs/DeepSeek-V3"))
        XCTAssertEqual(config.architecture, .deepseekV3)
        XCTAssertEqual(config.topkMethod, .noauxTC)
        XCTAssertEqual(config.scoringFunc, .sigmoid)
        XCTAssertEqual(config.mtpLayers, 61..<62)
        XCTAssertEqual(config.quantization?.block, 128)
        let a = try ModelAccounting(config: config)
        XCTAssertEqual(a.totalParameters, 671_026_419_200)
        XCTAssertEqual(a.mtpParameters, 13_463_426_304)
        XCTAssertEqual(a.activeParametersWithEmbedding, 37_552_297_472)
        XCTAssertEqual(a.kvCache[0].bytesPerToken, 70_272)
        XCTAssertEqual(a.routing?.deviceBoundM, 4)
        XCTAssertEqual(a.routing?.method, "noaux_tc")
        let m = 0.1 * log(40.0) + 1
        XCTAssertEqual(config.softmaxScale, m * m / 192.0.squareRoot(), accuracy: 1e-12)
        let mtp = config.layerTensors(61).map(\.name)
        for name in ["model.layers.61.embed_tokens.weight", "model.layers.61.enorm.weight", "model.layers.61.hnorm.weight",
                     "model.layers.61.eh_proj.weight", "model.layers.61.shared_head.norm.weight", "model.layers.61.shared_head.head.weight",
                     "model.layers.61.mlp.gate.e_score_correction_bias", "model.layers.61.mlp.experts.255.down_proj.weight"] {
            XCTAssertTrue(mtp.contains(name), name)
        }
        XCTAssertEqual(try ExpertPlacement.plan(config: config, devices: 8).deviceBoundM, 4, "one routing group per device")
        let kimi = try DeepSeekConfig.load(directory: fixtures.appendingPathComponent("configs/Kimi-K2-Instruct"))
        let kimiPlacement = try ExpertPlacement.plan(config: kimi, devices: 8)
        XCTAssertEqual(kimiPlacement.expertsPerDevice, 48)
        XCTAssertEqual(kimiPlacement.deviceBoundM, 8, "ungrouped: M = min(k, devices)")
        XCTAssertEqual(kimi.mtpLayerCount, 0)
    }

    /// Classes and routing a config may not combine are refused at the boundary, by name.
    func testFamilyRulesAreCheckedAtDecode() throws {
        let base = try JSONSerialization.jsonObject(with: Data(contentsOf: fixtures.appendingPathComponent("configs/DeepSeek-V3/config.json"))) as! [String: Any]
        func decode(_ edit: ([String: Any]) -> [String: Any]) -> String {
            do {
                _ = try DeepSeekConfig.decode(try JSONSerialization.data(withJSONObject: edit(base)), path: "c.json")
                return "accepted"
            } catch { return (error as? DeepSeekModelError)?.errorDescription ?? "\(error)" }
        }
        XCTAssertEqual(decode { $0 }, "accepted")
        // transformers' save_pretrained writes neither key: the class's own defaults apply.
        XCTAssertEqual(decode { var c = $0; c["topk_method"] = nil; c["scoring_func"] = nil; return c }, "accepted")
        XCTAssertEqual(decode { var c = $0; c["architectures"] = ["DeepseekV32ForCausalLM"]; return c },
                       "c.json: unsupported architecture DeepseekV32ForCausalLM (supported: DeepseekV2ForCausalLM, DeepseekV3ForCausalLM)")
        XCTAssertEqual(decode { var c = $0; c["scoring_func"] = "softmax"; return c },
                       "c.json: invalid config: scoring_func 'softmax' is not supported by DeepseekV3ForCausalLM (sigmoid)")
        XCTAssertEqual(decode { var c = $0; c["topk_method"] = "top2"; return c },
                       "c.json: invalid config: topk_method 'top2' is not supported (greedy, group_limited_greedy, noaux_tc)")
        XCTAssertEqual(decode { var c = $0; c["architectures"] = ["DeepseekV2ForCausalLM"]; c["model_type"] = "deepseek_v2"; return c },
                       "c.json: invalid config: scoring_func 'sigmoid' is not supported by DeepseekV2ForCausalLM (softmax)")
        XCTAssertEqual(decode { var c = $0; c["model_type"] = "deepseek_v2"; return c },
                       "c.json: invalid config: model_type 'deepseek_v2' contradicts architectures DeepseekV3ForCausalLM")
        XCTAssertEqual(decode { var c = $0; c["n_group"] = 256; c["topk_group"] = 8; return c },
                       "c.json: invalid config: noaux_tc needs at least 2 experts per group, n_group 256 leaves 1")
        // absorb's record: its words are refused by key and choices, as the config's own.
        let record: [String: Any] = ["attention_form": "mla_absorbed_split", "folds": ["kv_a_layernorm_gamma"], "softmax_scale": 1.0,
                                     "original_softmax_scale": 0.1, "keeps_kv_b": false, "dtype": "bf16", "layouts": [String: String]()]
        func absorbed(_ key: String, _ value: Any) -> ([String: Any]) -> [String: Any] {
            { var c = $0; var r = record; r[key] = value; c["dsconvert_absorption"] = r; return c }
        }
        XCTAssertEqual(decode(absorbed("dtype", "bf16")), "accepted")
        XCTAssertEqual(decode(absorbed("dtype", "fp16")), "c.json: invalid config: dsconvert_absorption.dtype 'fp16' is not supported (bf16, f32)")
        XCTAssertEqual(decode(absorbed("folds", ["kv_a_layernorm_gamma", "o_norm"])),
                       "c.json: invalid config: dsconvert_absorption.folds 'o_norm' is not supported (kv_a_layernorm_gamma, q_a_layernorm_gamma, softmax_scale)")
        XCTAssertEqual(decode(absorbed("attention_form", "mla_absorbed")),
                       "c.json: invalid config: dsconvert_absorption.attention_form 'mla_absorbed' is not supported (mla, mla_absorbed_split, mla_absorbed_fold)")
        // Main layers all dense, the MTP layer (61) MoE: its routing is checked all the same.
        let mtpOnly: ([String: Any]) -> [String: Any] = { var c = $0; c["first_k_dense_replace"] = 61; return c }
        XCTAssertEqual(decode(mtpOnly), "accepted")
        XCTAssertEqual(decode { var c = mtpOnly($0); c["n_group"] = 512; return c },
                       "c.json: invalid config: 'n_group' must divide n_routed_experts for noaux_tc")
        XCTAssertEqual(decode { var c = mtpOnly($0); c["num_experts_per_tok"] = 257; return c },
                       "c.json: invalid config: 'num_experts_per_tok' must be in 1...n_routed_experts")
        XCTAssertEqual(decode { var c = mtpOnly($0); c["scoring_func"] = "softmax"; return c },
                       "c.json: invalid config: scoring_func 'softmax' is not supported by DeepseekV3ForCausalLM (sigmoid)")
        // Checked before anything counts the MTP layers: 61 - 100 layers would be no range at all.
        XCTAssertEqual(decode { var c = mtpOnly($0); c["num_nextn_predict_layers"] = -100; return c },
                       "c.json: invalid config: 'num_nextn_predict_layers' = -100 is outside 0...8")
    }

    func testHubAndTransformers5RopeLayoutsAgree() throws {
        let hub = #"""
        {"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
         "kv_lora_rank": 4, "qk_nope_head_dim": 2, "qk_rope_head_dim": 2, "v_head_dim": 2, "q_lora_rank": null,
         "rope_theta": 10000, "rope_scaling": {"type": "yarn", "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
         "original_max_position_embeddings": 4096, "beta_fast": 32, "beta_slow": 1}}
        """#
        let v5 = #"""
        {"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
         "kv_lora_rank": 4, "qk_nope_head_dim": 2, "qk_rope_head_dim": 2, "v_head_dim": 2, "q_lora_rank": null,
         "rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
         "original_max_position_embeddings": 4096, "beta_fast": 32, "beta_slow": 1}}
        """#
        let a = try DeepSeekConfig.decode(Data(hub.utf8), path: "hub.json")
        let b = try DeepSeekConfig.decode(Data(v5.utf8), path: "v5.json")
        XCTAssertEqual(a, b)
        XCTAssertEqual(a.ropeScaling?.factor, 40)
        let plain = try DeepSeekConfig.decode(Data(v5.replacingOccurrences(of: "\"rope_type\": \"yarn\"", with: "\"rope_type\": \"default\"").utf8), path: "p.json")
        XCTAssertNil(plain.ropeScaling)
        XCTAssertEqual(plain.softmaxScale, 0.5, accuracy: 1e-12)
        // Re-encoding writes the hub layout and decodes to the same config.
        XCTAssertEqual(try DeepSeekConfig.decode(JSONEncoder().encode(b), path: "re.json"), b)
    }

    func testConfigErrorsNameFileAndKey() {
        XCTAssertThrowsError(try DeepSeekConfig.decode(Data(#"{"hidden_size": 8}"#.utf8), path: "/x/config.json")) {
            XCTAssertEqual(($0 as? LocalizedError)?.errorDescription, "/x/config.json: invalid config: missing key 'vocab_size'")
        }
        XCTAssertThrowsError(try DeepSeekConfig.decode(Data(#"{"architectures": ["LlamaForCausalLM"], "vocab_size": 1, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "kv_lora_rank": 4, "qk_nope_head_dim": 2, "qk_rope_head_dim": 2, "v_head_dim": 2}"#.utf8), path: "c.json")) {
            guard case .unsupportedArchitecture = $0 as? DeepSeekModelError else { return XCTFail("\($0)") }
        }
        XCTAssertThrowsError(try DeepSeekConfig.decode(Data("{not json".utf8), path: "c.json"))
    }

    /// Found by fuzzing: a config asking for 4066 layers of 160 experts made the layout build ~2M tensor names.
    func testHostileSizesAreRefusedBeforeLayout() throws {
        let corpus = packageRoot.appendingPathComponent("Tests/Fuzz/corpus/regression-config-4066-layers")
        let data = try Data(contentsOf: corpus).dropFirst()
        XCTAssertThrowsError(try DeepSeekConfig.decode(Data(data), path: "c.json")) {
            XCTAssertTrue(($0 as? LocalizedError)?.errorDescription?.contains("num_hidden_layers = 4066 is outside 1...1024") == true, "\($0)")
        }
        var config = try DeepSeekConfig.load(directory: fixtures.appendingPathComponent("configs/DeepSeek-V2"))
        config.numHiddenLayers = 700
        XCTAssertThrowsError(try config.validate(path: "c.json"), "700 x 160 experts exceeds 100,000")
        config.numHiddenLayers = 61
        config.nRoutedExperts = 256
        XCTAssertNoThrow(try config.validate(path: "c.json"), "DeepSeek-V3-sized expert counts stay allowed")
    }

    func testCheckerOnEveryFixture() throws {
        for name in ["lite", "v2", "fp8", "trained"] {
            let dir = fixtures.appendingPathComponent(name)
            let config = try DeepSeekConfig.load(directory: dir)
            let checkpoint = try Checkpoint(directory: dir)
            let report = CheckpointChecker.check(config: config, checkpoint: checkpoint)
            XCTAssertTrue(report.isValid, "\(name): \(report.problems)")
            XCTAssertEqual(checkpoint.tensors.reduce(0) { $0 + $1.elementCount }, try ModelAccounting(config: config).totalParameters, name)
        }
    }

    func testCheckerFindsMissingWrongAndUnexpected() throws {
        let dir = fixtures.appendingPathComponent("lite")
        var config = try DeepSeekConfig.load(directory: dir)
        let checkpoint = try Checkpoint(directory: dir)
        config.vHeadDim += 1
        let wrong = CheckpointChecker.check(config: config, checkpoint: checkpoint)
        XCTAssertEqual(wrong.problems.count, 2 * config.numHiddenLayers, "kv_b_proj and o_proj of every layer")
        XCTAssertTrue(wrong.problems.allSatisfy { if case .wrongShape = $0 { return true }; return false })
        config.vHeadDim -= 1
        config.numHiddenLayers -= 1
        let extra = CheckpointChecker.check(config: config, checkpoint: checkpoint)
        XCTAssertFalse(extra.isValid)
        XCTAssertTrue(extra.problems.allSatisfy { if case .unexpectedTensor = $0 { return true }; return false })
        config.numHiddenLayers += 2
        let missing = CheckpointChecker.check(config: config, checkpoint: checkpoint)
        XCTAssertTrue(missing.problems.contains { if case .missingTensor(_, "model.layers.3.input_layernorm.weight", _) = $0 { return true }; return false })
    }

    func testMoELayerRule() throws {
        var config = try DeepSeekConfig.load(directory: fixtures.appendingPathComponent("configs/DeepSeek-V2"))
        config.numHiddenLayers = 6
        config.firstKDenseReplace = 1
        config.moeLayerFreq = 2
        XCTAssertEqual((0..<6).filter(config.isMoELayer), [2, 4])
    }

    func testKVFormatSizesForOtherDimensions() {
        // kv_lora 500 (not a multiple of 32): 16 int5 groups, the last partial one with its own scale:
        // ceil(500·5/8) = 313 + 16·2 scale bytes + 64 + 2 rope bytes = 411, padded to 416.
        XCTAssertEqual(KVCacheFormat.mlaKV6.bytesPerTokenPerLayer(kvLoraRank: 500, ropeDim: 64), 416)
        XCTAssertEqual(KVCacheFormat.fp8DSMLA.bytesPerTokenPerLayer(kvLoraRank: 64, ropeDim: 16), 64 + 4 + 32)
        XCTAssertEqual(KVCacheFormat.bf16.bytesPerTokenPerLayer(kvLoraRank: 64, ropeDim: 16), 160)
    }
}
