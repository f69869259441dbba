import Foundation

/// A JSON value as the manifests, runner stats and benchmark reports use them. Numbers are
/// doubles (as in the Kotlin core); objects keep their keys in insertion order so a written
/// report reads in the same order as the Android app's.
public enum JSONValue: Equatable, Sendable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object(JSONObject)

    public var stringValue: String? { if case let .string(s) = self { return s }; return nil }
    public var numberValue: Double? { if case let .number(d) = self { return d }; return nil }
    public var boolValue: Bool? { if case let .bool(b) = self { return b }; return nil }
    public var arrayValue: [JSONValue]? { if case let .array(a) = self { return a }; return nil }
    public var objectValue: JSONObject? { if case let .object(o) = self { return o }; return nil }
    public var isNull: Bool { self == .null }
}

extension JSONValue: ExpressibleByNilLiteral, ExpressibleByBooleanLiteral, ExpressibleByIntegerLiteral,
    ExpressibleByFloatLiteral, ExpressibleByStringLiteral, ExpressibleByArrayLiteral,
    ExpressibleByDictionaryLiteral {
    public init(nilLiteral: ()) { self = .null }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(integerLiteral value: Int) { self = .number(Double(value)) }
    public init(floatLiteral value: Double) { self = .number(value) }
    public init(stringLiteral value: String) { self = .string(value) }
    public init(arrayLiteral elements: JSONValue...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, JSONValue)...) {
        self = .object(JSONObject(elements))
    }

    /// `nil` becomes JSON null: `JSONValue(figures.tpotMs)`.
    public init(_ value: Double?) { self = value.map { .number($0) } ?? .null }
    public init(_ value: Int?) { self = value.map { .number(Double($0)) } ?? .null }
    public init(_ value: Int64?) { self = value.map { .number(Double($0)) } ?? .null }
    public init(_ value: String?) { self = value.map { .string($0) } ?? .null }
    public init(_ value: Bool?) { self = value.map { .bool($0) } ?? .null }
    public init(_ value: [String]) { self = .array(value.map { .string($0) }) }
}

/// A JSON object whose keys keep their insertion order.
public struct JSONObject: Equatable, Sendable, ExpressibleByDictionaryLiteral {
    public private(set) var keys: [String] = []
    private var values: [String: JSONValue] = [:]

    public init() {}

    public init(_ pairs: [(String, JSONValue)]) {
        for (k, v) in pairs { self[k] = v }
    }

    public init(dictionaryLiteral elements: (String, JSONValue)...) { self.init(elements) }

    public subscript(key: String) -> JSONValue? {
        get { values[key] }
        set {
            if let v = newValue {
                if values.updateValue(v, forKey: key) == nil { keys.append(key) }
            } else if values.removeValue(forKey: key) != nil {
                keys.removeAll { $0 == key }
            }
        }
    }

    public var count: Int { keys.count }
    public var isEmpty: Bool { keys.isEmpty }
    public var entries: [(key: String, value: JSONValue)] { keys.map { ($0, values[$0]!) } }

    /// This object with `other`'s entries added (or replaced) in `other`'s order.
    public func merging(_ other: JSONObject) -> JSONObject {
        var out = self
        for (k, v) in other.entries { out[k] = v }
        return out
    }

    public static func == (a: JSONObject, b: JSONObject) -> Bool { a.keys == b.keys && a.values == b.values }

    // Typed reads: a missing key or a value of another type reads as nil.
    public func string(_ key: String) -> String? { self[key]?.stringValue }
    public func number(_ key: String) -> Double? { self[key]?.numberValue }
    public func int(_ key: String) -> Int? {
        guard let d = number(key), d.isFinite, abs(d) < 9.0e15 else { return nil }
        return Int(d)
    }
    public func bool(_ key: String) -> Bool? { self[key]?.boolValue }
    public func obj(_ key: String) -> JSONObject? { self[key]?.objectValue }
    public func list(_ key: String) -> [JSONValue]? { self[key]?.arrayValue }
}

public struct JSONError: Error, Equatable, CustomStringConvertible, LocalizedError {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
    public var errorDescription: String? { message }
}

/// Reads and writes JSON text (the same dialect as the Kotlin core's `Json`). Reading also
/// accepts `NaN`, `Infinity` and `-Infinity`, which Python's `json` module writes for
/// non-finite floats (flora-export manifests hold them, e.g. an SQNR of a lossless check);
/// writing turns non-finite numbers into null, so what the app writes is strict JSON.
public enum Json {
    public static func parse(_ text: String) throws -> JSONValue {
        var reader = Reader(Array(text.utf8))
        let value = try reader.value()
        reader.skipSpace()
        if !reader.atEnd { throw reader.error("trailing characters") }
        return value
    }

    public static func parseObject(_ text: String) throws -> JSONObject {
        guard let obj = try parse(text).objectValue else { throw JSONError("expected a JSON object") }
        return obj
    }

    public static func write(_ value: JSONValue) -> String {
        var out = ""
        write(value, to: &out)
        return out
    }

    public static func write(_ object: JSONObject) -> String { write(.object(object)) }

    private static func write(_ value: JSONValue, to out: inout String) {
        switch value {
        case .null: out += "null"
        case let .bool(b): out += b ? "true" : "false"
        case let .number(d): out += number(d)
        case let .string(s): writeString(s, to: &out)
        case let .array(items):
            out += "["
            for (i, v) in items.enumerated() {
                if i > 0 { out += ", " }
                write(v, to: &out)
            }
            out += "]"
        case let .object(obj):
            out += "{"
            for (i, e) in obj.entries.enumerated() {
                if i > 0 { out += ", " }
                writeString(e.key, to: &out)
                out += ": "
                write(e.value, to: &out)
            }
            out += "}"
        }
    }

    /// Integral values below 1e15 without a fraction (64, not 64.0); NaN and infinities as null.
    static func number(_ d: Double) -> String {
        if !d.isFinite { return "null" }
        if d == d.rounded() && abs(d) < 1e15 { return String(Int64(d)) }
        return "\(d)"
    }

    private static func writeString(_ s: String, to out: inout String) {
        out += "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 {
                    out += String(format: "\\u%04x", u.value)
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        out += "\""
    }

    private struct Reader {
        let bytes: [UInt8]
        var pos = 0

        init(_ bytes: [UInt8]) { self.bytes = bytes }

        var atEnd: Bool { pos >= bytes.count }

        func error(_ what: String) -> JSONError { JSONError("\(what) at offset \(pos)") }

        mutating func skipSpace() {
            while !atEnd, [0x20, 0x0A, 0x0D, 0x09].contains(bytes[pos]) { pos += 1 }
        }

        mutating func value() throws -> JSONValue {
            skipSpace()
            if atEnd { throw error("unexpected end of input") }
            switch bytes[pos] {
            case UInt8(ascii: "{"): return .object(try object())
            case UInt8(ascii: "["): return .array(try array())
            case UInt8(ascii: "\""): return .string(try string())
            case UInt8(ascii: "t"): return try literal("true", .bool(true))
            case UInt8(ascii: "f"): return try literal("false", .bool(false))
            case UInt8(ascii: "n"): return try literal("null", .null)
            case UInt8(ascii: "N"): return try literal("NaN", .number(.nan))
            case UInt8(ascii: "I"): return try literal("Infinity", .number(.infinity))
            case UInt8(ascii: "-") where bytes[(pos + 1)...].starts(with: "Infinity".utf8):
                return try literal("-Infinity", .number(-.infinity))
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try number())
            default: throw error("unexpected '\(Character(Unicode.Scalar(bytes[pos])))'")
            }
        }

        mutating func literal(_ word: String, _ value: JSONValue) throws -> JSONValue {
            let w = Array(word.utf8)
            guard pos + w.count <= bytes.count, Array(bytes[pos..<pos + w.count]) == w else {
                throw error("expected \(word)")
            }
            pos += w.count
            return value
        }

        mutating func number() throws -> Double {
            let start = pos
            let allowed = Set("+-0123456789.eE".utf8)
            while !atEnd, allowed.contains(bytes[pos]) { pos += 1 }
            guard let d = Double(String(decoding: bytes[start..<pos], as: UTF8.self)) else {
                throw error("bad number")
            }
            return d
        }

        mutating func object() throws -> JSONObject {
            var out = JSONObject()
            pos += 1
            skipSpace()
            if !atEnd, bytes[pos] == UInt8(ascii: "}") {
                pos += 1
                return out
            }
            while true {
                skipSpace()
                if atEnd || bytes[pos] != UInt8(ascii: "\"") { throw error("expected a key") }
                let key = try string()
                skipSpace()
                try expect(":")
                out[key] = try value()
                skipSpace()
                if !atEnd, bytes[pos] == UInt8(ascii: ",") {
                    pos += 1
                    continue
                }
                try expect("}")
                return out
            }
        }

        mutating func array() throws -> [JSONValue] {
            var out: [JSONValue] = []
            pos += 1
            skipSpace()
            if !atEnd, bytes[pos] == UInt8(ascii: "]") {
                pos += 1
                return out
            }
            while true {
                out.append(try value())
                skipSpace()
                if !atEnd, bytes[pos] == UInt8(ascii: ",") {
                    pos += 1
                    continue
                }
                try expect("]")
                return out
            }
        }

        mutating func expect(_ c: Unicode.Scalar) throws {
            if atEnd || bytes[pos] != UInt8(c.value) { throw error("expected '\(c)'") }
            pos += 1
        }

        mutating func string() throws -> String {
            var out: [UInt8] = []
            pos += 1
            while true {
                if atEnd { throw error("unterminated string") }
                let c = bytes[pos]
                pos += 1
                switch c {
                case UInt8(ascii: "\""): return String(decoding: out, as: UTF8.self)
                case UInt8(ascii: "\\"): try escape(into: &out)
                default: out.append(c)
                }
            }
        }

        mutating func escape(into out: inout [UInt8]) throws {
            if atEnd { throw error("unterminated escape") }
            let e = bytes[pos]
            pos += 1
            switch e {
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
            case UInt8(ascii: "u"): out.append(contentsOf: Array(String(try unicode()).utf8))
            default: throw error("bad escape '\\\(Character(Unicode.Scalar(e)))'")
            }
        }

        /// A \uXXXX escape; a UTF-16 surrogate pair (two escapes) becomes one character.
        mutating func unicode() throws -> Unicode.Scalar {
            let high = try hex4()
            if (0xD800..<0xDC00).contains(high), pos + 6 <= bytes.count,
               bytes[pos] == UInt8(ascii: "\\"), bytes[pos + 1] == UInt8(ascii: "u") {
                let save = pos
                pos += 2
                let low = try hex4()
                if (0xDC00..<0xE000).contains(low),
                   let s = Unicode.Scalar(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)) {
                    return s
                }
                pos = save
            }
            return Unicode.Scalar(high) ?? "\u{FFFD}"
        }

        mutating func hex4() throws -> UInt32 {
            guard pos + 4 <= bytes.count,
                  let code = UInt32(String(decoding: bytes[pos..<pos + 4], as: UTF8.self), radix: 16) else {
                throw error("bad \\u escape")
            }
            pos += 4
            return code
        }
    }
}
