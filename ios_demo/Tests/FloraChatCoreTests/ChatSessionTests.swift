@testable import FloraChatCore
import XCTest

final class ChatSessionTests: XCTestCase {
    let format = ChatFormat(template: "<s>[{prompt}]", stop: ["</s>"], bos: "<s>")

    func testAReplyStreamsWithoutTheStopStringAndIsKeptAsHistory() throws {
        let s = ChatSession(format: format, maxSeqLen: 200, maxNewTokens: 20)
        let r = try s.begin("hi")
        XCTAssertEqual(r.prompt, "<s>[hi]")
        XCTAssertTrue(s.generating)
        s.append("hel")
        XCTAssertEqual(s.append("lo</"), "hello")
        s.append("s>")
        s.finish(figures: Figures(ttftMs: 10, tpotMs: 2, promptTokens: 7, generatedTokens: 3), request: r)
        XCTAssertFalse(s.generating)
        XCTAssertEqual(s.messages.last?.text, "hello")
        let r2 = try s.begin("again")
        XCTAssertEqual(r2.prompt, "<s>[hi]hello</s>[again]")
        XCTAssertEqual(r2.turnsKept, 1)
    }

    func testOldestExchangesAreDroppedWhenTheContextIsFull() throws {
        let s = ChatSession(format: format, maxSeqLen: 40, maxNewTokens: 10)
        for q in ["aaaa", "bbbb", "cccc"] {
            let r = try s.begin(q)
            s.append("xxxx")
            s.finish(figures: nil, request: r)
        }
        // Budget 30 tokens at 1 token/char (x1.1 margin): "[cccc]xxxx</s>[dddd]" fits, more does not.
        let r = try s.begin("dddd")
        XCTAssertEqual(r.turnsKept, 1)
        XCTAssertEqual(r.prompt, "<s>[cccc]xxxx</s>[dddd]")
    }

    func testTheRunnersTokenCountRefinesTheEstimate() throws {
        let s = ChatSession(format: format, maxSeqLen: 40, maxNewTokens: 10)
        let r = try s.begin("aaaa")
        s.finish(figures: Figures(ttftMs: 1, tpotMs: 1, promptTokens: 3, generatedTokens: 2), request: r)
        XCTAssertEqual(s.tokensPerChar, 3.0 / Double("<s>[aaaa]".count), accuracy: 1e-9)
    }

    func testAMessageThatCannotFitIsRefused() {
        let s = ChatSession(format: format, maxSeqLen: 20, maxNewTokens: 10)
        XCTAssertThrowsError(try s.begin(String(repeating: "x", count: 30))) {
            XCTAssertEqual($0 as? ChatError, .tooLong(maxSeqLen: 20, maxNewTokens: 10))
        }
        XCTAssertFalse(s.generating)
        XCTAssertTrue(s.messages.isEmpty)
    }

    func testAFailedReplyIsNotHistoryAndOneReplyRunsAtATime() throws {
        let s = ChatSession(format: format, maxSeqLen: 200, maxNewTokens: 10)
        _ = try s.begin("q")
        XCTAssertThrowsError(try s.begin("again")) { XCTAssertEqual($0 as? ChatError, .busy) }
        s.fail("boom")
        XCTAssertEqual(s.messages.last?.note, "boom")
        XCTAssertEqual(try s.begin("next").prompt, "<s>[next]")
    }

    func testStoppedRepliesAreMarkedAndClearEmptiesTheChat() throws {
        let s = ChatSession(format: format, maxSeqLen: 200, maxNewTokens: 10)
        let r = try s.begin("q")
        s.append("partial")
        s.finish(figures: nil, request: r, stoppedByUser: true)
        XCTAssertEqual(s.messages.last?.note, "stopped")
        XCTAssertNil(s.messages.last?.figures)
        try s.clear()
        XCTAssertTrue(s.messages.isEmpty)
        XCTAssertEqual(try s.begin("q2").prompt, "<s>[q2]")
    }

    func testBlankMessagesAreRefusedAndMessagesHaveDistinctIds() throws {
        let s = ChatSession(format: format, maxSeqLen: 200, maxNewTokens: 10)
        XCTAssertThrowsError(try s.begin("  \n")) { XCTAssertEqual($0 as? ChatError, .empty) }
        let r = try s.begin("q")
        s.finish(figures: nil, request: r)
        XCTAssertEqual(Set(s.messages.map(\.id)).count, 2)
    }
}

final class ReplyLinesTests: XCTestCase {
    func testLinesShowBothClocksTheHistoryAndTheNote() {
        let app = Figures(ttftMs: 95.4, tpotMs: 21.3, promptTokens: 64, generatedTokens: 64)
        let runner = Figures(ttftMs: 90, tpotMs: 20, promptTokens: 64, generatedTokens: 64)
        XCTAssertEqual(replyLines(app: app, runner: runner, note: "stopped", turnsKept: 2), [
            "TTFT 95 ms · TPOT 21.3 ms · 46.9 tok/s · 64 tokens",
            "runner: TTFT 90 ms · TPOT 20.0 ms · 50.0 tok/s · 64 tokens",
            "context: 2 earlier exchange(s)",
            "stopped",
        ])
        XCTAssertEqual(replyLines(app: nil, runner: nil, note: nil, turnsKept: 0), [])
    }
}
