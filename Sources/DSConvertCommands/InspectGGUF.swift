import CLI
import Foundation
import GGUF
import SafeTensors

/// `dsconvert inspect FILE.gguf`: a GGUF file's header, checked (Schemas/inspect-gguf.schema.json for --json).
struct GGUFInspectReport: Encodable {
    struct TypeTotal: Encodable {
        let type: String
        let tensors: Int
        let bytes: Int
    }
    struct Tensor: Encodable {
        let name: String
        let type: String
        /// ggml order: the contiguous axis first.
        let dimensions: [Int]
        let offset: Int
        let bytes: Int
    }

    let path: String
    let version: Int
    let architecture: String?
    let name: String?
    let fileType: Int?
    let metadataEntries: Int
    let vocabularySize: Int?
    let tensorCount: Int
    let tensorBytes: Int
    let fileBytes: Int
    let types: [TypeTotal]
    let metadataKeys: [String]
    let tensors: [Tensor]?

    enum CodingKeys: String, CodingKey {
        case path, version, architecture, name
        case fileType = "file_type"
        case metadataEntries = "metadata_entries"
        case vocabularySize = "vocabulary_size"
        case tensorCount = "tensor_count"
        case tensorBytes = "tensor_bytes"
        case fileBytes = "file_bytes"
        case types
        case metadataKeys = "metadata_keys"
        case tensors
    }

    init(path: String, file: GGUFFile, fileBytes: Int, listTensors: Bool) {
        func string(_ key: String) -> String? { if case .string(let s)? = file.value(key) { return s }; return nil }
        self.path = path
        version = Int(GGUFEncoder.version)
        architecture = string("general.architecture")
        name = string("general.name")
        if case .uint32(let t)? = file.value("general.file_type") { fileType = Int(t) } else { fileType = nil }
        metadataEntries = file.metadata.count
        if case .array(_, let tokens)? = file.value("tokenizer.ggml.tokens") { vocabularySize = tokens.count } else { vocabularySize = nil }
        tensorCount = file.tensors.count
        tensorBytes = file.tensors.reduce(0) { $0 + $1.byteCount }
        self.fileBytes = fileBytes
        types = Dictionary(grouping: file.tensors, by: \.type.name).map { TypeTotal(type: $0.key, tensors: $0.value.count, bytes: $0.value.reduce(0) { $0 + $1.byteCount }) }
            .sorted { $0.type < $1.type }
        metadataKeys = file.metadata.map(\.key)
        tensors = listTensors ? file.tensors.map { Tensor(name: $0.name, type: $0.type.name, dimensions: $0.dimensions, offset: $0.offset, bytes: $0.byteCount) } : nil
    }

    func text() -> String {
        var lines = ["\(Terminal.escaped(path)): GGUF v\(version), \(architecture.map(Terminal.escaped) ?? "no architecture")\(name.map { " (\(Terminal.escaped($0)))" } ?? ""), file type \(fileType.map(String.init) ?? "-")",
                     "  metadata        \(metadataEntries) entries\(vocabularySize.map { ", vocabulary \($0) tokens" } ?? "")",
                     "  tensors         \(tensorCount), \(tensorBytes) bytes of \(fileBytes)"]
        for t in types { lines.append("    \(t.type.padding(toLength: 6, withPad: " ", startingAt: 0)) \(t.tensors) tensors, \(t.bytes) bytes") }
        for t in tensors ?? [] { lines.append("  \(Terminal.escaped(t.name))  \(t.type)  \(t.dimensions)  offset \(t.offset)") }
        return lines.joined(separator: "\n")
    }

    /// Reads `path`'s header from a mapping (tensor data is not touched).
    static func load(path: String, listTensors: Bool) throws -> GGUFInspectReport {
        let mapped = try MappedFile(path: path)
        do {
            return GGUFInspectReport(path: path, file: try GGUFFile(bytes: mapped.bytes), fileBytes: mapped.size, listTensors: listTensors)
        } catch {
            throw InvalidGGUF(path: path, error: error)
        }
    }

    /// A GGUF file the reader refused: one line naming the file and the rule.
    struct InvalidGGUF: LocalizedError {
        let path: String
        let error: GGUFError
        var errorDescription: String? { "\(path): \(error)" }
    }
}
