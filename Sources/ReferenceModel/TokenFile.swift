import DeepSeekModel
import Foundation
import SafeTensors

/// `{"tokens": [[id, …], …]}`: equal-length token sequences for the forward pass.
public enum TokenFile {
    /// The most memory one forward pass may ask for its attention scores or its logits, each (8 GiB,
    /// a third of a 24 GB machine): past it the allocation would fail or thrash instead of answering.
    public static let memoryBudget = 8 << 30

    public static func load(_ url: URL) throws -> [[Int]] {
        guard let data = try? FilePath.readRegularFile(url.path) else {
            throw ReferenceModelError.invalidTokens(path: url.path, reason: "cannot read the file")
        }
        return try parse(data, path: url.path)
    }

    /// Parses a tokens file's text; every error names `path`.
    public static func parse(_ data: Data, path: String) throws -> [[Int]] {
        let root: JSONValue
        do { root = try JSONParser.parse(data) } catch let error as JSONParseError {
            if let key = error.duplicateKey { throw ReferenceModelError.duplicateTokensKey(path: path, key: key) }
            throw ReferenceModelError.invalidTokens(path: path, reason: "not valid JSON (\(error))")
        }
        guard case let .array(rows)? = root["tokens"], !rows.isEmpty else {
            throw ReferenceModelError.invalidTokens(path: path, reason: "expected {\"tokens\": [[id, …], …]} with at least one sequence")
        }
        var tokens: [[Int]] = []
        for row in rows {
            guard case let .array(ids) = row, !ids.isEmpty else {
                throw ReferenceModelError.invalidTokens(path: path, reason: "each sequence must be a non-empty array of token ids")
            }
            var sequence: [Int] = []
            for id in ids {
                guard let value = id.uint64, value <= UInt64(Int32.max) else {
                    throw ReferenceModelError.invalidTokens(path: path, reason: "token ids must be non-negative integers")
                }
                sequence.append(Int(value))
            }
            tokens.append(sequence)
        }
        guard tokens.allSatisfy({ $0.count == tokens[0].count }) else {
            throw ReferenceModelError.invalidTokens(path: path, reason: "sequences must all have the same length")
        }
        return tokens
    }

    /// Checks `tokens` (from `path`) against a model before its forward pass: equal non-zero lengths,
    /// every id in the vocabulary, no sequence past `max_position_embeddings`, and attention scores
    /// (batch × heads × seq² f32, what an engine holds for full attention; we hold one head's),
    /// logits (batch × seq × vocab f32) and a layer's widest activation (batch × seq ×
    /// `widestActivation` f32) each within `memoryBudget`.
    public static func check(_ tokens: [[Int]], path: String, config: DeepSeekConfig) throws {
        let batch = tokens.count, seq = tokens.first?.count ?? 0
        guard batch > 0, seq > 0, tokens.allSatisfy({ $0.count == seq }) else {
            throw ReferenceModelError.invalidTokens(path: path, reason: "need at least one sequence, all of the same non-zero length")
        }
        if let limit = config.maxPositionEmbeddings, seq > limit {
            throw ReferenceModelError.sequenceTooLong(path: path, length: seq, maxPositions: limit)
        }
        let width = widestActivation(config)
        let sizes = [("attention scores (\(batch) x \(config.numAttentionHeads) heads x \(seq)² f32)", [batch, config.numAttentionHeads, seq, seq, 4]),
                     ("logits (\(batch) x \(seq) x \(config.vocabSize) f32)", [batch, seq, config.vocabSize, 4]),
                     ("activations (\(batch) x \(seq) x \(width) f32, a layer's widest per-token array)", [batch, seq, width, 4])]
        for (what, factors) in sizes {
            let bytes = try? CheckedSize.product(factors, of: what)
            if bytes.map({ $0 > memoryBudget }) ?? true {
                throw ReferenceModelError.tokensTooLarge(path: path, what: what, bytes: bytes.map(String.init) ?? "more than 2^63", budget: memoryBudget)
            }
        }
        for row in tokens { for id in row where id < 0 || id >= config.vocabSize {
            throw ReferenceModelError.tokenOutOfVocabulary(path: path, id: id, vocabSize: config.vocabSize)
        } }
    }

    /// The widest array a layer holds per token, in f32 elements: the residual stream (twice, as
    /// the MTP layer joins two), the dense MLP's gate and up, the compressed query, the queries in
    /// either form (per head qk_head_dim, or kv_lora + rope once absorbed), kv_a's output,
    /// kv_b_proj's keys and values, or the shared experts' gate and up. A config's dimensions are
    /// at most 2^24 each, so these products cannot overflow.
    static func widestActivation(_ config: DeepSeekConfig) -> Int {
        let heads = config.numAttentionHeads, latent = config.kvLoraRank + config.qkRopeHeadDim
        return [2 * config.hiddenSize, 2 * config.intermediateSize, config.qLoraRank ?? 0, heads * config.qkHeadDim, heads * latent, latent,
                heads * (config.qkNopeHeadDim + config.vHeadDim), 2 * config.moeIntermediateSize * max(config.nSharedExperts ?? 0, 1)].max()!
    }

    /// A deterministic sample (two sequences of 32 ids) when neither the user nor the fixture gives tokens.
    public static func deterministicSample(vocabSize: Int, batch: Int = 2, length: Int = 32) -> [[Int]] {
        var state: UInt64 = 0x2545_F491_4F6C_DD1D
        return (0..<batch).map { _ in
            (0..<length).map { _ in
                state = state &* 6364136223846793005 &+ 1442695040888963407
                return Int((state >> 33) % UInt64(vocabSize))
            }
        }
    }
}
