import Foundation

/// Why a GGUF file was refused: one case per rule, each naming where.
public enum GGUFError: Error, Equatable, Sendable, CustomStringConvertible {
    case truncated(offset: Int, needed: Int)
    case badMagic
    case unsupportedVersion(UInt32)
    case implausibleCount(what: String, count: UInt64)
    case invalidValueType(key: String, type: UInt32)
    case nestedArray(key: String)
    case tooManyArrayElements(key: String, total: UInt64)
    case invalidUTF8(offset: Int)
    case duplicateKey(String)
    case duplicateTensor(String)
    case unknownTensorType(tensor: String, type: UInt32)
    case badDimensions(tensor: String, dimensions: [UInt64])
    case misplacedTensor(tensor: String, expected: Int, actual: Int)
    case dataBeyondFile(tensor: String, end: Int, fileSize: Int)
    case badAlignment

    public var description: String {
        switch self {
        case let .truncated(offset, needed): return "truncated: \(needed) more bytes needed at offset \(offset)"
        case .badMagic: return "not a GGUF file (magic is not 'GGUF')"
        case let .unsupportedVersion(v): return "GGUF version \(v) (this reader reads version 3)"
        case let .implausibleCount(what, count): return "\(count) \(what) cannot fit in the file"
        case let .invalidValueType(key, type): return "metadata '\(key)' has unknown value type \(type)"
        case let .nestedArray(key): return "metadata '\(key)' is an array of arrays"
        case let .tooManyArrayElements(key, total):
            return "metadata arrays up to '\(key)' hold \(total) elements, more than the \(GGUFFile.arrayElementLimit) this reader keeps in memory"
        case let .invalidUTF8(offset): return "string at offset \(offset) is not UTF-8"
        case let .duplicateKey(key): return "metadata key '\(key)' appears twice"
        case let .duplicateTensor(name): return "tensor '\(name)' appears twice"
        case let .unknownTensorType(name, type): return "tensor '\(name)' has ggml type \(type), which this reader does not know"
        case let .badDimensions(name, dims): return "tensor '\(name)' has dimensions \(dims) (1 to 4, positive, the first a multiple of its type's block)"
        case let .misplacedTensor(name, expected, actual): return "tensor '\(name)' is at data offset \(actual), the layout puts it at \(expected)"
        case let .dataBeyondFile(name, end, size): return "tensor '\(name)' ends at byte \(end), past the file's \(size)"
        case .badAlignment: return "general.alignment is not a u32 power of two"
        }
    }
}

/// A parsed GGUF file: metadata in file order, tensor infos, where the data section starts.
public struct GGUFFile: Sendable {
    public let metadata: [GGUFMetadata]
    public let tensors: [GGUFTensorInfo]
    public let dataOffset: Int

    public func value(_ key: String) -> GGUFValue? { metadata.first { $0.key == key }?.value }

    /// The most elements all metadata arrays together may hold (2^24): each is a `GGUFValue` of
    /// ~32 bytes in memory, so a damaged count of a billion one-byte elements would ask for 32 GB.
    /// llama.cpp's largest vocabularies and merge lists hold a few hundred thousand.
    public static let arrayElementLimit = 1 << 24

    /// Parses and checks a whole file's bytes: the header, every tensor's place (in order, each padded to
    /// the alignment, as llama.cpp requires) and that the data section holds them.
    public init(bytes: UnsafeRawBufferPointer) throws(GGUFError) {
        var r = Reader(bytes: bytes)
        guard try r.bytes(4) == GGUFEncoder.magic else { throw .badMagic }
        let version: UInt32 = try r.integer()
        guard version == GGUFEncoder.version else { throw .unsupportedVersion(version) }
        let tensorCount: UInt64 = try r.integer(), kvCount: UInt64 = try r.integer()
        // Each entry takes at least 8 bytes of name length: more than the file holds is corrupt.
        for (what, count) in [("tensors", tensorCount), ("metadata entries", kvCount)] where count > UInt64(bytes.count / 8) {
            throw .implausibleCount(what: what, count: count)
        }
        var metadata: [GGUFMetadata] = [], keys = Set<String>()
        for _ in 0..<kvCount {
            let key = try r.string()
            guard keys.insert(key).inserted else { throw .duplicateKey(key) }
            let rawType: UInt32 = try r.integer()
            guard let type = GGUFValueType(rawValue: rawType) else { throw .invalidValueType(key: key, type: rawType) }
            metadata.append(GGUFMetadata(key, try r.value(type, key: key)))
        }
        var tensors: [GGUFTensorInfo] = [], names = Set<String>()
        for _ in 0..<tensorCount {
            let name = try r.string()
            guard names.insert(name).inserted else { throw .duplicateTensor(name) }
            let n: UInt32 = try r.integer()
            guard (1...4).contains(n) else { throw .badDimensions(tensor: name, dimensions: []) }
            var dims: [UInt64] = []
            for _ in 0..<n { dims.append(try r.integer()) }
            let rawType: UInt32 = try r.integer()
            guard let type = GGMLType(rawValue: rawType) else { throw .unknownTensorType(tensor: name, type: rawType) }
            // The element count must not overflow: multiply step by step under a bound of 2^48.
            var elements: UInt64 = 1
            for d in dims {
                let (product, overflow) = elements.multipliedReportingOverflow(by: d)
                guard d > 0, !overflow, product < 1 << 48 else { throw .badDimensions(tensor: name, dimensions: dims) }
                elements = product
            }
            guard Int(dims[0]) % type.blockSize == 0 else { throw .badDimensions(tensor: name, dimensions: dims) }
            let offset: UInt64 = try r.integer()
            tensors.append(GGUFTensorInfo(name: name, dimensions: dims.map { Int($0) }, type: type, offset: Int(clamping: offset)))
        }
        // general.alignment (a power of two) replaces the default 32, as llama.cpp reads it.
        var alignment = GGUFEncoder.alignment
        if let entry = metadata.first(where: { $0.key == "general.alignment" }) {
            guard case .uint32(let value) = entry.value, value > 0, value & (value - 1) == 0 else { throw .badAlignment }
            alignment = Int(value)
        }
        func padded(_ n: Int) -> Int { (n + alignment - 1) / alignment * alignment }
        dataOffset = padded(r.offset)
        var expected = 0
        for t in tensors {
            guard t.offset == expected else { throw .misplacedTensor(tensor: t.name, expected: expected, actual: t.offset) }
            let end = dataOffset + t.offset + t.byteCount
            guard end <= bytes.count else { throw .dataBeyondFile(tensor: t.name, end: end, fileSize: bytes.count) }
            expected += padded(t.byteCount)
        }
        self.metadata = metadata
        self.tensors = tensors
    }

    /// A bounds-checked little-endian cursor.
    struct Reader {
        let bytes: UnsafeRawBufferPointer
        var offset = 0
        /// Array elements read so far (bounded by `GGUFFile.arrayElementLimit`).
        var arrayElements: UInt64 = 0

        mutating func bytes(_ n: Int) throws(GGUFError) -> [UInt8] {
            guard n >= 0, n <= bytes.count - offset else { throw .truncated(offset: offset, needed: n) }
            defer { offset += n }
            return Array(bytes[offset..<(offset + n)])
        }

        mutating func integer<T: FixedWidthInteger>() throws(GGUFError) -> T {
            let size = MemoryLayout<T>.size
            guard size <= bytes.count - offset else { throw .truncated(offset: offset, needed: size) }
            defer { offset += size }
            return T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
        }

        mutating func string() throws(GGUFError) -> String {
            let length: UInt64 = try integer()
            guard length <= UInt64(bytes.count - offset) else { throw .truncated(offset: offset, needed: Int(clamping: length)) }
            let start = offset
            let raw = try bytes(Int(length))
            guard let text = String(validating: raw, as: UTF8.self) else { throw .invalidUTF8(offset: start) }
            return text
        }

        mutating func value(_ type: GGUFValueType, key: String) throws(GGUFError) -> GGUFValue {
            switch type {
            case .uint8: return .uint8(try integer())
            case .int8: return .int8(try integer())
            case .uint16: return .uint16(try integer())
            case .int16: return .int16(try integer())
            case .uint32: return .uint32(try integer())
            case .int32: return .int32(try integer())
            case .float32: return .float32(Float(bitPattern: try integer()))
            case .bool: return .bool(try integer() as UInt8 != 0)
            case .string: return .string(try string())
            case .uint64: return .uint64(try integer())
            case .int64: return .int64(try integer())
            case .float64: return .float64(Double(bitPattern: try integer()))
            case .array:
                let rawType: UInt32 = try integer()
                guard let elementType = GGUFValueType(rawValue: rawType) else { throw .invalidValueType(key: key, type: rawType) }
                guard elementType != .array else { throw .nestedArray(key: key) }
                let count: UInt64 = try integer()
                guard count <= UInt64(bytes.count - offset) else { throw .implausibleCount(what: "elements of '\(key)'", count: count) }
                arrayElements += count
                guard arrayElements <= UInt64(GGUFFile.arrayElementLimit) else { throw .tooManyArrayElements(key: key, total: arrayElements) }
                var elements: [GGUFValue] = []
                // Every element takes at least one byte, so the count is bounded by the file; reserve no more
                // than a modest amount up front all the same (a value is ~32 bytes in memory).
                elements.reserveCapacity(Int(min(count, 1 << 16)))
                for _ in 0..<count { elements.append(try value(elementType, key: key)) }
                return .array(elementType: elementType, elements)
            }
        }
    }
}
