@testable import FloraChatCore
import XCTest

final class JsonTests: XCTestCase {
    func testParsesNestedValues() throws {
        let v = try Json.parseObject(#"{"a": [1, 2.5, -3e2], "b": {"c": null, "d": true}, "e": "x\"y\n\u00e9"}"#)
        XCTAssertEqual(v.list("a"), [1.0, 2.5, -300.0])
        XCTAssertEqual(v.obj("b")?["c"], JSONValue.null)
        XCTAssertEqual(v.obj("b")?.bool("d"), true)
        XCTAssertEqual(v.string("e"), "x\"y\né")
    }

    func testWritesWhatItReads() throws {
        let data: JSONObject = ["n": 3, "f": 0.25, "s": "tab\there", "l": [nil, false], "big": 1e20]
        let back = try Json.parseObject(Json.write(data))
        XCTAssertEqual(back.number("n"), 3.0)
        XCTAssertEqual(back.number("f"), 0.25)
        XCTAssertEqual(back.string("s"), "tab\there")
        XCTAssertEqual(back.list("l"), [.null, .bool(false)])
        XCTAssertEqual(back.number("big"), 1e20)
    }

    func testIntegralDoublesAreWrittenWithoutFractionAndKeysSorted() {
        XCTAssertEqual(Json.write(["y": 21.5, "x": 64.0, "z": JSONValue(Double.nan)] as JSONObject),
                       #"{"x":64,"y":21.5,"z":null}"#)
        XCTAssertEqual(Json.write(["b": true, "a": [1, "s/t"]] as JSONObject), #"{"a":[1,"s/t"],"b":true}"#)
    }

    func testRejectsBrokenInput() {
        // (Foundation's parser on Linux accepts a trailing comma, "[1,]"; nothing the app reads has one.)
        for bad in ["", "{", #"{"a" 1}"#, "[1 2]", "tru", #""open"#, "{} x", #"{"a": "\q"}"#] {
            XCTAssertThrowsError(try Json.parse(bad), bad) { XCTAssertTrue($0 is JSONError, bad) }
        }
        XCTAssertThrowsError(try Json.parseObject("[1]"))
    }

    func testNonFiniteNumbersAreRefusedOnReadAndWrittenAsNull() throws {
        // Manifests are strict JSON (flora-export writes them with allow_nan=False).
        for bad in [#"{"a": NaN}"#, #"{"a": Infinity}"#, #"{"a": -Infinity}"#] {
            XCTAssertThrowsError(try Json.parse(bad), bad)
        }
        let v: JSONObject = ["a": JSONValue(Double.infinity), "b": JSONValue(-Double.infinity), "d": -2]
        XCTAssertEqual(Json.write(v), #"{"a":null,"b":null,"d":-2}"#)
    }

    func testBooleansAndNumbersStayApart() throws {
        let v = try Json.parseObject(#"{"t": true, "f": false, "one": 1, "zero": 0}"#)
        XCTAssertEqual(v["t"], .bool(true))
        XCTAssertEqual(v["f"], .bool(false))
        XCTAssertEqual(v["one"], .number(1))
        XCTAssertEqual(v["zero"], .number(0))
        XCTAssertEqual(v.keys, ["f", "one", "t", "zero"])       // sorted: Foundation keeps no order
    }

    func testTypedReadsReturnNilOnWrongType() throws {
        let v = try Json.parseObject(#"{"a": "1", "b": 2}"#)
        XCTAssertNil(v.int("a"))
        XCTAssertEqual(v.int("b"), 2)
        XCTAssertNil(v.string("b"))
    }

    func testKeysKeepTheirOrderAndControlCharactersAreEscaped() throws {
        var o: JSONObject = ["z": 1, "a": 2]
        o["m"] = 3
        o["z"] = 4
        XCTAssertEqual(o.keys, ["z", "a", "m"])
        XCTAssertEqual(try Json.parseObject(Json.write(["s": "\u{1}\u{1F600}"] as JSONObject)).string("s"), "\u{1}\u{1F600}")
        XCTAssertEqual(try Json.parseObject(#"{"e": "\ud83d\ude00"}"#).string("e"), "\u{1F600}")
    }
}
