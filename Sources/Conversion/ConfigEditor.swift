import DeepSeekModel
import Foundation
import SafeTensors

/// Edits a checkpoint's `config.json` while keeping every other key, its order and its spelling.
public enum ConfigEditor {
    /// The `config.json` of `directory` as a JSON tree; errors name the file.
    public static func load(_ directory: URL) throws -> JSONValue {
        let url = directory.appendingPathComponent("config.json")
        guard let data = try? FilePath.readRegularFile(url.path) else {
            throw ConversionError.invalidManifest(path: url.path, reason: "missing config.json")
        }
        // The parser's errors know the byte, not the file: name it, as every error must.
        do { return try JSONParser.parse(data) } catch let error as JSONParseError {
            if let key = error.duplicateKey { throw DeepSeekModelError.duplicateKey(path: url.path, key: key) }
            throw DeepSeekModelError.invalidConfig(path: url.path, reason: "not valid JSON (\(error))")
        }
    }

    /// `config` with `key` set to the JSON encoding of `value`.
    public static func setting<T: Encodable>(_ config: JSONValue, key: String, to value: T) throws -> JSONValue {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return config.setting(key, to: try JSONParser.parse(encoder.encode(value)))
    }

    public static func data(_ config: JSONValue) -> Data { Data((config.prettyPrinted() + "\n").utf8) }
}
