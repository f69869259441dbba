@testable import FloraChatCore
import XCTest

/// A clock that returns the given times in turn.
final class ListClock {
    private var times: [Int64]
    init(_ times: [Int64]) { self.times = times }
    func next() -> Int64 { times.removeFirst() }
}

final class GenerationStatsTests: XCTestCase {
    func testTimerGivesTtftAndTpotFromTokenTimes() throws {
        let clock = ListClock([0, 250_000_000, 300_000_000, 350_000_000, 400_000_000])
        let t = GenerationTimer(clock: clock.next)
        t.start()
        for _ in 0..<4 { t.token() }
        let f = try XCTUnwrap(t.figures(promptTokens: 50))
        XCTAssertEqual(f.ttftMs, 250.0, accuracy: 1e-9)
        XCTAssertEqual(try XCTUnwrap(f.tpotMs), 50.0, accuracy: 1e-9)
        XCTAssertEqual(try XCTUnwrap(f.prefillTps), 200.0, accuracy: 1e-9)
        XCTAssertEqual(try XCTUnwrap(f.decodeTps), 20.0, accuracy: 1e-9)
        XCTAssertEqual(f.generatedTokens, 4)
        XCTAssertEqual(f.summary(), "TTFT 250 ms · TPOT 50.0 ms · 20.0 tok/s · 4 tokens")
    }

    func testOneTokenHasNoTpotAndNoTokenNoFigures() throws {
        let clock = ListClock([0, 10_000_000])
        let t = GenerationTimer(clock: clock.next)
        t.start()
        XCTAssertNil(t.figures(promptTokens: nil))
        t.token()
        let f = try XCTUnwrap(t.figures(promptTokens: nil))
        XCTAssertNil(f.tpotMs)
        XCTAssertNil(f.decodeTps)
        XCTAssertNil(f.prefillTps)
    }

    func testRunnerStatsFollowTheHarnessDefinition() throws {
        // Same numbers as flora_export.bench.stats.observer_sample: generated_tokens counts
        // the tokens decoded after the first.
        let stats = try Json.parseObject("""
            {"prompt_tokens": 64, "generated_tokens": 63, "inference_start_ms": 1000,
             "first_token_ms": 1095, "inference_end_ms": 2355, "SCALING_FACTOR_UNITS_PER_SECOND": 1000}
            """)
        let f = try XCTUnwrap(Figures.fromRunnerStats(stats))
        XCTAssertEqual(f.ttftMs, 95.0, accuracy: 1e-9)
        XCTAssertEqual(try XCTUnwrap(f.tpotMs), 20.0, accuracy: 1e-9)
        XCTAssertEqual(f.generatedTokens, 64)
        XCTAssertEqual(f.promptTokens, 64)
        XCTAssertNil(Figures.fromRunnerStats(["prompt_tokens": 3.0]))
    }

    func testFiguresAsJsonHaveTheReportKeys() {
        let f = Figures(ttftMs: 100, tpotMs: 20, promptTokens: 10, generatedTokens: 5).toJSON()
        XCTAssertEqual(f.keys, ["ttft_ms", "tpot_ms", "prefill_tps", "decode_tps", "prompt_tokens", "generated_tokens"])
        XCTAssertEqual(f.number("prefill_tps"), 100.0)
        XCTAssertEqual(f.number("decode_tps"), 50.0)
        XCTAssertEqual(Figures(ttftMs: 0, tpotMs: nil, promptTokens: nil, generatedTokens: 1).toJSON()["decode_tps"], .null)
    }

    func testPeakRssComesFromVmHwmOrGetrusage() throws {
        let status = "Name:\tx\nVmPeak:\t 9 kB\nVmHWM:\t 1048576 kB\nVmRSS:\t 5 kB\n"
        XCTAssertEqual(try XCTUnwrap(PeakMemory.vmHwmMb(procStatus: status)), 1024.0, accuracy: 1e-9)
        XCTAssertNil(PeakMemory.vmHwmMb(procStatus: "Name:\tx\n"))
        XCTAssertEqual(PeakMemory.maxrssMb(1_048_576 * 3, unitBytes: 1), 3.0)       // Darwin: bytes
        XCTAssertEqual(PeakMemory.maxrssMb(2048, unitBytes: 1024), 2.0)             // Linux: KiB
        // This test process: a real getrusage figure, a few MiB to a few GiB, that grows when
        // 256 MiB are touched. (On Linux ru_maxrss also covers the program before exec, so
        // it is compared with itself, not with VmHWM.)
        let before = try XCTUnwrap(PeakMemory.residentMb())
        XCTAssertGreaterThan(before, 1)
        XCTAssertLessThan(before, 16_384)
        let size = 256 << 20
        let block = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 4096)
        defer { block.deallocate() }
        for offset in stride(from: 0, to: size, by: 4096) { block.storeBytes(of: 1, toByteOffset: offset, as: UInt8.self) }
        let after = try XCTUnwrap(PeakMemory.residentMb())
        XCTAssertGreaterThan(after, 200)
        XCTAssertGreaterThanOrEqual(after, before)
    }
}
