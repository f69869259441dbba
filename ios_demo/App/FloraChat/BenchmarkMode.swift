import FloraChatCore
import Foundation

/// Benchmark mode, started by launch arguments:
///
///     xcrun devicectl device process launch --terminate-existing --device UDID \
///         dev.flora.chat --bench --model ios --runs 5 --engine coreml
///
/// (arguments and report: ios_demo/README.md, "Benchmark mode"). Loads the model once,
/// runs warm-up + measured generations, writes Documents/bench/<run_id>.json atomically,
/// then ends the process so the next launch measures a fresh load and its own peak memory.
final class BenchmarkMode: ObservableObject {
    @Published private(set) var lines: [String] = []
    private let arguments: [String]
    private var started = false

    init(arguments: [String]) {
        self.arguments = arguments
    }

    /// Runs once per launch (a view may appear more than once).
    func start() {
        guard !started else { return }
        started = true
        Thread.detachNewThread { [self] in runAndExit() }
    }

    private func runAndExit() {
        let started = AppEnvironment.nowMs()
        let docs = AppEnvironment.documents
        let extras = (try? BenchmarkSpec.arguments(arguments)) ?? [:]
        let runId = extras["run_id"].flatMap { BenchmarkSpec.isPlainName($0) ? $0 : nil } ?? "bench-\(started)"
        var modelDir = extras["model"].map { ModelCatalog.resolve($0, under: docs).path } ?? ""
        let report: JSONObject
        do {
            let spec = try BenchmarkSpec.fromArguments(arguments, now: started) { path in
                try String(contentsOf: ModelCatalog.resolve(path, under: docs), encoding: .utf8)
            }
            let dir = ModelCatalog.resolve(spec.model, under: docs)
            modelDir = dir.path
            let manifest = try ExportManifest.load(dir)
            let kind = spec.engine ?? manifest.engines[0]
            guard manifest.engines.contains(kind) else {
                throw BenchmarkError(problem: "\(dir.lastPathComponent) has no \(kind.title) program",
                                     fix: "pass --engine \(manifest.engines.map(\.rawValue).joined(separator: " or --engine "))")
            }
            let header = BenchmarkRunner.header(runId: spec.runId, modelDir: dir.path, manifest: manifest, engine: kind,
                                                computeUnits: spec.computeUnits, app: AppEnvironment.app(),
                                                device: AppEnvironment.device(), startedMs: started)
            let engine = AppEnvironment.makeEngine(kind, manifest: manifest, computeUnits: spec.computeUnits)
            defer { engine.close() }
            say("\(kind.title): \(manifest.label)")
            report = BenchmarkRunner(engine: engine, spec: spec, chat: manifest.chat, progress: say).run(header: header)
        } catch {
            let header = BenchmarkRunner.header(runId: runId, modelDir: modelDir, manifest: nil,
                                                engine: extras["engine"].flatMap(EngineKind.init(rawValue:)),
                                                computeUnits: extras["compute_units"], app: AppEnvironment.app(),
                                                device: AppEnvironment.device(), startedMs: started)
            report = BenchmarkRunner.failed(header: header, error: describe(error))
        }
        let done = BenchmarkRunner.finished(report, peakRssMb: PeakMemory.residentMb(), finishedMs: AppEnvironment.nowMs())
        do {
            let file = try BenchmarkRunner.write(done, runId: runId, dir: AppEnvironment.benchDirectory)
            say("\(done.string("status") ?? "?"): wrote Documents/bench/\(file.lastPathComponent)")
        } catch {
            say("could not write the report: \(describe(error))")
        }
        Thread.sleep(forTimeInterval: 0.3)
        exit(0)
    }

    private func say(_ line: String) {
        NSLog("FloraBench: %@", line)
        DispatchQueue.main.async { self.lines.append(line) }
    }
}
