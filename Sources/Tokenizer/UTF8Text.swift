/// Strict UTF-8 to Unicode scalar values, and back.
///
/// Strict as Rust's `str::from_utf8` (which `tokenizers` receives its text through): overlong
/// forms, surrogates and values past U+10FFFF are refused, with the offset of the first bad byte.
public enum UTF8Text {
    /// The scalars of `bytes`, or the byte offset of the first sequence that is not valid UTF-8.
    public static func decode(_ bytes: UnsafeBufferPointer<UInt8>) -> Result<[UInt32], InvalidOffset> {
        var scalars: [UInt32] = []
        scalars.reserveCapacity(bytes.count)
        var i = 0
        let n = bytes.count
        while i < n {
            let b0 = UInt32(bytes[i])
            if b0 < 0x80 { scalars.append(b0); i += 1; continue }
            let (length, minimum, initial): (Int, UInt32, UInt32)
            switch b0 {
            case 0xC2...0xDF: (length, minimum, initial) = (2, 0x80, b0 & 0x1F)
            case 0xE0...0xEF: (length, minimum, initial) = (3, 0x800, b0 & 0x0F)
            case 0xF0...0xF4: (length, minimum, initial) = (4, 0x10000, b0 & 0x07)
            default: return .failure(InvalidOffset(offset: i))
            }
            guard i + length <= n else { return .failure(InvalidOffset(offset: i)) }
            var value = initial
            for k in 1..<length {
                let b = UInt32(bytes[i + k])
                guard b & 0xC0 == 0x80 else { return .failure(InvalidOffset(offset: i)) }
                value = value << 6 | (b & 0x3F)
            }
            guard value >= minimum, value <= 0x10FFFF, !(0xD800...0xDFFF).contains(value) else {
                return .failure(InvalidOffset(offset: i))
            }
            scalars.append(value)
            i += length
        }
        return .success(scalars)
    }

    /// Appends the UTF-8 form of `scalar` (a valid scalar value) to `bytes`.
    @inline(__always)
    public static func append(_ scalar: UInt32, to bytes: inout [UInt8]) {
        switch scalar {
        case 0..<0x80: bytes.append(UInt8(scalar))
        case 0x80..<0x800:
            bytes.append(UInt8(0xC0 | scalar >> 6)); bytes.append(UInt8(0x80 | scalar & 0x3F))
        case 0x800..<0x10000:
            bytes.append(UInt8(0xE0 | scalar >> 12)); bytes.append(UInt8(0x80 | scalar >> 6 & 0x3F))
            bytes.append(UInt8(0x80 | scalar & 0x3F))
        default:
            bytes.append(UInt8(0xF0 | scalar >> 18)); bytes.append(UInt8(0x80 | scalar >> 12 & 0x3F))
            bytes.append(UInt8(0x80 | scalar >> 6 & 0x3F)); bytes.append(UInt8(0x80 | scalar & 0x3F))
        }
    }

    /// The scalars of a Swift string.
    public static func scalars(of text: String) -> [UInt32] { text.unicodeScalars.map(\.value) }

    /// Where a byte sequence stops being valid UTF-8.
    public struct InvalidOffset: Error, Equatable, Sendable {
        /// Byte offset of the first byte of the bad sequence.
        public let offset: Int
    }
}
