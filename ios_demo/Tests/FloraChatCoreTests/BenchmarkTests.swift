@testable import FloraChatCore
import XCTest

final class BenchmarkTests: XCTestCase {
    let format = ChatFormat(template: "<s>[{prompt}]", stop: ["</s>"], bos: "<s>")
    let noFiles: (String) throws -> String = { throw RunError("no file \($0)") }

    func testArgumentsHaveDefaultsAndFixedPrompts() throws {
        let s = try BenchmarkSpec.fromArguments(["/app/FloraChat", "--bench", "--model", "ios"], now: 7, readFile: noFiles)
        XCTAssertEqual(s.runId, "bench-7")
        XCTAssertEqual(s.prompts, BenchmarkSpec.fixedPrompts)
        XCTAssertEqual([s.warmup, s.runs, s.maxNewTokens, s.cooldownMs], [1, 5, 64, 0])
        XCTAssertFalse(s.chatTemplate)
        XCTAssertNil(s.engine)
        XCTAssertEqual(s.computeUnits, "all")
        XCTAssertTrue(BenchmarkSpec.isBenchmarkLaunch(["/app/FloraChat", "--bench"]))
        XCTAssertFalse(BenchmarkSpec.isBenchmarkLaunch(["/app/FloraChat", "-NSDocumentRevisionsDebugMode", "YES"]))
    }

    func testArgumentFormsAndPromptsFileWinsOverPrompt() throws {
        let files = ["prompts.json": #"{"prompts": ["one", "two"]}"#]
        let argv = ["--bench", "--model=/var/m", "--prompts-file", "prompts.json", "--prompt", "ignored", "--runs", "3",
                    "--warmup", "0", "--chat_template", "--engine", "executorch", "-AppleLanguages", "(en)"]
        let s = try BenchmarkSpec.fromArguments(argv, now: 1) { try XCTUnwrap(files[$0]) }
        XCTAssertEqual(s.model, "/var/m")
        XCTAssertEqual(s.prompts, ["one", "two"])
        XCTAssertEqual([s.warmup, s.runs], [0, 3])
        XCTAssertTrue(s.chatTemplate)
        XCTAssertEqual(s.engine, .executorch)
    }

    func testBadArgumentsNameTheArgumentAndTheFix() {
        let cases: [[String]] = [
            ["--bench"],
            ["--model", "m", "--runs", "0"],
            ["--model", "m", "--max_new_tokens", "many"],
            ["--model", "m", "--run_id", "../escape"],
            ["--model", "m", "--prompts_file", "p.json"],
            ["--model", "m", "--engine", "metal"],
            ["--model", "m", "--run", "5"],
            ["--model", "m", "--compute_units", "npu"],
            ["--model", "m", "--chat_template", "maybe"],
        ]
        let messages = cases.map { argv -> String in
            do {
                _ = try BenchmarkSpec.fromArguments(argv, now: 1) { _ in #"{"prompts": []}"# }
                return "no error"
            } catch {
                XCTAssertTrue(error is BenchmarkError, "\(error)")
                return "\(error)"
            }
        }
        XCTAssertTrue(messages[0].contains("--model"), messages[0])
        XCTAssertTrue(messages[1].contains("--runs N with N >= 1"), messages[1])
        XCTAssertTrue(messages[2].contains("max_new_tokens"), messages[2])
        XCTAssertTrue(messages[3].contains("run_id"), messages[3])
        XCTAssertTrue(messages[4].contains("no prompts"), messages[4])
        XCTAssertTrue(messages[5].contains("--engine coreml or --engine executorch"), messages[5])
        XCTAssertTrue(messages[6].contains("unknown launch argument --run"), messages[6])
        XCTAssertTrue(messages[7].contains("all|cpu|gpu|ane"), messages[7])
        XCTAssertTrue(messages[8].contains("true or false"), messages[8])
    }

    func testReportHoldsWarmupAndRunsWithBothClocks() throws {
        let engine = ScriptedEngine(pieces: ["a", "b", "c", "d", "e"])
        let spec = makeSpec(warmup: 1, runs: 3, prompts: ["p0", "p1"], chatTemplate: true)
        let report = BenchmarkRunner(engine: engine, spec: spec, chat: format, clock: { engine.now }).run(header: header(spec))
        XCTAssertEqual(report.string("status"), "ok")
        XCTAssertEqual(report.number("load_ms"), 42.0)
        let runs = try XCTUnwrap(report.list("runs")).compactMap(\.objectValue)
        XCTAssertEqual(runs.map { $0.bool("warmup") }, [true, false, false, false])
        XCTAssertEqual(runs.map { $0.int("prompt_index") }, [0, 0, 1, 0])
        XCTAssertEqual(engine.prompts, ["<s>[p0]", "<s>[p0]", "<s>[p1]", "<s>[p0]"])
        let r = runs[1]
        XCTAssertEqual(try XCTUnwrap(r.number("ttft_ms")), 100.0, accuracy: 1e-9)
        XCTAssertEqual(try XCTUnwrap(r.number("tpot_ms")), 20.0, accuracy: 1e-9)
        XCTAssertEqual(r.int("generated_tokens"), 5)
        XCTAssertEqual(r.int("prompt_tokens"), 7)
        XCTAssertEqual(r.string("text"), "abcde")
        XCTAssertEqual(r.obj("observer")?.number("generated_tokens"), 4.0)
        XCTAssertEqual(r.keys, ["index", "warmup", "prompt_index", "ttft_ms", "tpot_ms", "prefill_tps", "decode_tps",
                                "prompt_tokens", "generated_tokens", "wall_ms", "text", "observer"])
        let done = BenchmarkRunner.finished(report, peakRssMb: PeakMemory.residentMb(), finishedMs: 1_764_470_012_000)
        let back = try Json.parseObject(Json.write(done))
        XCTAssertEqual(back.string("format"), BenchmarkRunner.format)
        XCTAssertEqual(done.keys, ["format", "run_id", "status", "error", "app", "device", "model", "started_ms",
                                   "config", "load_ms", "runs", "peak_rss_mb", "finished_ms"])
        XCTAssertEqual(back.keys, done.keys.sorted())          // written with sorted keys
        XCTAssertEqual(back, try Json.parseObject(Json.write(back)))
        // The Python suite reads this report with flora-bench's parser (tests/test_ios_demo.py).
        if let out = ProcessInfo.processInfo.environment["FLORA_REPORT_OUT"] {
            let url = URL(fileURLWithPath: out)
            try BenchmarkRunner.write(done, runId: url.deletingPathExtension().lastPathComponent,
                                      dir: url.deletingLastPathComponent())
        }
    }

    func testAFailedGenerationEndsTheRunWithAnErrorReport() {
        let engine = ScriptedEngine(pieces: ["a", "b"], failOnCall: 3)
        let spec = makeSpec(warmup: 1, runs: 5)
        let report = BenchmarkRunner(engine: engine, spec: spec, chat: format, clock: { engine.now }).run(header: header(spec))
        XCTAssertEqual(report.string("status"), "error")
        XCTAssertEqual(report.string("error"), "generation 3 failed: scripted failure")
        XCTAssertEqual(report.list("runs")?.count, 2)
    }

    func testAFailedLaunchStillWritesAReport() {
        let h = BenchmarkRunner.header(runId: "r1", modelDir: "/nowhere", manifest: nil, engine: nil, computeUnits: nil,
                                       app: [:], device: [:], startedMs: 5)
        let report = BenchmarkRunner.failed(header: h, error: "no manifest")
        XCTAssertEqual(report.string("status"), "error")
        XCTAssertEqual(report.obj("model")?["pte"], .null)
        XCTAssertEqual(report.list("runs"), [])
    }

    func testCooldownSleepsBeforeEveryGeneration() {
        let engine = ScriptedEngine(pieces: ["a", "b"])
        var slept: [Int] = []
        let spec = BenchmarkSpec(model: "/m", runId: "r1", prompts: ["p"], warmup: 1, runs: 2, maxNewTokens: 16,
                                 chatTemplate: false, cooldownMs: 250)
        _ = BenchmarkRunner(engine: engine, spec: spec, chat: format, clock: { engine.now }, sleep: { slept.append($0) })
            .run(header: header(spec))
        XCTAssertEqual(slept, [250, 250, 250])
    }

    func testTheReportIsWrittenAtomically() throws {
        let dir = try temporaryDirectory().appendingPathComponent("bench")
        let first = try BenchmarkRunner.write(["status": "ok", "n": 1], runId: "r1", dir: dir)
        let second = try BenchmarkRunner.write(["status": "ok", "n": 2], runId: "r1", dir: dir)
        XCTAssertEqual(first, second)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), ["r1.json"])
        XCTAssertEqual(try Json.parseObject(String(contentsOf: second, encoding: .utf8)).int("n"), 2)
    }

    func testCoreMlRunsRecordTheEngineAndPackage() throws {
        let names = ["manifest.json", "model.mlpackage", "model.pte", "tokenizer.json"]
        let m = try ExportManifest.parse(dir: URL(fileURLWithPath: "/d/ios"), text: ExportManifestTests.iosManifest,
                                         fileNames: names)
        let model = try XCTUnwrap(BenchmarkRunner.header(runId: "r", modelDir: "ios", manifest: m, engine: .coreML,
                                                         computeUnits: "ane", app: [:], device: [:], startedMs: 0).obj("model"))
        XCTAssertEqual(model.keys, ["dir", "pte", "tokenizer", "target", "quant", "engine", "mlpackage", "compute_units"])
        XCTAssertEqual(model.string("engine"), "coreml")
        XCTAssertEqual(model["pte"], .null)
        XCTAssertEqual(model.string("mlpackage"), "model.mlpackage")
        XCTAssertEqual(model.string("compute_units"), "ane")
        let et = try XCTUnwrap(BenchmarkRunner.header(runId: "r", modelDir: "ios", manifest: m, engine: .executorch,
                                                      computeUnits: "ane", app: [:], device: [:], startedMs: 0).obj("model"))
        XCTAssertEqual(et.string("pte"), "model.pte")
        XCTAssertEqual(et["mlpackage"], .null)
        XCTAssertEqual(et["compute_units"], .null)
    }

    private func makeSpec(warmup: Int, runs: Int, prompts: [String] = ["p"], chatTemplate: Bool = false) -> BenchmarkSpec {
        BenchmarkSpec(model: "/m", runId: "r1", prompts: prompts, warmup: warmup, runs: runs, maxNewTokens: 16,
                      chatTemplate: chatTemplate, cooldownMs: 0)
    }

    private func header(_ spec: BenchmarkSpec) -> JSONObject {
        BenchmarkRunner.header(runId: spec.runId, modelDir: spec.model, manifest: nil, engine: .executorch, computeUnits: nil,
                               app: ["package": "dev.flora.chat", "version": "0.1.0"],
                               device: ["manufacturer": "Apple", "model": "test", "soc": nil, "abi": "arm64", "sdk": "test"],
                               startedMs: 0)
    }
}
