@testable import FloraChatCore
import Foundation

/// A test engine: streams fixed pieces and a stats JSON, advancing a fake clock by
/// `prefillNs` before the first piece and `stepNs` between pieces. Not Core ML or
/// ExecuTorch: it stands in for the model so the app's own logic can be checked anywhere.
final class ScriptedEngine: LlmEngine {
    private let pieces: [String]
    private let prefillNs: Int64
    private let stepNs: Int64
    private let failOnCall: Int
    var now: Int64 = 0
    private(set) var prompts: [String] = []
    private(set) var closed = false

    init(pieces: [String], prefillNs: Int64 = 100_000_000, stepNs: Int64 = 20_000_000, failOnCall: Int = -1) {
        self.pieces = pieces
        self.prefillNs = prefillNs
        self.stepNs = stepNs
        self.failOnCall = failOnCall
    }

    func load() throws -> Double { 42.0 }

    func generate(prompt: String, maxNewTokens: Int, listener: GenerationListener) {
        prompts.append(prompt)
        if prompts.count == failOnCall {
            listener.onError("scripted failure")
            return
        }
        let start = now / 1_000_000
        now += prefillNs
        let first = now / 1_000_000
        let emitted = Array(pieces.prefix(maxNewTokens))
        for (i, p) in emitted.enumerated() {
            if i > 0 { now += stepNs }
            listener.onToken(p)
        }
        listener.onStats("""
            {"prompt_tokens": \(prompt.utf16.count), "generated_tokens": \(emitted.count - 1),
            "inference_start_ms": \(start), "first_token_ms": \(first), "inference_end_ms": \(now / 1_000_000),
            "SCALING_FACTOR_UNITS_PER_SECOND": 1000}
            """)
    }

    func stop() {}

    func close() { closed = true }
}
