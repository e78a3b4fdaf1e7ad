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
        try parser.parseMembers(deferringKeyCheck: false, body)
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

    /// One level deeper, or the depth error; the depth is unchanged when it throws (a caller's
    /// `defer` undoes only a level it entered), so an enclosing object reports its own depth.
    private mutating func enter() throws {
        if depth + 1 > Self.maximumDepth { throw error("nesting deeper than \(Self.maximumDepth)") }
        depth += 1
    }

    private mutating func parseObject() throws -> JSONValue {
        var entries: [(String, JSONValue)] = []
        try parseMembers(deferringKeyCheck: true) { entries.append(($0, $1)) }
        return .object(entries)
    }

    /// The keys of one object, for the duplicate rule. Streaming, each key is checked as it is read;
    /// deferred, all are checked when the object ends (or reading it fails) against a set sized for
    /// all of them, not grown and rehashed key by key (an eighth of the time to load a tokenizer of
    /// 128k tokens). Either way the error is the first repeated key in document order, and a
    /// repeat before a malformed value is reported, not the value.
    private struct ObjectKeys {
        let deferred: Bool
        var seen = Set<String>()
        var pending: [(key: String, offset: Int)] = []

        mutating func add(_ key: String, offset: Int, depth: Int) throws {
            if deferred { pending.append((key, offset)); return }
            if !seen.insert(key).inserted { throw Self.duplicate(key, offset: offset, depth: depth) }
        }

        func checkPending(depth: Int) throws {
            var all = Set<String>(minimumCapacity: pending.count)
            for (key, offset) in pending where !all.insert(key).inserted { throw Self.duplicate(key, offset: offset, depth: depth) }
        }

        static func duplicate(_ key: String, offset: Int, depth: Int) -> JSONParseError {
            JSONParseError(message: "duplicate key \"\(key)\"", offset: offset, duplicateKey: key, duplicateKeyDepth: depth)
        }
    }

    /// The members of the object at `position` (its opening brace), in order.
    private mutating func parseMembers(deferringKeyCheck: Bool, _ body: (String, JSONValue) throws -> Void) throws {
        try enter()
        defer { depth -= 1 }
        position += 1
        var keys = ObjectKeys(deferred: deferringKeyCheck)
        do {
            try readMembers(&keys, body)
        } catch {
            // A repeated key read before the failure comes first, as when checked key by key.
            try keys.checkPending(depth: depth)
            throw error
        }
        try keys.checkPending(depth: depth)
    }

    private mutating func readMembers(_ keys: inout ObjectKeys, _ body: (String, JSONValue) throws -> Void) throws {
        skipWhitespace()
        if position < bytes.count, bytes[position] == UInt8(ascii: "}") { position += 1; return }
        while true {
            skipWhitespace()
            guard position < bytes.count, bytes[position] == UInt8(ascii: "\"") else { throw error("expected a string key") }
            let keyOffset = position
            let key = try parseString()
            try keys.add(key, offset: keyOffset, depth: depth)
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

    /// The string of these bytes, which must be UTF-8. `String(decoding:)` repairs invalid bytes with
    /// U+FFFD, so the bytes were valid exactly when they come back unchanged (`String(validating:)`,
    /// tried first, looked up generic metadata per call: 8% of loading a tokenizer; the decoder loop
    /// before it appended scalar by scalar).
    private func validString(_ raw: UnsafeRawBufferPointer) throws -> String {
        let s = String(decoding: raw, as: UTF8.self)
        guard s.utf8.count == raw.count, s.utf8.elementsEqual(raw) else { throw error("invalid UTF-8 in string") }
        return s
    }

    private mutating func parseString() throws -> String {
        position += 1
        // Most strings (every key and token of a tokenizer's vocabulary) have no escape: they are
        // validated and copied straight from the text, with no byte array between.
        let start = position
        while position < bytes.count {
            let c = bytes[position]
            if c == UInt8(ascii: "\"") {
                position += 1
                return try validString(UnsafeRawBufferPointer(rebasing: bytes[start..<position - 1]))
            }
            if c == UInt8(ascii: "\\") || c < 0x20 { break }
            position += 1
        }
        var out = Array(UnsafeRawBufferPointer(rebasing: bytes[start..<position]))
        while true {
            guard position < bytes.count else { throw error("unterminated string") }
            let c = bytes[position]
            position += 1
            switch c {
            case UInt8(ascii: "\""):
                return try out.withUnsafeBytes { try validString($0) }
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
