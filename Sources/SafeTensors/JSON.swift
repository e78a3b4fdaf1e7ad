import Foundation

/// A JSON value that keeps object keys in document order and refuses duplicate keys.
///
/// `JSONSerialization` silently keeps one of two entries with the same key; the safetensors
/// reference implementation rejects such a header, so the header parser needs its own reader.
public enum JSONValue: Equatable, Sendable {
    case null
    case bool(Bool)
    case number(String)
    case string(String)
    case array([JSONValue])
    case object([(String, JSONValue)])

    public static func == (lhs: JSONValue, rhs: JSONValue) -> Bool {
        switch (lhs, rhs) {
        case (.null, .null): return true
        case let (.bool(a), .bool(b)): return a == b
        case let (.number(a), .number(b)): return a == b
        case let (.string(a), .string(b)): return a == b
        case let (.array(a), .array(b)): return a == b
        case let (.object(a), .object(b)):
            return a.count == b.count && zip(a, b).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: return false
        }
    }

    /// The value for `key` when this is an object.
    public subscript(key: String) -> JSONValue? {
        if case let .object(entries) = self { return entries.first { $0.0 == key }?.1 }
        return nil
    }

    /// An unsigned integer literal (no sign, fraction or exponent), as safetensors shapes and offsets are.
    public var uint64: UInt64? {
        if case let .number(text) = self, !text.isEmpty, text.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }) {
            return UInt64(text)
        }
        return nil
    }

    public var stringValue: String? {
        if case let .string(s) = self { return s }
        return nil
    }
}

/// Why a JSON text was refused, with the byte offset where reading stopped.
public struct JSONParseError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public let offset: Int
    /// The key, when the error is a duplicate key (callers name it in their own errors).
    public var duplicateKey: String? = nil
    /// For a duplicate key, how deep its object is nested: 1 for the document's own members (a
    /// safetensors header's tensor names), more for a key inside one of their values.
    public var duplicateKeyDepth = 0
    public var description: String { "\(message) at byte \(offset)" }
}

/// A strict RFC 8259 reader over UTF-8 bytes.
public struct JSONParser {
    private let bytes: UnsafeRawBufferPointer
    private var position = 0
    private var depth = 0
    private static let maximumDepth = 128

    /// Parses one JSON value; trailing white space is allowed (safetensors pads headers with spaces).
    public static func parse(_ bytes: UnsafeRawBufferPointer) throws -> JSONValue {
        var parser = JSONParser(bytes: bytes)
        parser.skipWhitespace()
        let value = try parser.parseValue()
        parser.skipWhitespace()
        if parser.position != bytes.count { throw parser.error("unexpected trailing characters") }
        return value
    }

    public static func parse(_ data: Data) throws -> JSONValue {
        try data.withUnsafeBytes { try parse($0) }
    }

    /// Parses a JSON object member by member, handing each to `body` as it is read, so only one
    /// member's tree exists at a time (a 100 MB safetensors header would otherwise take ~1 GB).
    /// Same rules and errors as `parse`: duplicate keys, depth, trailing characters.
    public static func forEachMember(ofObject bytes: UnsafeRawBufferPointer, _ body: (String, JSONValue) throws -> Void) throws {
        var parser = JSONParser(bytes: bytes)
        parser.skipWhitespace()
        guard parser.position < bytes.count, bytes[parser.position] == UInt8(ascii: "{") else { throw parser.error("expected an object") }
        try parser.parseMembers(body)
        parser.skipWhitespace()
        if parser.position != bytes.count { throw parser.error("unexpected trailing characters") }
    }

    private init(bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    private func error(_ message: String) -> JSONParseError { JSONParseError(message: message, offset: position) }

    private mutating func skipWhitespace() {
        while position < bytes.count {
            switch bytes[position] {
            case 0x20, 0x09, 0x0A, 0x0D: position += 1
            default: return
            }
        }
    }

    private mutating func parseValue() throws -> JSONValue {
        guard position < bytes.count else { throw error("unexpected end of JSON") }
        switch bytes[position] {
        case UInt8(ascii: "{"): return try parseObject()
        case UInt8(ascii: "["): return try parseArray()
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): try expectLiteral("true"); return .bool(true)
        case UInt8(ascii: "f"): try expectLiteral("false"); return .bool(false)
        case UInt8(ascii: "n"): try expectLiteral("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try parseNumber()
        default: throw error("unexpected character")
        }
    }

    private mutating func expectLiteral(_ literal: StaticString) throws {
        let count = literal.utf8CodeUnitCount
        guard position + count <= bytes.count else { throw error("unexpected end of JSON") }
        for i in 0..<count where bytes[position + i] != literal.utf8Start[i] { throw error("invalid literal") }
        position += count
    }

    private mutating func enter() throws {
        depth += 1
        if depth > Self.maximumDepth { throw error("nesting deeper than \(Self.maximumDepth)") }
    }

    private mutating func parseObject() throws -> JSONValue {
        var entries: [(String, JSONValue)] = []
        try parseMembers { entries.append(($0, $1)) }
        return .object(entries)
    }

    /// The members of the object at `position` (its opening brace), in order.
    private mutating func parseMembers(_ body: (String, JSONValue) throws -> Void) throws {
        try enter()
        defer { depth -= 1 }
        position += 1
        var seen = Set<String>()
        skipWhitespace()
        if position < bytes.count, bytes[position] == UInt8(ascii: "}") { position += 1; return }
        while true {
            skipWhitespace()
            guard position < bytes.count, bytes[position] == UInt8(ascii: "\"") else { throw error("expected a string key") }
            let keyOffset = position
            let key = try parseString()
            if !seen.insert(key).inserted {
                throw JSONParseError(message: "duplicate key \"\(key)\"", offset: keyOffset, duplicateKey: key, duplicateKeyDepth: depth)
            }
            skipWhitespace()
            guard position < bytes.count, bytes[position] == UInt8(ascii: ":") else { throw error("expected ':'") }
            position += 1
            skipWhitespace()
            try body(key, try parseValue())
            skipWhitespace()
            guard position < bytes.count else { throw error("unexpected end of JSON") }
            if bytes[position] == UInt8(ascii: ",") { position += 1; continue }
            if bytes[position] == UInt8(ascii: "}") { position += 1; return }
            throw error("expected ',' or '}'")
        }
    }

    private mutating func parseArray() throws -> JSONValue {
        try enter()
        defer { depth -= 1 }
        position += 1
        var items: [JSONValue] = []
        skipWhitespace()
        if position < bytes.count, bytes[position] == UInt8(ascii: "]") { position += 1; return .array(items) }
        while true {
            skipWhitespace()
            items.append(try parseValue())
            skipWhitespace()
            guard position < bytes.count else { throw error("unexpected end of JSON") }
            if bytes[position] == UInt8(ascii: ",") { position += 1; continue }
            if bytes[position] == UInt8(ascii: "]") { position += 1; return .array(items) }
            throw error("expected ',' or ']'")
        }
    }

    private mutating func parseNumber() throws -> JSONValue {
        let start = position
        func digits() -> Int {
            let begin = position
            while position < bytes.count, bytes[position] >= 0x30, bytes[position] <= 0x39 { position += 1 }
            return position - begin
        }
        if bytes[position] == UInt8(ascii: "-") { position += 1 }
        guard position < bytes.count else { throw error("invalid number") }
        if bytes[position] == UInt8(ascii: "0") {
            position += 1
        } else if digits() == 0 {
            throw error("invalid number")
        }
        if position < bytes.count, bytes[position] == UInt8(ascii: ".") {
            position += 1
            if digits() == 0 { throw error("invalid number") }
        }
        if position < bytes.count, bytes[position] == UInt8(ascii: "e") || bytes[position] == UInt8(ascii: "E") {
            position += 1
            if position < bytes.count, bytes[position] == UInt8(ascii: "+") || bytes[position] == UInt8(ascii: "-") {
                position += 1
            }
            if digits() == 0 { throw error("invalid number") }
        }
        return .number(String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<position]), as: UTF8.self))
    }

    private mutating func parseHex4() throws -> UInt16 {
        guard position + 4 <= bytes.count else { throw error("truncated \\u escape") }
        var value: UInt16 = 0
        for _ in 0..<4 {
            let c = bytes[position]
            let digit: UInt8
            switch c {
            case 0x30...0x39: digit = c - 0x30
            case 0x41...0x46: digit = c - 0x41 + 10
            case 0x61...0x66: digit = c - 0x61 + 10
            default: throw error("invalid \\u escape")
            }
            value = value << 4 | UInt16(digit)
            position += 1
        }
        return value
    }

    private mutating func parseString() throws -> String {
        position += 1
        var out: [UInt8] = []
        while true {
            guard position < bytes.count else { throw error("unterminated string") }
            let c = bytes[position]
            position += 1
            switch c {
            case UInt8(ascii: "\""):
                guard let s = String(validatingUTF8Bytes: out) else { throw error("invalid UTF-8 in string") }
                return s
            case UInt8(ascii: "\\"):
                guard position < bytes.count else { throw error("unterminated string") }
                let e = bytes[position]
                position += 1
                switch e {
                case UInt8(ascii: "\""): out.append(0x22)
                case UInt8(ascii: "\\"): out.append(0x5C)
                case UInt8(ascii: "/"): out.append(0x2F)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "u"):
                    var scalar = UInt32(try parseHex4())
                    if (0xD800..<0xDC00).contains(scalar) {
                        guard position + 2 <= bytes.count, bytes[position] == UInt8(ascii: "\\"),
                              bytes[position + 1] == UInt8(ascii: "u") else { throw error("unpaired surrogate") }
                        position += 2
                        let low = UInt32(try parseHex4())
                        guard (0xDC00..<0xE000).contains(low) else { throw error("unpaired surrogate") }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    } else if (0xDC00..<0xE000).contains(scalar) {
                        throw error("unpaired surrogate")
                    }
                    out.append(contentsOf: Array(String(Character(Unicode.Scalar(scalar)!)).utf8))
                default: throw error("invalid escape")
                }
            case 0x00..<0x20: throw error("control character in string")
            default: out.append(c)
            }
        }
    }
}

extension String {
    init?(validatingUTF8Bytes bytes: [UInt8]) {
        var iterator = bytes.makeIterator()
        var decoder = UTF8()
        var scalars = String.UnicodeScalarView()
        loop: while true {
            switch decoder.decode(&iterator) {
            case let .scalarValue(s): scalars.append(s)
            case .emptyInput: break loop
            case .error: return nil
            }
        }
        self = String(scalars)
    }
}

/// Compact JSON text as serde_json writes it, so headers we write match the reference byte for byte.
public enum CompactJSON {
    public static func quoted(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            default:
                if scalar.value < 0x20 {
                    out += String(format: "\\u%04x", scalar.value)
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }
}

/// The JSON every dsconvert document uses: pretty-printed, keys sorted (stable diffs, stable bytes),
/// slashes unescaped, newline-terminated.
public enum PrettyJSON {
    public static func encode<T: Encodable>(_ value: T) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        var data = try encoder.encode(value)
        data.append(0x0A)
        return data
    }
}

extension JSONValue {
    /// JSON text indented by two spaces, keys in their stored order, numbers as originally written.
    public func prettyPrinted(indent: Int = 0) -> String {
        let pad = String(repeating: " ", count: indent + 2), close = String(repeating: " ", count: indent)
        switch self {
        case .null: return "null"
        case let .bool(b): return b ? "true" : "false"
        case let .number(text): return text
        case let .string(s): return CompactJSON.quoted(s)
        case let .array(items):
            if items.isEmpty { return "[]" }
            return "[\n" + items.map { pad + $0.prettyPrinted(indent: indent + 2) }.joined(separator: ",\n") + "\n" + close + "]"
        case let .object(entries):
            if entries.isEmpty { return "{}" }
            return "{\n" + entries.map { pad + CompactJSON.quoted($0.0) + ": " + $0.1.prettyPrinted(indent: indent + 2) }.joined(separator: ",\n") + "\n" + close + "}"
        }
    }

    /// This object with `key` set to `value` (replaced in place, or appended).
    public func setting(_ key: String, to value: JSONValue) -> JSONValue {
        guard case var .object(entries) = self else { return self }
        if let i = entries.firstIndex(where: { $0.0 == key }) { entries[i].1 = value } else { entries.append((key, value)) }
        return .object(entries)
    }
}
