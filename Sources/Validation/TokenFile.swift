import Foundation
import SafeTensors

/// `{"tokens": [[id, …], …]}`: equal-length token sequences for the forward pass.
public enum TokenFile {
    public static func load(_ url: URL) throws -> [[Int]] {
        guard let data = try? FilePath.readRegularFile(url.path) else {
            throw ValidationError.invalidTokens(path: url.path, reason: "cannot read the file")
        }
        let root: JSONValue
        do { root = try JSONParser.parse(data) } catch {
            throw ValidationError.invalidTokens(path: url.path, reason: "not valid JSON (\(error))")
        }
        guard case let .array(rows)? = root["tokens"], !rows.isEmpty else {
            throw ValidationError.invalidTokens(path: url.path, reason: "expected {\"tokens\": [[id, …], …]} with at least one sequence")
        }
        var tokens: [[Int]] = []
        for row in rows {
            guard case let .array(ids) = row, !ids.isEmpty else {
                throw ValidationError.invalidTokens(path: url.path, reason: "each sequence must be a non-empty array of token ids")
            }
            var sequence: [Int] = []
            for id in ids {
                guard let value = id.uint64, value <= UInt64(Int32.max) else {
                    throw ValidationError.invalidTokens(path: url.path, reason: "token ids must be non-negative integers")
                }
                sequence.append(Int(value))
            }
            tokens.append(sequence)
        }
        guard tokens.allSatisfy({ $0.count == tokens[0].count }) else {
            throw ValidationError.invalidTokens(path: url.path, reason: "sequences must all have the same length")
        }
        return tokens
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
