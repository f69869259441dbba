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

    func testIntegralDoublesAreWrittenWithoutFraction() {
        XCTAssertEqual(Json.write(["x": 64.0, "y": 21.5, "z": JSONValue(Double.nan)] as JSONObject),
                       #"{"x": 64, "y": 21.5, "z": null}"#)
    }

    func testRejectsBrokenInput() {
        for bad in ["{", #"{"a" 1}"#, "[1,]", "tru", #""open"#, "{} x", #"{"a": "\q"}"#] {
            XCTAssertThrowsError(try Json.parse(bad), bad) { XCTAssertTrue($0 is JSONError, bad) }
        }
    }

    func testPythonsNonFiniteNumbersAreReadAndWrittenAsNull() throws {
        // json.dumps(float("inf")) gives Infinity: flora-export manifests contain it.
        let v = try Json.parseObject(#"{"a": Infinity, "b": -Infinity, "c": NaN, "d": -2}"#)
        XCTAssertEqual(v.number("a"), .infinity)
        XCTAssertEqual(v.number("b"), -.infinity)
        XCTAssertTrue(try XCTUnwrap(v.number("c")).isNaN)
        XCTAssertEqual(v.number("d"), -2)
        XCTAssertEqual(Json.write(v), #"{"a": null, "b": null, "c": null, "d": -2}"#)
        XCTAssertThrowsError(try Json.parse("-Inf"))
        XCTAssertThrowsError(try Json.parse("Nan"))
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
        XCTAssertEqual(Json.write(["s": "\u{1}\u{1F600}"] as JSONObject), "{\"s\": \"\\u0001\u{1F600}\"}")
        XCTAssertEqual(try Json.parseObject(#"{"e": "\ud83d\ude00"}"#).string("e"), "\u{1F600}")
    }
}
