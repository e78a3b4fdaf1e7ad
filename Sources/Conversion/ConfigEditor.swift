import Foundation
import SafeTensors

/// Edits a checkpoint's `config.json` while keeping every other key, its order and its spelling.
public enum ConfigEditor {
    public static func load(_ directory: URL) throws -> JSONValue {
        let url = directory.appendingPathComponent("config.json")
        guard let data = try? FilePath.readRegularFile(url.path) else {
            throw ConversionError.invalidManifest(path: url.path, reason: "missing config.json")
        }
        return try JSONParser.parse(data)
    }

    /// `config` with `key` set to the JSON encoding of `value`.
    public static func setting<T: Encodable>(_ config: JSONValue, key: String, to value: T) throws -> JSONValue {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return config.setting(key, to: try JSONParser.parse(encoder.encode(value)))
    }

    public static func data(_ config: JSONValue) -> Data { Data((config.prettyPrinted() + "\n").utf8) }
}
