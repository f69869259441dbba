@testable import FloraChatCore
import XCTest

/// A byte-level tokenizer whose tokens are whatever byte chunks a test registers, so an
/// answer can be cut at any byte. Decoding makes U+FFFD of incomplete bytes, as Hugging
/// Face tokenizers (and swift-transformers) do.
final class ChunkTokenizer: TextTokenizer {
    private(set) var chunks: [[UInt8]] = [Array("<|eot_id|>".utf8)]

    func add(_ chunk: [UInt8]) -> Int {
        if let i = chunks.firstIndex(of: chunk) { return i }
        chunks.append(chunk)
        return chunks.count - 1
    }

    func encode(_ text: String) throws -> [Int] { Array(text.utf8).map { add([$0]) } }
    func decode(_ ids: [Int]) -> String { String(decoding: ids.flatMap { chunks[$0] }, as: UTF8.self) }
    func tokenId(_ token: String) -> Int? { chunks.firstIndex(of: Array(token.utf8)) }
}

final class StreamingTextTests: XCTestCase {
    let answer = "café 日本 🎉"    // 2-byte é, 3-byte CJK, a 4-byte emoji

    /// The answer's bytes cut into two tokens at every byte, and into one token per byte.
    var splits: [[[UInt8]]] {
        let bytes = Array(answer.utf8)
        return (1..<bytes.count).map { [Array(bytes[..<$0]), Array(bytes[$0...])] } + [bytes.map { [$0] }]
    }

    func testTokenStreamGivesWholeCharactersAtEveryByteSplit() {
        for chunks in splits {
            let tok = ChunkTokenizer()
            let stream = TokenStream(tokenizer: tok)
            let pieces = chunks.map { stream.push(tok.add($0)) } + [stream.finish()]
            XCTAssertEqual(pieces.joined(), answer, "\(chunks)")
            XCTAssertFalse(pieces.joined().unicodeScalars.contains("\u{FFFD}"), "\(chunks)")
        }
    }

    func testACharacterLeftIncompleteAtTheEndIsShownAsReplacementNotDropped() {
        let tok = ChunkTokenizer()
        let stream = TokenStream(tokenizer: tok)
        let emoji = Array("🎉".utf8)
        XCTAssertEqual(stream.push(tok.add(Array("ok ".utf8))), "ok ")
        XCTAssertEqual(stream.push(tok.add(Array(emoji[..<2]))), "")
        XCTAssertEqual(stream.finish(), "\u{FFFD}")
        XCTAssertEqual(stream.finish(), "")
    }

    func testTheCoreMlEngineDeliversTheWholeAnswerAtEveryByteSplit() throws {
        for chunks in splits {
            let tok = ChunkTokenizer()
            let script = chunks.map { tok.add($0) } + [0]       // then <|eot_id|>
            let model = ScriptedStepModel(script: script, vocab: tok.chunks.count)
            let engine = StepModelEngine(loadModel: { model }, loadTokenizer: { tok }, eosIds: [],
                                         stop: ["<|eot_id|>"], clock: { model.now })
            _ = try engine.load()
            var text = ""
            let record = GenerationRecord(clock: { model.now }, onPiece: { text += $0 })
            record.timer.start()
            engine.generate(prompt: "q", maxNewTokens: 64, listener: record)
            XCTAssertNil(record.error)
            XCTAssertEqual(text, answer, "\(chunks)")
        }
    }

    func testATruncatedAnswerEndsInReplacementAndTheTailIsNotCountedAsAToken() throws {
        let tok = ChunkTokenizer()
        let bytes = Array("日".utf8)
        let script = [tok.add(Array("a".utf8)), tok.add([bytes[0]]), tok.add([bytes[1]])]
        let model = ScriptedStepModel(script: script, vocab: tok.chunks.count)
        let engine = StepModelEngine(loadModel: { model }, loadTokenizer: { tok }, eosIds: [], stop: [],
                                     clock: { model.now })
        _ = try engine.load()
        var text = ""
        let record = GenerationRecord(clock: { model.now }, onPiece: { text += $0 })
        record.timer.start()
        engine.generate(prompt: "q", maxNewTokens: 3, listener: record)   // stops inside 日
        XCTAssertEqual(text, "a\u{FFFD}")
        XCTAssertEqual(record.timer.figures(promptTokens: nil)?.generatedTokens, 3)
    }

    func testTextLostByTheRunnerIsMarkedOnceWhereItWas() {
        // TextRunner's pieces for "ok 🎉!" with the emoji's four byte tokens lost (empty), then
        // an end-of-turn token that decodes to nothing.
        let marker = LostTextMarker()
        let shown = ["ok", " ", "", "", "", "", "!", ""].map { marker.push($0) }
        XCTAssertEqual(shown, ["ok", " ", "", "", "", "", "\u{FFFD}!", ""])
        XCTAssertEqual(shown.joined(), "ok \u{FFFD}!")
    }
}
