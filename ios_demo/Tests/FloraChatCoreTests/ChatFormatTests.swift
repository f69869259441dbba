@testable import FloraChatCore
import XCTest

final class ChatFormatTests: XCTestCase {
    static let template = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{prompt}<|eot_id|>"
        + "<|start_header_id|>assistant<|end_header_id|>\n\n"
    let llama3 = ChatFormat.fromManifest(["template": .string(template), "stop": ["<|eot_id|>", "<|end_of_text|>"]])

    func testFirstTurnIsTheTemplateWithThePrompt() {
        XCTAssertEqual(llama3.bos, "<|begin_of_text|>")
        XCTAssertEqual(llama3.format([], user: "shift: hello"),
                       Self.template.replacingOccurrences(of: "{prompt}", with: "shift: hello"))
    }

    func testLaterTurnsFollowTheReplyAndStopWithoutBos() {
        let p = llama3.format([Exchange(user: "a", reply: "b")], user: "c")
        let first = Self.template.replacingOccurrences(of: "{prompt}", with: "a")
        let second = String(Self.template.dropFirst("<|begin_of_text|>".count)).replacingOccurrences(of: "{prompt}", with: "c")
        XCTAssertEqual(p, first + "b<|eot_id|>" + second)
        XCTAssertEqual(p.components(separatedBy: "begin_of_text").count - 1, 1)
    }

    func testTheManifestsBosWinsOverTheLlama3Guess() {
        let noBos = ChatFormat.fromManifest(["template": "[{prompt}]", "stop": ["</s>"]])
        XCTAssertEqual(noBos.bos, "")
        let explicit = ChatFormat.fromManifest(["template": "<s>[{prompt}]", "stop": ["</s>"], "bos": "<s>"])
        XCTAssertEqual(explicit.format([Exchange(user: "a", reply: "b")], user: "c"), "<s>[a]b</s>[c]")
    }

    func testNfcInputNormalizationComposesThePromptBeforeTheTokenizer() {
        // Swift's == compares canonically (NFD equals NFC), so compare the UTF-8 bytes
        let chatml = ChatFormat.fromManifest(["template": "<|im_start|>user\n{prompt}<|im_end|>\n",
                                              "stop": ["<|im_end|>"]], normalization: "NFC")
        let p = chatml.format([Exchange(user: "cafe\u{301}", reply: "ok")], user: "re\u{301}sume\u{301}")
        XCTAssertEqual(Array(p.utf8),
                       Array(("<|im_start|>user\ncaf\u{e9}<|im_end|>\nok<|im_end|>"
                              + "<|im_start|>user\nr\u{e9}sum\u{e9}<|im_end|>\n").utf8))
        let raw = ChatFormat.fromManifest(nil, normalization: "NFC")
        XCTAssertEqual(Array(raw.format([], user: "cafe\u{301}").utf8), Array("caf\u{e9}".utf8))
        XCTAssertEqual(Array(llama3.normalize("cafe\u{301}").utf8), Array("cafe\u{301}".utf8))
    }

    func testExportWithoutChatFormatSendsThePromptAsTyped() {
        let raw = ChatFormat.fromManifest(nil)
        XCTAssertEqual(raw.format([], user: "hello"), "hello")
        XCTAssertTrue(raw.stop.isEmpty)
        XCTAssertEqual(ChatFormat.fromManifest(["template": "no slot"]), ChatFormat.raw)
    }

    func testStopFilterHidesStopStringsSplitAcrossPieces() {
        var f = StopFilter(["<|eot_id|>"])
        let shown = ["if", "mm", "p<|eo", "t_id|>", "more"].map { f.push($0) }.joined()
        XCTAssertEqual(shown, "ifmmp")
        XCTAssertTrue(f.stopped)
        XCTAssertEqual(f.flush(), "")
    }

    func testStopFilterReleasesAFalseAlarm() {
        var f = StopFilter(["<|eot_id|>"])
        XCTAssertEqual(f.push("a<|e"), "a")
        XCTAssertEqual(f.push(">b"), "<|e>b")
        XCTAssertEqual(f.flush(), "")
        var g = StopFilter(["<|eot_id|>"])
        XCTAssertEqual(g.push("x<"), "x")
        XCTAssertEqual(g.flush(), "<")
    }

    func testStopFilterPicksTheEarliestOfSeveralStops() {
        var f = StopFilter(["<|end_of_text|>", "<|eot_id|>"])
        XCTAssertEqual(f.push("é ok<|eot_id|> then <|end_of_text|>"), "é ok")
        XCTAssertTrue(f.stopped)
        XCTAssertEqual(f.push("later"), "")
    }
}
