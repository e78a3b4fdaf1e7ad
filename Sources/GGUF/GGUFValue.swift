/// A GGUF metadata value (the container's typed key/value pairs).
public enum GGUFValue: Equatable, Sendable {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16), uint32(UInt32), int32(Int32)
    case float32(Float), bool(Bool), string(String), uint64(UInt64), int64(Int64), float64(Double)
    /// Elements of one type (`elementType`); arrays of arrays are not part of the format llama.cpp reads.
    case array(elementType: GGUFValueType, [GGUFValue])

    public var type: GGUFValueType {
        switch self {
        case .uint8: return .uint8
        case .int8: return .int8
        case .uint16: return .uint16
        case .int16: return .int16
        case .uint32: return .uint32
        case .int32: return .int32
        case .float32: return .float32
        case .bool: return .bool
        case .string: return .string
        case .array: return .array
        case .uint64: return .uint64
        case .int64: return .int64
        case .float64: return .float64
        }
    }

    /// An array of strings.
    public static func strings(_ values: [String]) -> GGUFValue { .array(elementType: .string, values.map(GGUFValue.string)) }
    /// An array of int32 (as gguf-py writes Python ints, e.g. token types).
    public static func int32s(_ values: [Int32]) -> GGUFValue { .array(elementType: .int32, values.map(GGUFValue.int32)) }
}

/// GGUF's value type ids.
public enum GGUFValueType: UInt32, Sendable {
    case uint8 = 0, int8 = 1, uint16 = 2, int16 = 3, uint32 = 4, int32 = 5, float32 = 6, bool = 7
    case string = 8, array = 9, uint64 = 10, int64 = 11, float64 = 12
}

/// One metadata entry, in file order.
public struct GGUFMetadata: Equatable, Sendable {
    public var key: String
    public var value: GGUFValue
    public init(_ key: String, _ value: GGUFValue) {
        self.key = key
        self.value = value
    }
}

/// One tensor's entry in the header: `dimensions` in ggml order (the innermost, contiguous axis first:
/// the reverse of the safetensors/numpy shape), and its offset within the data section.
public struct GGUFTensorInfo: Equatable, Sendable {
    public var name: String
    public var dimensions: [Int]
    public var type: GGMLType
    public var offset: Int

    public init(name: String, dimensions: [Int], type: GGMLType, offset: Int = 0) {
        self.name = name
        self.dimensions = dimensions
        self.type = type
        self.offset = offset
    }

    public var elements: Int { dimensions.reduce(1, *) }
    public var byteCount: Int { type.bytes(elements: elements) }
}
