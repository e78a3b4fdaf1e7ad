import Foundation
import SafeTensors

/// `dsconvert.json`: the record every output directory carries of how it was made.
///
/// Stages append: converting a dsconvert output carries its stages forward and adds the new one.
public struct ConversionManifest: Codable, Equatable, Sendable {
    /// What made an output: the stages that write one (`generate`: the benchmark's synthetic
    /// checkpoints; `convert` records its stages one by one, and is accepted as the schema lists it).
    /// Decoded once, so a manifest naming anything else is refused where it is read.
    public enum StageName: String, Codable, Sendable, CaseIterable {
        case reshard, absorb, quantize, shard, convert, export, generate
    }

    public struct Stage: Codable, Equatable, Sendable {
        public var stage: StageName
        public var toolVersion: String
        public var options: [String: String]
        public var input: String

        enum CodingKeys: String, CodingKey {
            case stage
            case toolVersion = "tool_version"
            case options
            case input
        }

        public init(stage: StageName, options: [String: String], input: String) {
            self.stage = stage
            self.toolVersion = ConversionManifest.toolVersion
            self.options = options
            self.input = input
        }
    }

    public typealias FileRecord = SafeTensors.FileRecord

    public static let fileName = "dsconvert.json"
    public static let toolVersion = "0.1.0"
    public static let formatName = "dsconvert-manifest"

    public var format: String = ConversionManifest.formatName
    public var version: Int = 1
    public var stages: [Stage]
    /// Every weight file written (safetensors, or GGUF for export), with its checksum (what `--resume` and users verify against).
    public var files: [FileRecord]
    /// The original checkpoint's layout this output's default shard size followed (carried through stages).
    public var layoutBasis: ShardSize.Basis?

    enum CodingKeys: String, CodingKey {
        case format, version, stages, files
        case layoutBasis = "layout_basis"
    }

    public init(stages: [Stage], files: [FileRecord], layoutBasis: ShardSize.Basis? = nil) {
        self.stages = stages
        self.files = files
        self.layoutBasis = layoutBasis
    }

    /// The manifest of a dsconvert output directory, if it has one.
    public static func load(directory: URL) throws -> ConversionManifest? {
        let url = directory.appendingPathComponent(fileName)
        guard FileManager.default.fileExists(atPath: url.path) else { return nil }
        let manifest: ConversionManifest
        do {
            manifest = try JSONDecoder().decode(ConversionManifest.self, from: FilePath.readRegularFile(url.path))
        } catch {
            throw ConversionError.invalidManifest(path: url.path, reason: "\(error)")
        }
        // Its stages are carried into every output made from it: one this tool would not write is
        // refused here (found by an audit: a foreign record passed through into outputs that then
        // failed the manifest schema).
        guard manifest.format == formatName, manifest.version == 1 else {
            throw ConversionError.invalidManifest(path: url.path, reason: "format '\(manifest.format)' version \(manifest.version), not \(formatName) version 1")
        }
        return manifest
    }

    public func encoded() throws -> Data {
        try PrettyJSON.encode(self)
    }
}
