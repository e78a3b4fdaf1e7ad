/// The GGUF v3 container (llama.cpp's `gguf.h`): magic "GGUF", version 3, tensor count (u64), metadata
/// count (u64), the metadata, the tensor infos, zero padding to the alignment; then the data section,
/// every tensor's bytes followed by zero padding to the alignment. All little-endian; strings are a u64
/// byte count and UTF-8 without a terminator.
public enum GGUFEncoder {
    public static let magic: [UInt8] = Array("GGUF".utf8)
    public static let version: UInt32 = 3
    /// llama.cpp's default alignment, used when `general.alignment` is absent (we never write that key).
    public static let alignment = 32

    /// Assigns data offsets (each tensor padded to the alignment, in order).
    public static func layout(_ tensors: [GGUFTensorInfo]) -> [GGUFTensorInfo] {
        var offset = 0
        return tensors.map { t in
            var placed = t
            placed.offset = offset
            offset += padded(t.byteCount)
            return placed
        }
    }

    /// The header: everything before the data section, padding included.
    public static func header(metadata: [GGUFMetadata], tensors: [GGUFTensorInfo]) -> [UInt8] {
        var out = magic
        append(version, to: &out)
        append(UInt64(tensors.count), to: &out)
        append(UInt64(metadata.count), to: &out)
        for entry in metadata {
            append(string: entry.key, to: &out)
            append(entry.value.type.rawValue, to: &out)
            append(value: entry.value, to: &out)
        }
        for t in tensors {
            append(string: t.name, to: &out)
            append(UInt32(t.dimensions.count), to: &out)
            for d in t.dimensions { append(UInt64(d), to: &out) }
            append(t.type.rawValue, to: &out)
            append(UInt64(t.offset), to: &out)
        }
        out += [UInt8](repeating: 0, count: padded(out.count) - out.count)
        return out
    }

    public static func padded(_ n: Int) -> Int { (n + alignment - 1) / alignment * alignment }

    static func append<T: FixedWidthInteger>(_ v: T, to out: inout [UInt8]) {
        withUnsafeBytes(of: v.littleEndian) { out += $0 }
    }

    static func append(string: String, to out: inout [UInt8]) {
        let bytes = Array(string.utf8)
        append(UInt64(bytes.count), to: &out)
        out += bytes
    }

    static func append(value: GGUFValue, to out: inout [UInt8]) {
        switch value {
        case .uint8(let v): append(v, to: &out)
        case .int8(let v): append(v, to: &out)
        case .uint16(let v): append(v, to: &out)
        case .int16(let v): append(v, to: &out)
        case .uint32(let v): append(v, to: &out)
        case .int32(let v): append(v, to: &out)
        case .float32(let v): append(v.bitPattern, to: &out)
        case .bool(let v): out.append(v ? 1 : 0)
        case .string(let v): append(string: v, to: &out)
        case .uint64(let v): append(v, to: &out)
        case .int64(let v): append(v, to: &out)
        case .float64(let v): append(v.bitPattern, to: &out)
        case .array(let type, let elements):
            append(type.rawValue, to: &out)
            append(UInt64(elements.count), to: &out)
            for e in elements { append(value: e, to: &out) }
        }
    }
}
