// libFuzzer entry point for the parsers that read untrusted bytes and for what is computed from
// their numbers: the safetensors header, the sharded index, config.json (decoder, validator, and
// every size the accounting, the absorb cost table, the FP8 block scales and the placement derive
// from it), tokens.json (loader and the length, vocabulary and memory checks) and a GGUF file (the
// checked reader `inspect FILE.gguf` uses, and every tensor's extent it accepts). Built by
// scripts/fuzz.sh (swiftc -sanitize=fuzzer,address); the first byte selects the target, the rest is
// its input (see `selector`). Every input must end in a value or a thrown error, never a trap, a leak or a hang.
import DeepSeekModel
import Foundation
import GGUF
import Numerics
import SafeTensors
import ReferenceModel

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzParsers(_ start: UnsafeRawPointer?, _ count: Int) -> CInt {
    guard let start, count > 0 else { return 0 }
    // 3 selects tokens.json and 4 a GGUF file; every other first byte keeps its earlier meaning
    // (modulo 3), so the committed corpus still drives the parsers it was found for.
    let first = start.load(as: UInt8.self)
    let selector = first == 3 || first == 4 ? Int(first) : Int(first % 3)
    let body = UnsafeRawBufferPointer(start: start + 1, count: count - 1)
    switch selector {
    case 0:
        // As a whole file: the 8-byte length, the header, the data.
        if let header = try? SafeTensorsHeader.parse(prefix: body, fileSize: body.count, file: "fuzz.safetensors") {
            for info in header.tensors { precondition(info.dataOffsets.upperBound <= body.count - header.dataStart) }
            _ = SafeTensorsHeader.serialize(tensors: header.tensors, metadata: header.metadata)
        }
    case 1:
        _ = try? Checkpoint.parseIndex(Data(body), file: "fuzz/model.safetensors.index.json")
    case 2:
        if let config = try? DeepSeekConfig.decode(Data(body), path: "fuzz/config.json") { exerciseSizes(config) }
    case 3:
        if let tokens = try? TokenFile.parse(Data(body), path: "fuzz/tokens.json") { exerciseTokens(tokens) }
    default:
        if let file = try? GGUFFile(bytes: body) {
            for t in file.tensors { precondition(file.dataOffset + t.offset + t.byteCount <= body.count, "\(t.name) beyond the file") }
        }
    }
    return 0
}

/// Everything computed from an accepted config's numbers: the validator promises none of it traps.
private func exerciseSizes(_ config: DeepSeekConfig) {
    // The validator ran these with checked arithmetic; accepted configs must not throw here.
    precondition((try? ModelAccounting(config: config)) != nil, "accounting overflowed on an accepted config")
    let cost = try? AbsorptionCost(config: config)
    precondition(cost != nil, "absorb cost overflowed on an accepted config")
    for context in [1, 4096, 163_840] { _ = try? cost!.table(contextLength: context) }
    let block = config.quantization?.block ?? 128
    let quantizer = FP8BlockQuantizer(block: block)
    for t in config.expectedTensors() where t.shape.count >= 2 {
        let shape = QuantizationConfig.scaleShape(of: t.shape, block: block)
        precondition(shape.suffix(2) == quantizer.scaleShape(rows: t.shape[t.shape.count - 2], cols: t.shape[t.shape.count - 1])[...])
        precondition((try? CheckedSize.product(shape, of: "scales")) != nil)
    }
    _ = config.softmaxScale
    _ = RotaryEmbedding(config: config).table(position: min(config.maxPositionEmbeddings ?? 1, 4096) - 1)
    if let record = config.placement {
        for e in 0..<record.placement.experts { _ = record.placement.device(ofExpert: e) }
        for d in 0..<record.placement.devices { _ = record.placement.range(device: d) }
    }
    for devices in [1, 2, 3, 8] {
        if let plan = try? ExpertPlacement.plan(config: config, devices: devices) {
            for d in 0..<plan.devices { _ = plan.range(device: d) }
        }
    }
    _ = try? TokenFile.check(TokenFile.deterministicSample(vocabSize: config.vocabSize, batch: 2, length: 8), path: "fuzz/tokens.json", config: config)
}

/// The loader's output through the checks the forward pass runs first, against two models.
private func exerciseTokens(_ tokens: [[Int]]) {
    for config in FuzzModels.configs {
        _ = try? TokenFile.check(tokens, path: "fuzz/tokens.json", config: config)
    }
}

private enum FuzzModels {
    /// A V2-Lite-like config and one with a short context, so the position limit is reachable.
    static let configs: [DeepSeekConfig] = [163_840, 64].map { positions in
        let json = """
        {"vocab_size": 320, "hidden_size": 64, "intermediate_size": 160, "moe_intermediate_size": 32, "num_hidden_layers": 2,
         "num_attention_heads": 4, "q_lora_rank": null, "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8,
         "v_head_dim": 12, "n_routed_experts": 8, "n_shared_experts": 2, "num_experts_per_tok": 2, "first_k_dense_replace": 1,
         "max_position_embeddings": \(positions)}
        """
        return try! DeepSeekConfig.decode(Data(json.utf8), path: "fuzz model")
    }
}
