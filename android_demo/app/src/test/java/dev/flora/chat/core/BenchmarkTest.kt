package dev.flora.chat.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Assert.assertThrows
import org.junit.Assert.assertTrue
import org.junit.Test
import java.io.File

class BenchmarkTest {
    private val format = ChatFormat("<s>[{prompt}]", listOf("</s>"), "<s>")

    @Test
    fun extrasHaveDefaultsAndFixedPrompts() {
        val s = BenchmarkSpec.fromExtras(mapOf("model" to "/data/local/tmp/flora/a"), now = 7)
        assertEquals("bench-7", s.runId)
        assertEquals(BenchmarkSpec.FIXED_PROMPTS, s.prompts)
        assertEquals(listOf(1, 5, 64), listOf(s.warmup, s.runs, s.maxNewTokens))
    }

    @Test
    fun promptsFileWinsOverPrompt() {
        val files = mapOf("/p.json" to """{"prompts": ["one", "two"]}""")
        val s =
            BenchmarkSpec.fromExtras(
                mapOf("model" to "/m", "prompts_file" to "/p.json", "prompt" to "ignored", "runs" to 3, "warmup" to 0),
                now = 1,
            ) { files.getValue(it.path) }
        assertEquals(listOf("one", "two"), s.prompts)
        assertEquals(0, s.warmup)
    }

    @Test
    fun badExtrasNameTheExtraAndTheFix() {
        val cases =
            listOf(
                emptyMap<String, Any?>(),
                mapOf("model" to "/m", "runs" to 0),
                mapOf("model" to "/m", "max_new_tokens" to "many"),
                mapOf("model" to "/m", "run_id" to "../escape"),
                mapOf("model" to "/m", "prompts_file" to "/p.json"),
            )
        val messages =
            cases.map { extras ->
                assertThrows(BenchmarkException::class.java) {
                    BenchmarkSpec.fromExtras(extras, 1) { """{"prompts": []}""" }
                }.message!!
            }
        assertTrue(messages[0], "model" in messages[0])
        assertTrue(messages[1], "--ei runs" in messages[1])
        assertTrue(messages[2], "max_new_tokens" in messages[2])
        assertTrue(messages[3], "run_id" in messages[3])
        assertTrue(messages[4], "no prompts" in messages[4])
    }

    @Test
    fun reportHoldsWarmupAndRunsWithBothClocks() {
        val engine = ScriptedEngine(listOf("a", "b", "c", "d", "e"))
        val spec = spec(warmup = 1, runs = 3, prompts = listOf("p0", "p1"), chatTemplate = true)
        val report = BenchmarkRunner(engine, spec, format, clock = { engine.now }).run(header(spec))
        assertEquals("ok", report["status"])
        assertEquals(42.0, report["load_ms"])
        @Suppress("UNCHECKED_CAST")
        val runs = report["runs"] as List<Map<String, Any?>>
        assertEquals(listOf(true, false, false, false), runs.map { it["warmup"] })
        assertEquals(listOf(0, 0, 1, 0), runs.map { it["prompt_index"] })
        assertEquals(listOf("<s>[p0]", "<s>[p0]", "<s>[p1]", "<s>[p0]"), engine.prompts)
        val r = runs[1]
        assertEquals(100.0, r["ttft_ms"] as Double, 1e-9)
        assertEquals(20.0, r["tpot_ms"] as Double, 1e-9)
        assertEquals(5, r["generated_tokens"])
        assertEquals("abcde", r["text"])
        assertEquals(4.0, (r["observer"] as Map<*, *>)["generated_tokens"])
        val back = Json.parseObject(Json.write(report))
        assertEquals(BenchmarkRunner.FORMAT, back["format"])
        System.getProperty("flora.report.out")?.let { File(it).writeText(Json.write(report)) }
    }

    @Test
    fun aFailedGenerationEndsTheRunWithAnErrorReport() {
        val engine = ScriptedEngine(listOf("a", "b"), failOnCall = 3)
        val spec = spec(warmup = 1, runs = 5)
        val report = BenchmarkRunner(engine, spec, format, clock = { engine.now }).run(header(spec))
        assertEquals("error", report["status"])
        assertEquals("generation 3 failed: scripted failure", report["error"])
        assertEquals(2, (report["runs"] as List<*>).size)
    }

    @Test
    fun aFailedLaunchStillWritesAReport() {
        val h = BenchmarkRunner.header("r1", "/nowhere", null, emptyMap(), emptyMap(), 5)
        val report = BenchmarkRunner.failed(h, "no manifest")
        assertEquals("error", report["status"])
        assertNull((report["model"] as Map<*, *>)["pte"])
        assertEquals(emptyList<Any?>(), report["runs"])
    }

    private fun spec(
        warmup: Int,
        runs: Int,
        prompts: List<String> = listOf("p"),
        chatTemplate: Boolean = false,
    ) = BenchmarkSpec(File("/m"), "r1", prompts, warmup, runs, 16, chatTemplate, 0)

    private fun header(spec: BenchmarkSpec) =
        BenchmarkRunner.header(spec.runId, spec.model.path, null, mapOf("package" to "dev.flora.chat"), mapOf("abi" to "test"), 0)
}
