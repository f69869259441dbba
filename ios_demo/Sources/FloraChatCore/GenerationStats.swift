import Foundation
#if canImport(Darwin)
import Darwin
#elseif canImport(Glibc)
import Glibc
#endif

/// Latency figures of one reply, as docs/metrics.md defines them:
/// TTFT = request start to the first generated token; TPOT = (t_last - t_first) / (n - 1);
/// prefill tokens/s = prompt tokens / TTFT; decode tokens/s = 1000 / TPOT.
/// A rate over a 0 ms interval is undefined (nil), not infinite.
public struct Figures: Equatable, Sendable {
    public let ttftMs: Double
    public let tpotMs: Double?
    public let promptTokens: Int?
    public let generatedTokens: Int

    public init(ttftMs: Double, tpotMs: Double?, promptTokens: Int?, generatedTokens: Int) {
        self.ttftMs = ttftMs
        self.tpotMs = tpotMs
        self.promptTokens = promptTokens
        self.generatedTokens = generatedTokens
    }

    public var prefillTps: Double? {
        guard let p = promptTokens, ttftMs > 0 else { return nil }
        return Double(p) * 1000.0 / ttftMs
    }

    public var decodeTps: Double? {
        guard let t = tpotMs, t > 0 else { return nil }
        return 1000.0 / t
    }

    /// "TTFT 95 ms · TPOT 21.3 ms · 46.9 tok/s · 64 tokens"
    public func summary() -> String {
        var parts = ["TTFT \(Self.fmt(ttftMs, 0)) ms"]
        if let t = tpotMs { parts.append("TPOT \(Self.fmt(t, 1)) ms") }
        if let d = decodeTps { parts.append("\(Self.fmt(d, 1)) tok/s") }
        parts.append("\(generatedTokens) tokens")
        return parts.joined(separator: " · ")
    }

    public func toJSON() -> JSONObject {
        [
            "ttft_ms": JSONValue(ttftMs),
            "tpot_ms": JSONValue(tpotMs),
            "prefill_tps": JSONValue(prefillTps),
            "decode_tps": JSONValue(decodeTps),
            "prompt_tokens": JSONValue(promptTokens),
            "generated_tokens": JSONValue(generatedTokens),
        ]
    }

    static func fmt(_ v: Double, _ digits: Int) -> String { String(format: "%.\(digits)f", v) }

    /// Figures from an LLM runner's stats JSON (ExecuTorch's PyTorchObserver fields, which
    /// the Core ML engine writes too). `generated_tokens` counts the tokens decoded after
    /// the first, so n = generated_tokens + 1 and TPOT = (end - first) / generated_tokens.
    public static func fromRunnerStats(_ stats: JSONObject) -> Figures? {
        let unit = 1000.0 / (stats.number("SCALING_FACTOR_UNITS_PER_SECOND") ?? 1000.0)
        guard let start = stats.number("inference_start_ms"),
              let first = stats.number("first_token_ms"),
              let end = stats.number("inference_end_ms"),
              let decoded = stats.int("generated_tokens") else { return nil }
        return Figures(
            ttftMs: (first - start) * unit,
            tpotMs: decoded > 0 ? (end - first) * unit / Double(decoded) : nil,
            promptTokens: stats.int("prompt_tokens"),
            generatedTokens: decoded + 1
        )
    }
}

/// A monotonic clock in nanoseconds.
public typealias Clock = () -> Int64

/// The process's monotonic clock (nanoseconds).
public let monotonicNanos: Clock = { Int64(DispatchTime.now().uptimeNanoseconds) }

/// Times one generation with the app's own clock: `start` when the request is issued,
/// `token` for every streamed piece. `clock` returns nanoseconds (the monotonic clock in
/// the app, a fake in tests).
public final class GenerationTimer {
    private let clock: Clock
    private var startNs: Int64 = 0
    private var firstNs: Int64 = -1
    private var lastNs: Int64 = -1
    public private(set) var tokens = 0

    public init(clock: @escaping Clock = monotonicNanos) { self.clock = clock }

    public func start() {
        startNs = clock()
        firstNs = -1
        lastNs = -1
        tokens = 0
    }

    public func token() {
        let now = clock()
        if firstNs < 0 { firstNs = now }
        lastNs = now
        tokens += 1
    }

    /// Milliseconds since `start`.
    public func elapsedMs() -> Double { Double(clock() - startNs) / 1e6 }

    /// The figures so far, or nil before the first token.
    public func figures(promptTokens: Int?) -> Figures? {
        if firstNs < 0 { return nil }
        let tpot = tokens > 1 ? Double(lastNs - firstNs) / 1e6 / Double(tokens - 1) : nil
        return Figures(ttftMs: Double(firstNs - startNs) / 1e6, tpotMs: tpot, promptTokens: promptTokens,
                       generatedTokens: tokens)
    }
}

/// Peak memory of this process.
public enum PeakMemory {
    /// Peak resident set size in MiB from `getrusage(RUSAGE_SELF).ru_maxrss` (the same
    /// quantity as Linux's VmHWM): Darwin reports it in bytes, Linux in KiB.
    public static func residentMb() -> Double? {
        var usage = rusage()
        guard getrusage(rusageSelf, &usage) == 0, usage.ru_maxrss > 0 else { return nil }
        return maxrssMb(Int64(usage.ru_maxrss), unitBytes: maxrssUnitBytes)
    }

    #if canImport(Darwin)
    static let maxrssUnitBytes: Int64 = 1
    static let rusageSelf = RUSAGE_SELF
    #else
    static let maxrssUnitBytes: Int64 = 1024
    static let rusageSelf = __rusage_who_t(RUSAGE_SELF.rawValue)
    #endif

    public static func maxrssMb(_ maxrss: Int64, unitBytes: Int64) -> Double {
        Double(maxrss) * Double(unitBytes) / 1_048_576.0
    }

    /// Peak resident memory (VmHWM) in MiB from the text of /proc/self/status, or nil.
    public static func vmHwmMb(procStatus: String) -> Double? {
        for line in procStatus.split(separator: "\n") where line.hasPrefix("VmHWM:") {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            return fields.count > 1 ? Double(fields[1]).map { $0 / 1024.0 } : nil
        }
        return nil
    }
}
