@testable import FloraChatCore
import XCTest

final class TokenizerTests: XCTestCase {
    func testSpecialTokensInTheTextBecomeTheirIds() throws {
        let t = FakeTokenizer()
        let ids = try t.encode("<|begin_of_text|>[hello]<|eot_id|>")
        XCTAssertEqual(ids, [t.id("<|begin_of_text|>"), t.id("["), t.id("hel"), t.id("lo"), t.id("]"), t.id("<|eot_id|>")])
        XCTAssertEqual(t.decode(ids), "<|begin_of_text|>[hello]<|eot_id|>")
    }

    func testStreamingHoldsBackAnIncompleteCharacter() throws {
        let t = FakeTokenizer()
        let s = TokenStream(tokenizer: t)
        let pieces = ([t.id("h")] + t.eAcute + [t.id("!")]).map { s.push($0) }
        XCTAssertEqual(pieces, ["h", "", "é", "!"])
        XCTAssertEqual(pieces.joined(), t.decode(try t.encode("h") + t.eAcute + [t.id("!")]))
    }

    func testStreamingKeepsSpacesADecoderStripsAtTheStart() {
        let t = FakeTokenizer(stripsLeadingSpace: true)
        let ids = [t.id(" hello"), t.id(" world"), t.id("!")]
        let s = TokenStream(tokenizer: t)
        XCTAssertEqual(ids.map { s.push($0) }, ["hello", " world", "!"])
        XCTAssertEqual(ids.map { t.decode([$0]) }.joined(), "helloworld!")   // what per-token decoding would show
        XCTAssertEqual(t.decode(ids), "hello world!")
    }

    func testStopIdsComeFromTheManifestAndSingleTokenStopStrings() {
        let t = FakeTokenizer()
        let ids = stopTokenIds(eosIds: [t.id("<|end_of_text|>")], stop: ["<|eot_id|>", "</s>"], tokenizer: t)
        XCTAssertEqual(ids, [t.id("<|end_of_text|>"), t.id("<|eot_id|>")])
    }
}
