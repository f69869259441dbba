import Foundation

/// The additive causal mask of one call of the Core ML package (`causalMask`, shape
/// [1, 1, S, T], README "iOS / Core ML"): S new tokens, T tokens in the cache after the
/// call. Query i (position T - S + i) may attend to key j when j <= T - S + i: 0 there,
/// -inf elsewhere.
public struct CausalMask: Equatable, Sendable {
    public let rows: Int
    public let cols: Int

    public init(rows: Int, cols: Int) {
        precondition(rows >= 1 && cols >= rows, "a causal mask needs 1 <= S <= T (got S=\(rows), T=\(cols))")
        self.rows = rows
        self.cols = cols
    }

    /// The prompt's call: [P, P], lower triangle open.
    public static func prefill(_ count: Int) -> CausalMask { CausalMask(rows: count, cols: count) }

    /// One new token with `total` tokens in the cache after the call: [1, total], all open.
    public static func decode(total: Int) -> CausalMask { CausalMask(rows: 1, cols: total) }

    public func value(row i: Int, col j: Int) -> Float { j <= cols - rows + i ? 0 : -Float.infinity }

    /// Row-major values (S * T).
    public var values: [Float] {
        var out = [Float](repeating: 0, count: rows * cols)
        for i in 0..<rows {
            for j in 0..<cols { out[i * cols + j] = value(row: i, col: j) }
        }
        return out
    }
}

/// One stateful decoder step: the Core ML package in the app (`MLModel` + `MLState`), a
/// scripted model in the tests.
public protocol StepModel: AnyObject {
    /// Tokens the cache holds (`flora.max_context`).
    var maxContext: Int { get }

    /// Start a new sequence (a fresh state: an empty cache).
    func reset() throws

    /// Feed `ids` (the S new tokens) with `mask` ([S, T]); returns the logits of the last one.
    func step(ids: [Int32], mask: CausalMask) throws -> [Float]
}

/// The index of the largest logit (the first on ties; NaN never wins).
public func argmax(_ logits: [Float]) -> Int {
    var best = 0
    var bestValue = -Float.infinity
    for (i, v) in logits.enumerated() where v > bestValue {
        best = i
        bestValue = v
    }
    return best
}

/// What one generation did, in ExecuTorch's PyTorchObserver fields so that flora-bench
/// reads the Core ML engine's runs like ExecuTorch's: `generated_tokens` counts the tokens
/// sampled after the first, a final stop token included (as ExecuTorch's runner counts
/// it), and `inference_end_ms` follows the last model call; times are milliseconds on the
/// monotonic clock.
public struct LoopStats: Equatable, Sendable {
    public let promptTokens: Int
    /// Tokens passed to `emit` (stop tokens are not).
    public let emitted: Int
    /// Tokens sampled: `emitted`, plus one when a stop token ended the reply.
    public let sampled: Int
    public let startMs: Double
    public let promptEvalEndMs: Double
    public let firstTokenMs: Double
    public let endMs: Double

    public func toJSON() -> JSONObject {
        [
            "prompt_tokens": JSONValue(promptTokens),
            "generated_tokens": JSONValue(max(sampled - 1, 0)),
            "inference_start_ms": JSONValue(startMs),
            "prompt_eval_end_ms": JSONValue(promptEvalEndMs),
            "first_token_ms": JSONValue(firstTokenMs),
            "inference_end_ms": JSONValue(endMs),
            "SCALING_FACTOR_UNITS_PER_SECOND": 1000,
        ]
    }
}

/// Greedy decoding with a `StepModel`: prefill the prompt with a [P, P] mask, then one
/// token per call with a [1, P + i + 1] mask, until a stop id, `maxNewTokens`, the end of
/// the context or `stop`.
public final class GreedyLoop {
    private let model: StepModel
    private let clock: Clock

    public init(model: StepModel, clock: @escaping Clock = monotonicNanos) {
        self.model = model
        self.clock = clock
    }

    /// Calls `emit` with every generated id (stop ids are not emitted). `startNs`: when the
    /// request started (before tokenization), default now.
    public func run(prompt: [Int], maxNewTokens: Int, stopIds: Set<Int>, stop: AtomicFlag, startNs: Int64? = nil,
                    emit: (Int) -> Void) throws -> LoopStats {
        let p = prompt.count
        guard p >= 1 else { throw RunError("the prompt encodes to no token") }
        guard p < model.maxContext else {
            throw RunError("the prompt has \(p) tokens; the model's context holds \(model.maxContext)")
        }
        let limit = min(maxNewTokens, model.maxContext - p)
        let start = Double(startNs ?? clock()) / 1e6
        try model.reset()
        var next = argmax(try model.step(ids: prompt.map { Int32($0) }, mask: .prefill(p)))
        let promptEnd = ms()
        var firstToken = promptEnd
        var emitted = 0
        while !stopIds.contains(next) && emitted < limit {
            if emitted == 0 { firstToken = ms() }
            emit(next)
            emitted += 1
            if emitted == limit || stop.isSet { break }
            next = argmax(try model.step(ids: [Int32(next)], mask: .decode(total: p + emitted)))
        }
        let sampled = emitted + (stopIds.contains(next) ? 1 : 0)
        return LoopStats(promptTokens: p, emitted: emitted, sampled: sampled, startMs: start, promptEvalEndMs: promptEnd,
                         firstTokenMs: firstToken, endMs: ms())
    }

    private func ms() -> Double { Double(clock()) / 1e6 }
}

/// An `LlmEngine` made of a step model and a tokenizer: the Core ML engine of the app,
/// with everything except the `MLModel` calls and the tokenizer library in this package.
public final class StepModelEngine: LlmEngine {
    private let loadModel: () throws -> StepModel
    private let loadTokenizer: () throws -> TextTokenizer
    private let eosIds: [Int]
    private let stopStrings: [String]
    private let clock: Clock
    private let stopFlag = AtomicFlag()
    private var model: StepModel?
    private var tokenizer: TextTokenizer?
    private var stopIds: Set<Int> = []

    public init(loadModel: @escaping () throws -> StepModel, loadTokenizer: @escaping () throws -> TextTokenizer,
                eosIds: [Int], stop: [String], clock: @escaping Clock = monotonicNanos) {
        self.loadModel = loadModel
        self.loadTokenizer = loadTokenizer
        self.eosIds = eosIds
        stopStrings = stop
        self.clock = clock
    }

    public func load() throws -> Double {
        let t0 = clock()
        let tok = try loadTokenizer()
        model = try loadModel()
        tokenizer = tok
        stopIds = stopTokenIds(eosIds: eosIds, stop: stopStrings, tokenizer: tok)
        return Double(clock() - t0) / 1e6
    }

    public func generate(prompt: String, maxNewTokens: Int, listener: GenerationListener) {
        guard let model, let tokenizer else {
            listener.onError("load() the model first")
            return
        }
        stopFlag.set(false)
        let t0 = clock()
        do {
            let ids = try tokenizer.encode(prompt)
            let stream = TokenStream(tokenizer: tokenizer)
            // One onToken per generated token (the timers count them); a character still
            // incomplete after the last token comes as onText (U+FFFD), never dropped.
            let stats = try GreedyLoop(model: model, clock: clock).run(
                prompt: ids, maxNewTokens: maxNewTokens, stopIds: stopIds, stop: stopFlag, startNs: t0
            ) { id in listener.onToken(stream.push(id)) }
            let rest = stream.finish()
            if !rest.isEmpty { listener.onText(rest) }
            listener.onStats(Json.write(stats.toJSON()))
        } catch {
            listener.onError(describe(error))
        }
    }

    public func stop() { stopFlag.set() }

    public func close() {
        model = nil
        tokenizer = nil
    }

    public func countTokens(_ prompt: String) -> Int? { try? tokenizer?.encode(prompt).count }
}
