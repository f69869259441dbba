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

/// Reads and writes JSON text with Foundation's `JSONSerialization` (on Linux too). Reading
/// is strict JSON (manifests are: flora-export writes them with `allow_nan=False`); objects
/// come back with their keys sorted, since Foundation's dictionaries keep no order. Writing
/// sorts keys, writes integral values below 1e15 without a fraction (64, not 64.0) and
/// non-finite numbers as null, so what the app writes is strict JSON too.
public enum Json {
    public static func parse(_ text: String) throws -> JSONValue {
        let any: Any
        do {
            any = try JSONSerialization.jsonObject(with: Data(text.utf8), options: [.fragmentsAllowed])
        } catch {
            throw JSONError("not valid JSON (\(error.localizedDescription))")
        }
        return try value(any)
    }

    public static func parseObject(_ text: String) throws -> JSONObject {
        guard let obj = try parse(text).objectValue else { throw JSONError("expected a JSON object") }
        return obj
    }

    public static func write(_ value: JSONValue) -> String {
        let any = foundation(value)
        // Every value foundation(_:) makes is serializable, so this cannot throw.
        let data = (try? JSONSerialization.data(withJSONObject: any,
                                                options: [.sortedKeys, .withoutEscapingSlashes, .fragmentsAllowed])) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }

    public static func write(_ object: JSONObject) -> String { write(.object(object)) }

    private static func value(_ any: Any) throws -> JSONValue {
        switch any {
        case is NSNull: return .null
        case let s as String: return .string(s)
        case let n as NSNumber:
            // A JSON true/false is an NSNumber of ObjC type "c" (char) on Apple and on Linux.
            if String(cString: n.objCType) == "c" { return .bool(n.boolValue) }
            return .number(n.doubleValue)
        case let a as [Any]: return .array(try a.map(value))
        case let d as [String: Any]:
            return .object(JSONObject(try d.keys.sorted().map { ($0, try value(d[$0] as Any)) }))
        default: throw JSONError("unexpected JSON value of type \(type(of: any))")
        }
    }

    private static func foundation(_ value: JSONValue) -> Any {
        switch value {
        case .null: return NSNull()
        case let .bool(b): return NSNumber(value: b)
        case let .number(d):
            if !d.isFinite { return NSNull() }
            if d == d.rounded() && abs(d) < 1e15 { return NSNumber(value: Int64(d)) }
            return NSNumber(value: d)
        case let .string(s): return s
        case let .array(items): return items.map(foundation)
        case let .object(obj): return Dictionary(uniqueKeysWithValues: obj.entries.map { ($0.key, foundation($0.value)) })
        }
    }
}
