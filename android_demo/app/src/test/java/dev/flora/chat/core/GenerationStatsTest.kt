package dev.flora.chat.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Test

class GenerationStatsTest {
    @Test
    fun timerGivesTtftAndTpotFromTokenTimes() {
        val times = ArrayDeque(listOf(0L, 250_000_000L, 300_000_000L, 350_000_000L, 400_000_000L))
        val t = GenerationTimer { times.removeFirst() }
        t.start()
        repeat(4) { t.token() }
        val f = t.figures(promptTokens = 50)!!
        assertEquals(250.0, f.ttftMs, 1e-9)
        assertEquals(50.0, f.tpotMs!!, 1e-9)
        assertEquals(200.0, f.prefillTps!!, 1e-9)
        assertEquals(20.0, f.decodeTps!!, 1e-9)
        assertEquals(4, f.generatedTokens)
        assertEquals("TTFT 250 ms · TPOT 50.0 ms · 20.0 tok/s · 4 tokens", f.summary())
    }

    @Test
    fun oneTokenHasNoTpotAndNoTokenNoFigures() {
        val times = ArrayDeque(listOf(0L, 10_000_000L))
        val t = GenerationTimer { times.removeFirst() }
        t.start()
        assertNull(t.figures(null))
        t.token()
        val f = t.figures(null)!!
        assertNull(f.tpotMs)
        assertNull(f.decodeTps)
        assertNull(f.prefillTps)
    }

    @Test
    fun runnerStatsFollowTheHarnessDefinition() {
        // Same numbers as flora_export.bench.stats.observer_sample: generated_tokens counts
        // the tokens decoded after the first.
        val stats =
            Json.parseObject(
                """{"prompt_tokens": 64, "generated_tokens": 63, "inference_start_ms": 1000,
                "first_token_ms": 1095, "inference_end_ms": 2355, "SCALING_FACTOR_UNITS_PER_SECOND": 1000}""",
            )
        val f = Figures.fromRunnerStats(stats)!!
        assertEquals(95.0, f.ttftMs, 1e-9)
        assertEquals(20.0, f.tpotMs!!, 1e-9)
        assertEquals(64, f.generatedTokens)
        assertEquals(64, f.promptTokens)
        assertNull(Figures.fromRunnerStats(mapOf("prompt_tokens" to 3.0)))
    }

    @Test
    fun peakRssComesFromVmHwm() {
        assertEquals(1024.0, peakRssMb("Name:\tx\nVmPeak:\t 9 kB\nVmHWM:\t 1048576 kB\nVmRSS:\t 5 kB\n")!!, 1e-9)
        assertNull(peakRssMb("Name:\tx\n"))
    }
}
