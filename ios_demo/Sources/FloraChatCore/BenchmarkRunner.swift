import Foundation
#if canImport(Darwin)
import Darwin
#elseif canImport(Glibc)
import Glibc
#endif

/// Benchmark mode: load the model once, run warm-up + measured generations back to back,
/// and build the `flora-chat-bench/1` report (format: android_demo/README.md, "Benchmark
/// mode"; the iOS differences: ios_demo/README.md). Every run keeps the app clock's
/// figures and the runner's own stats (`observer`), which flora-bench prefers.
public final class BenchmarkRunner {
    public static let format = "flora-chat-bench/1"

    private let engine: LlmEngine
    private let spec: BenchmarkSpec
    private let chat: ChatFormat
    private let clock: Clock
    private let sleep: (Int) -> Void
    private let progress: (String) -> Void
    private var runs: [JSONValue] = []

    public init(engine: LlmEngine, spec: BenchmarkSpec, chat: ChatFormat, clock: @escaping Clock = monotonicNanos,
                sleep: @escaping (Int) -> Void = { Thread.sleep(forTimeInterval: Double($0) / 1000) },
                progress: @escaping (String) -> Void = { _ in }) {
        self.engine = engine
        self.spec = spec
        self.chat = chat
        self.clock = clock
        self.sleep = sleep
        self.progress = progress
    }

    /// Runs everything; never throws: a failure becomes `status: error` in the report.
    public func run(header: JSONObject) -> JSONObject {
        var report = header
        report["config"] = .object(spec.toJSON())
        do {
            progress("loading \(spec.model)")
            report["load_ms"] = .number(try engine.load())
            let total = spec.warmup + spec.runs
            for i in 0..<total {
                if spec.cooldownMs > 0 { sleep(spec.cooldownMs) }
                let warm = i < spec.warmup
                progress(warm ? "warm-up \(i + 1)/\(spec.warmup)" : "run \(i - spec.warmup + 1)/\(spec.runs)")
                runs.append(.object(try one(index: i, warmup: warm)))
            }
            report["status"] = "ok"
            report["error"] = .null
        } catch {
            report["status"] = "error"
            report["error"] = .string(describe(error))
        }
        report["runs"] = .array(runs)
        return report
    }

    private func one(index: Int, warmup: Bool) throws -> JSONObject {
        let promptIndex = (warmup ? index : index - spec.warmup) % spec.prompts.count
        let user = spec.prompts[promptIndex]
        let prompt = spec.chatTemplate ? chat.format([], user: user) : chat.normalize(user)
        var text = ""
        let record = GenerationRecord(clock: clock) { text += $0 }
        record.timer.start()
        engine.generate(prompt: prompt, maxNewTokens: spec.maxNewTokens, listener: record)
        let wallMs = record.timer.elapsedMs()
        if let error = record.error { throw RunError("generation \(index + 1) failed: \(error)") }
        let observer = record.runnerStats
        let promptTokens = observer?.int("prompt_tokens") ?? engine.countTokens(prompt)
        guard let figures = record.timer.figures(promptTokens: promptTokens) else {
            throw RunError("generation \(index + 1) produced no token")
        }
        let head: JSONObject = ["index": JSONValue(index), "warmup": JSONValue(warmup), "prompt_index": JSONValue(promptIndex)]
        let tail: JSONObject = ["wall_ms": JSONValue(wallMs), "text": JSONValue(text),
                                "observer": observer.map { .object($0) } ?? .null]
        return head.merging(figures.toJSON()).merging(tail)
    }

    /// The report's first fields: who ran what, where and when. `model.pte` names the
    /// program that runs (null on Core ML); `engine`, `mlpackage` and `compute_units` are the
    /// iOS additions to `model` (see ios_demo/README.md).
    public static func header(runId: String, modelDir: String, manifest: ExportManifest?, engine: EngineKind?,
                              computeUnits: String?, app: JSONObject, device: JSONObject, startedMs: Int64) -> JSONObject {
        let model: JSONObject = [
            "dir": JSONValue(modelDir),
            "pte": JSONValue(engine == .coreML ? nil : manifest?.pte?.lastPathComponent),
            "tokenizer": JSONValue(manifest?.tokenizer.lastPathComponent),
            "target": JSONValue(manifest?.target),
            "quant": JSONValue(manifest?.quant),
            "engine": JSONValue(engine?.rawValue),
            "mlpackage": JSONValue(engine == .coreML ? manifest?.mlpackage?.lastPathComponent : nil),
            "compute_units": JSONValue(engine == .coreML ? computeUnits : nil),
        ]
        return [
            "format": JSONValue(format),
            "run_id": JSONValue(runId),
            "status": "running",
            "error": nil,
            "app": .object(app),
            "device": .object(device),
            "model": .object(model),
            "started_ms": JSONValue(startedMs),
        ]
    }

    /// A report for a launch that could not start (bad arguments, unusable export).
    public static func failed(header: JSONObject, error: String) -> JSONObject {
        var r = header
        r["status"] = "error"
        r["error"] = .string(error)
        r["runs"] = []
        return r
    }

    /// `report` with `peak_rss_mb` and `finished_ms` added, as the app writes it last.
    public static func finished(_ report: JSONObject, peakRssMb: Double?, finishedMs: Int64) -> JSONObject {
        var r = report
        r["peak_rss_mb"] = JSONValue(peakRssMb)
        r["finished_ms"] = JSONValue(finishedMs)
        return r
    }

    /// Writes `dir/<run_id>.json` atomically: `<run_id>.json.tmp`, then rename(2), so a
    /// reader never sees a partial file. Returns the file.
    @discardableResult
    public static func write(_ report: JSONObject, runId: String, dir: URL) throws -> URL {
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let out = dir.appendingPathComponent("\(runId).json")
        let tmp = dir.appendingPathComponent("\(runId).json.tmp")
        try Data(Json.write(report).utf8).write(to: tmp)
        guard rename(tmp.path, out.path) == 0 else {
            throw RunError("could not rename \(tmp.path) to \(out.path) (errno \(errno))")
        }
        return out
    }
}

/// A generation or report failure, with its one-line message.
public struct RunError: Error, Equatable, CustomStringConvertible, LocalizedError {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
    public var errorDescription: String? { message }
}
