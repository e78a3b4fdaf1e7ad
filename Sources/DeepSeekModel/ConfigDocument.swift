import Foundation
import SafeTensors

/// A checkpoint's `config.json`: the verbatim JSON (every key as written, in its order, including the
/// ones this toolchain does not read) and its typed view, edited together so they never disagree — with
/// one exception, `matching`: a checkpoint holding none of the MTP layers the JSON declares has a typed
/// view without them, while the JSON (which stages write through) keeps its count.
///
/// Stages change a model by setting keys here (`quantization_config`, `dsconvert_absorption`, …):
/// the typed view is decoded again from the edited JSON, so what a stage writes is what the next
/// stage, and every engine, reads.
public struct ConfigDocument: Sendable {
    /// The JSON as it will be written.
    public private(set) var json: JSONValue
    /// The typed view of `json`.
    public internal(set) var model: DeepSeekConfig
    /// The file it came from, for messages.
    public let path: String
    /// The checkpoint holds none of the MTP layers the JSON declares (`matching`): the typed view, after
    /// every edit too, expects none.
    var withoutMTPWeights = false

    /// Reads and checks `config.json` in a checkpoint directory; errors name the file.
    public static func load(directory: URL) throws -> ConfigDocument {
        let url = directory.appendingPathComponent("config.json")
        let data: Data
        do { data = try FilePath.readRegularFile(url.path) } catch {
            throw DeepSeekModelError.missingConfig(path: url.path)
        }
        return try ConfigDocument(data: data, path: url.path)
    }

    /// Parses `data` (our parser: duplicate keys are refused) and decodes and checks its typed view.
    public init(data: Data, path: String) throws {
        self.path = path
        model = try DeepSeekConfig.decode(data, path: path)
        do { json = try JSONParser.parse(data) } catch let error as JSONParseError {
            throw DeepSeekModelError.invalidConfig(path: path, reason: "not valid JSON (\(error))")
        }
    }

    /// The document with `key` set to the JSON encoding of `value` (keys sorted, as every record we write).
    public func setting<T: Encodable>(_ key: String, to value: T) throws -> ConfigDocument {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return try replacing(json.setting(key, to: try JSONParser.parse(encoder.encode(value))))
    }

    /// The document without `key`.
    public func removing(_ key: String) throws -> ConfigDocument {
        guard case let .object(entries) = json else { return self }
        return try replacing(.object(entries.filter { $0.0 != key }))
    }

    private func replacing(_ edited: JSONValue) throws -> ConfigDocument {
        var document = try ConfigDocument(data: Self.data(edited), path: path)
        if withoutMTPWeights {
            document.withoutMTPWeights = true
            document.model.numNextnPredictLayers = 0
        }
        return document
    }

    /// The file's bytes: the JSON pretty-printed, with a final newline.
    public var data: Data { Self.data(json) }

    public static func data(_ json: JSONValue) -> Data { Data((json.prettyPrinted() + "\n").utf8) }
}
