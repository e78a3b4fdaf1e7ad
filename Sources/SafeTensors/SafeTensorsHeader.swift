import Foundation

/// One tensor entry of a safetensors header.
public struct TensorInfo: Equatable, Sendable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    /// Byte range relative to the start of the data section.
    public let dataOffsets: Range<Int>

    public init(name: String, dtype: DType, shape: [Int], dataOffsets: Range<Int>) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.dataOffsets = dataOffsets
    }

    public var elementCount: Int { shape.reduce(1, *) }
    public var byteCount: Int { dataOffsets.count }
}

/// A validated safetensors header.
public struct SafeTensorsHeader: Sendable {
    /// Tensors in data order (ascending offsets).
    public let tensors: [TensorInfo]
    public let metadata: [String: String]?
    /// Byte offset of the data section in the file (8 + header length).
    public let dataStart: Int

    /// The reference implementation's limit on the header length.
    public static let maximumHeaderLength: UInt64 = 100_000_000

    /// Byte count of `shape` in `dtype`, or nil on overflow or a sub-byte tensor that does not fill whole bytes.
    public static func byteCount(shape: [Int], dtype: DType) -> Int? {
        var elements = 1
        for dim in shape {
            let (product, overflow) = elements.multipliedReportingOverflow(by: dim)
            if overflow || dim < 0 { return nil }
            elements = product
        }
        let (bits, overflow) = elements.multipliedReportingOverflow(by: dtype.bitSize)
        if overflow || bits % 8 != 0 { return nil }
        return bits / 8
    }

    /// `__metadata__`: an object of strings.
    private static func parseMetadata(_ value: JSONValue, file: String) throws -> [String: String] {
        guard case let .object(items) = value else {
            throw SafeTensorsError.invalidHeaderJSON(file: file, reason: "__metadata__ is not an object")
        }
        var map: [String: String] = [:]
        for (key, item) in items {
            guard let text = item.stringValue else {
                throw SafeTensorsError.invalidHeaderJSON(file: file, reason: "__metadata__ value for '\(key)' is not a string")
            }
            map[key] = text
        }
        return map
    }

    /// UTF-8 validity without copying the bytes (a header may be 100 MB).
    static func isValidUTF8(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var iterator = bytes.makeIterator()
        var parser = Unicode.UTF8.ForwardParser()
        while true {
            switch parser.parseScalar(from: &iterator) {
            case .valid: continue
            case .emptyInput: return true
            case .error: return false
            }
        }
    }

    /// Parses and validates a header with every rule of the reference implementation
    /// (safetensors `SafeTensors::read_metadata` and `Metadata::validate`).
    /// - Parameters:
    ///   - prefix: the first bytes of the file (at least the 8-byte length and the header).
    ///   - fileSize: the total size of the file, to check that the data tiles it exactly.
    ///   - file: the path used in error messages.
    public static func parse(prefix: UnsafeRawBufferPointer, fileSize: Int, file: String) throws -> SafeTensorsHeader {
        guard fileSize >= 8, prefix.count >= 8 else { throw SafeTensorsError.fileTooSmall(file: file, size: fileSize) }
        let length = prefix.loadUnaligned(fromByteOffset: 0, as: UInt64.self).littleEndian
        if length > maximumHeaderLength { throw SafeTensorsError.headerTooLarge(file: file, length: length) }
        guard 8 + Int(length) <= fileSize, 8 + Int(length) <= prefix.count else {
            throw SafeTensorsError.headerPastEndOfFile(file: file, length: length, fileSize: fileSize)
        }
        let headerBytes = UnsafeRawBufferPointer(rebasing: prefix[8..<(8 + Int(length))])
        if !isValidUTF8(headerBytes) { throw SafeTensorsError.headerNotUTF8(file: file) }
        guard headerBytes.first == UInt8(ascii: "{") else { throw SafeTensorsError.headerDoesNotStartWithBrace(file: file) }

        // Member by member, so a 100 MB header never exists as one JSON tree. An entry's error is
        // kept until the whole header has parsed: a JSON error anywhere is reported first, as before.
        var metadata: [String: String]?
        var tensors: [TensorInfo] = []
        var entryError: Error?
        do {
            try JSONParser.forEachMember(ofObject: headerBytes) { name, value in
                guard entryError == nil else { return }
                do {
                    if name == "__metadata__" {
                        metadata = try parseMetadata(value, file: file)
                    } else {
                        tensors.append(try parseEntry(name: name, value: value, file: file))
                    }
                } catch {
                    entryError = error
                }
            }
        } catch let error as JSONParseError {
            // Only a member of the header itself is a tensor name; a key repeated inside an entry
            // is malformed JSON of that entry.
            if let name = error.duplicateKey, error.duplicateKeyDepth == 1 {
                throw SafeTensorsError.duplicateTensor(file: file, tensor: name)
            }
            throw SafeTensorsError.invalidHeaderJSON(file: file, reason: error.description)
        }
        if let entryError { throw entryError }

        try checkTiling(&tensors, dataSize: fileSize - 8 - Int(length), file: file)
        return SafeTensorsHeader(tensors: tensors, metadata: metadata, dataStart: 8 + Int(length))
    }

    /// Validation as in the reference: sorts `tensors` by offset and checks that each starts where
    /// the previous ended, spans numel x dtype size, and that together they cover the data exactly.
    static func checkTiling(_ tensors: inout [TensorInfo], dataSize: Int, file: String) throws {
        tensors.sort { ($0.dataOffsets.lowerBound, $0.dataOffsets.upperBound, $0.name) < ($1.dataOffsets.lowerBound, $1.dataOffsets.upperBound, $1.name) }
        var cursor = 0
        var previous: String?
        for info in tensors {
            if info.dataOffsets.lowerBound < cursor, let previous {
                throw SafeTensorsError.overlappingTensors(file: file, tensor: info.name, previous: previous)
            }
            if info.dataOffsets.lowerBound > cursor {
                throw SafeTensorsError.holeBeforeTensor(file: file, tensor: info.name, gapStart: UInt64(cursor), gapEnd: UInt64(info.dataOffsets.lowerBound))
            }
            guard let expected = byteCount(shape: info.shape, dtype: info.dtype) else {
                if info.dtype.byteSize == nil, SafeTensorsHeader.elementCountChecked(info.shape) != nil {
                    throw SafeTensorsError.misalignedSubByteTensor(file: file, tensor: info.name)
                }
                throw SafeTensorsError.shapeOverflow(file: file, tensor: info.name)
            }
            if expected != info.dataOffsets.count {
                throw SafeTensorsError.byteSizeMismatch(file: file, tensor: info.name, expected: UInt64(expected), actual: UInt64(info.dataOffsets.count))
            }
            cursor = info.dataOffsets.upperBound
            previous = info.name
        }
        if cursor != dataSize {
            throw SafeTensorsError.dataNotCoveringFile(file: file, tensorEnd: UInt64(cursor), dataSize: UInt64(dataSize))
        }
    }

    static func elementCountChecked(_ shape: [Int]) -> Int? {
        var elements = 1
        for dim in shape {
            let (product, overflow) = elements.multipliedReportingOverflow(by: dim)
            if overflow { return nil }
            elements = product
        }
        return elements
    }

    private static func parseEntry(name: String, value: JSONValue, file: String) throws -> TensorInfo {
        func bad(_ reason: String) -> SafeTensorsError { .invalidTensorEntry(file: file, tensor: name, reason: reason) }
        guard case let .object(fields) = value else { throw bad("entry is not an object") }
        _ = fields  // extra fields are ignored, as by the reference deserializer
        guard let dtypeText = value["dtype"]?.stringValue else { throw bad("missing or non-string 'dtype'") }
        guard let dtype = DType(rawValue: dtypeText) else {
            throw SafeTensorsError.unknownDType(file: file, tensor: name, dtype: dtypeText)
        }
        guard case let .array(dims)? = value["shape"] else { throw bad("missing or non-array 'shape'") }
        var shape: [Int] = []
        for dim in dims {
            guard let d = dim.uint64 else { throw bad("shape holds a value that is not a non-negative integer") }
            guard d <= UInt64(Int.max) else { throw SafeTensorsError.shapeOverflow(file: file, tensor: name) }
            shape.append(Int(d))
        }
        guard case let .array(offsets)? = value["data_offsets"], offsets.count == 2,
              let begin = offsets[0].uint64, let end = offsets[1].uint64 else {
            throw bad("'data_offsets' is not a pair of non-negative integers")
        }
        guard begin <= end else { throw bad("data_offsets [\(begin), \(end)] end before they begin") }
        guard end <= UInt64(Int.max) else { throw bad("data_offsets out of range") }
        return TensorInfo(name: name, dtype: dtype, shape: shape, dataOffsets: Int(begin)..<Int(end))
    }

    /// Serializes a header the way the reference writer does: compact JSON, `__metadata__` first,
    /// tensors in data order, padded with spaces to a multiple of 8 bytes.
    public static func serialize(tensors: [TensorInfo], metadata: [String: String]?) -> [UInt8] {
        var json = "{"
        var first = true
        if let metadata, !metadata.isEmpty {
            json += "\"__metadata__\":{"
            json += metadata.keys.sorted().map { "\(CompactJSON.quoted($0)):\(CompactJSON.quoted(metadata[$0]!))" }.joined(separator: ",")
            json += "}"
            first = false
        }
        for info in tensors {
            if !first { json += "," }
            first = false
            json += CompactJSON.quoted(info.name)
            json += ":{\"dtype\":\"\(info.dtype.rawValue)\",\"shape\":[\(info.shape.map(String.init).joined(separator: ","))],"
            json += "\"data_offsets\":[\(info.dataOffsets.lowerBound),\(info.dataOffsets.upperBound)]}"
        }
        json += "}"
        var bytes = Array(json.utf8)
        let padding = (8 - bytes.count % 8) % 8
        bytes.append(contentsOf: repeatElement(UInt8(ascii: " "), count: padding))
        return bytes
    }
}
