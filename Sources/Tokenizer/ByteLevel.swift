/// GPT-2's byte-to-character table, which the `ByteLevel` pre-tokenizer and decoder share: the
/// printable bytes stand for themselves, the other 68 take U+0100 onwards in byte order.
enum ByteLevel {
    static let scalarOfByte: [UInt32] = {
        var table = [UInt32](repeating: 0, count: 256)
        var next: UInt32 = 256
        for b in 0..<256 {
            if (33...126).contains(b) || (161...172).contains(b) || (174...255).contains(b) {
                table[b] = UInt32(b)
            } else {
                table[b] = next
                next += 1
            }
        }
        return table
    }()

    /// The byte each table character stands for; -1 for every other scalar below U+0144.
    static let byteOfScalar: [Int16] = {
        var table = [Int16](repeating: -1, count: 0x144)
        for (b, v) in scalarOfByte.enumerated() { table[Int(v)] = Int16(b) }
        return table
    }()

    /// The `ByteLevel` decoder: a token whose every character is in the table becomes those bytes,
    /// any other token its own UTF-8; the bytes of all tokens are then read as UTF-8, invalid
    /// sequences replaced by U+FFFD (Rust's `String::from_utf8_lossy`).
    static func decode(_ tokens: [String]) -> [UInt8] {
        var bytes: [UInt8] = []
        for token in tokens {
            let mark = bytes.count
            var allMapped = true
            for scalar in token.unicodeScalars {
                let v = Int(scalar.value)
                guard v < byteOfScalar.count, byteOfScalar[v] >= 0 else { allMapped = false; break }
                bytes.append(UInt8(byteOfScalar[v]))
            }
            if !allMapped {
                bytes.removeSubrange(mark...)
                bytes += Array(token.utf8)
            }
        }
        return bytes
    }
}
