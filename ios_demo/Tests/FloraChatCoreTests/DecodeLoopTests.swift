@testable import FloraChatCore
import XCTest

/// A scripted stateful model: answers every call with a one-hot logit row for the next id
/// of `script`, records the calls, and advances a fake clock (100 ms per prefill, 20 ms
/// per decode step). Not Core ML: it checks the app's loop against the package contract.
final class ScriptedStepModel: StepModel {
    let maxContext: Int
    let vocab: Int
    private let script: [Int]
    private(set) var calls: [(ids: [Int32], mask: CausalMask)] = []
    private(set) var resets = 0
    private var cached = 0
    private var sinceReset = 0
    var now: Int64 = 0

    init(script: [Int], vocab: Int, maxContext: Int = 64) {
        self.script = script
        self.vocab = vocab
        self.maxContext = maxContext
    }

    func reset() throws {
        resets += 1
        cached = 0
        sinceReset = 0
    }

    func step(ids: [Int32], mask: CausalMask) throws -> [Float] {
        // The package's contract: T = tokens in the cache after this call.
        cached += ids.count
        guard mask.rows == ids.count, mask.cols == cached else {
            throw RunError("mask [\(mask.rows), \(mask.cols)] for \(ids.count) ids with \(cached) cached")
        }
        now += sinceReset == 0 ? 100_000_000 : 20_000_000
        let next = script[min(sinceReset, script.count - 1)]
        sinceReset += 1
        calls.append((ids, mask))
        var logits = [Float](repeating: -1, count: vocab)
        logits[next] = 5
        return logits
    }
}

final class DecodeLoopTests: XCTestCase {
    func testMasksFollowTheCoreMlContract() {
        let inf = -Float.infinity
        XCTAssertEqual(CausalMask.prefill(3).values, [0, inf, inf, 0, 0, inf, 0, 0, 0])
        XCTAssertEqual(CausalMask.decode(total: 5).values, [0, 0, 0, 0, 0])
        // Two new tokens after three cached: query 0 sees keys 0...3, query 1 sees 0...4.
        XCTAssertEqual(CausalMask(rows: 2, cols: 5).values, [0, 0, 0, 0, inf, 0, 0, 0, 0, 0])
    }

    func testArgmaxTakesTheFirstMaximumAndSkipsNaN() {
        XCTAssertEqual(argmax([0.5, 2, 2, -1]), 1)
        XCTAssertEqual(argmax([.nan, 1, 3, .nan]), 2)
    }

    func testLoopPrefillsThenDecodesOneTokenPerCallUntilAStopId() throws {
        let model = ScriptedStepModel(script: [7, 8, 9, 2, 5], vocab: 10)
        var emitted: [Int] = []
        let stats = try GreedyLoop(model: model, clock: { model.now })
            .run(prompt: [1, 4, 4, 6], maxNewTokens: 10, stopIds: [2], stop: AtomicFlag()) { emitted.append($0) }
        XCTAssertEqual(emitted, [7, 8, 9])
        XCTAssertEqual(model.resets, 1)
        XCTAssertEqual(model.calls.map(\.ids), [[1, 4, 4, 6], [7], [8], [9]])
        XCTAssertEqual(model.calls.map(\.mask), [.prefill(4), .decode(total: 5), .decode(total: 6), .decode(total: 7)])
        // The stop token is sampled (one more call) and counted, as ExecuTorch's runner does.
        XCTAssertEqual([stats.emitted, stats.sampled], [3, 4])
        let f = try XCTUnwrap(Figures.fromRunnerStats(stats.toJSON()))
        XCTAssertEqual(f.ttftMs, 100, accuracy: 1e-9)
        XCTAssertEqual(try XCTUnwrap(f.tpotMs), 20, accuracy: 1e-9)
        XCTAssertEqual(f.generatedTokens, 4)
        XCTAssertEqual(f.promptTokens, 4)
    }

    func testLoopStopsAtTheLimitTheContextOrTheStopButtonWithoutAnExtraCall() throws {
        let model = ScriptedStepModel(script: [3], vocab: 5)
        var n = 0
        _ = try GreedyLoop(model: model).run(prompt: [1, 2], maxNewTokens: 4, stopIds: [], stop: AtomicFlag()) { _ in n += 1 }
        XCTAssertEqual(n, 4)
        XCTAssertEqual(model.calls.count, 4)              // prefill + 3 decode steps for 4 tokens
        let small = ScriptedStepModel(script: [3], vocab: 5, maxContext: 8)
        let stats = try GreedyLoop(model: small).run(prompt: [1, 1, 1, 1, 1, 1], maxNewTokens: 10, stopIds: [],
                                                     stop: AtomicFlag()) { _ in }
        XCTAssertEqual(stats.emitted, 2)
        XCTAssertEqual(small.calls.last?.mask, .decode(total: 7))
        let flag = AtomicFlag()
        let stopped = try GreedyLoop(model: ScriptedStepModel(script: [3], vocab: 5))
            .run(prompt: [1], maxNewTokens: 10, stopIds: [], stop: flag) { _ in flag.set() }
        XCTAssertEqual(stopped.emitted, 1)
        XCTAssertThrowsError(try GreedyLoop(model: small).run(prompt: Array(repeating: 1, count: 8), maxNewTokens: 4,
                                                              stopIds: [], stop: AtomicFlag()) { _ in }) {
            XCTAssertEqual("\($0)", "the prompt has 8 tokens; the model's context holds 8")
        }
    }

    func testTheCoreMlEngineStreamsTextAndRunnerStatsIntoABenchmarkReport() throws {
        let tok = FakeTokenizer()
        let eot = tok.id("<|eot_id|>")
        let script = [tok.id("h")] + tok.eAcute + [tok.id("!"), eot]
        let model = ScriptedStepModel(script: script, vocab: tok.vocab.count)
        let engine = StepModelEngine(loadModel: { model }, loadTokenizer: { tok }, eosIds: [tok.id("<|end_of_text|>")],
                                     stop: ["<|eot_id|>"], clock: { model.now })
        XCTAssertEqual(try engine.load(), 0)
        var pieces: [String] = []
        var stats: String?
        engine.generate(prompt: "<|begin_of_text|>[hello]", maxNewTokens: 16,
                        listener: ClosureListener(onToken: { pieces.append($0) }, onStats: { stats = $0 }))
        XCTAssertEqual(pieces, ["h", "", "é", "!"])
        XCTAssertEqual(model.calls.first?.ids.map(Int.init), try tok.encode("<|begin_of_text|>[hello]"))
        let observer = try Json.parseObject(try XCTUnwrap(stats))
        XCTAssertEqual(observer.int("prompt_tokens"), 5)
        XCTAssertEqual(observer.int("generated_tokens"), 4)              // h, 0xC3, 0xA9, ! and the stop token
        XCTAssertEqual(engine.countTokens("[hello]"), 4)

        let spec = BenchmarkSpec(model: "ios", runId: "r", prompts: ["hello"], warmup: 0, runs: 2, maxNewTokens: 16,
                                 chatTemplate: true, cooldownMs: 0, engine: .coreML)
        let chat = ChatFormat(template: "<|begin_of_text|>[{prompt}]", stop: ["<|eot_id|>"], bos: "<|begin_of_text|>")
        let report = BenchmarkRunner(engine: engine, spec: spec, chat: chat, clock: { model.now }).run(header: [:])
        let run = try XCTUnwrap(report.list("runs")?.last?.objectValue)
        XCTAssertEqual(run.string("text"), "hé!")
        XCTAssertEqual(run.int("generated_tokens"), 4)                 // four onToken calls, one per token
        XCTAssertEqual(run.obj("observer")?.int("generated_tokens"), 4)
        XCTAssertEqual(try XCTUnwrap(run.number("ttft_ms")), 100, accuracy: 1e-9)
        XCTAssertEqual(try XCTUnwrap(run.number("tpot_ms")), 20, accuracy: 1e-9)
    }

    func testAnEngineThatIsNotLoadedReportsAnError() {
        let engine = StepModelEngine(loadModel: { ScriptedStepModel(script: [1], vocab: 2) }, loadTokenizer: { FakeTokenizer() },
                                     eosIds: [], stop: [])
        var error: String?
        engine.generate(prompt: "h", maxNewTokens: 2, listener: ClosureListener(onToken: { _ in }, onError: { error = $0 }))
        XCTAssertEqual(error, "load() the model first")
    }
}
