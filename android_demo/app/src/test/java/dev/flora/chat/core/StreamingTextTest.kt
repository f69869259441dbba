package dev.flora.chat.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Test
import java.io.File

/** A multi-byte answer streamed in every possible split reaches the screen and the report whole. */
class StreamingTextTest {
    private val answer = "café 日本 🎉" // 2-byte é, 3-byte CJK, a 4-byte emoji (a UTF-16 surrogate pair)

    /** `answer` cut into two pieces at every UTF-16 index, and into single UTF-16 units. */
    private fun splits(text: String): List<List<String>> =
        (1 until text.length).map { listOf(text.substring(0, it), text.substring(it)) } + listOf(text.map { it.toString() })

    @Test
    fun piecesJoinIntoWholeCharactersAtEverySplit() {
        for (pieces in splits(answer)) {
            val joiner = TextPieces()
            val out = pieces.map { joiner.push(it) } + joiner.finish()
            assertEquals(pieces.toString(), answer, out.joinToString(""))
            for (o in out) {
                assertFalse(pieces.toString(), o.isNotEmpty() && (o.last().isHighSurrogate() || o.first().isLowSurrogate()))
            }
        }
    }

    @Test
    fun anUnpairedHalfBecomesAReplacementCharacterNotNothing() {
        val joiner = TextPieces()
        assertEquals("a", joiner.push("a\uD83C"))
        assertEquals("\uFFFD", joiner.finish())
        assertEquals("", joiner.finish())
    }

    @Test
    fun theChatShowsTheWholeAnswerWithoutItsStopString() {
        val format = ChatFormat("<s>[{prompt}]", listOf("</s>"), "<s>")
        for (pieces in splits(answer)) {
            val s = ChatSession(format, maxSeqLen = 200, maxNewTokens = 40)
            val r = s.begin("hi")
            val engine = ScriptedEngine(pieces + listOf("</", "s>"))
            val shown = mutableListOf<String>()
            val record = GenerationRecord(clock = { engine.now }) { shown += s.append(it) }
            engine.generate(r.prompt, 40, record)
            record.finish()
            s.finish(null, r)
            assertEquals(pieces.toString(), answer, s.messages.last().text)
            assertFalse(shown.any { it.isNotEmpty() && it.last().isHighSurrogate() })
        }
    }

    @Test
    fun theBenchmarkReportHoldsTheWholeAnswer() {
        val engine = ScriptedEngine(answer.map { it.toString() })
        val spec = BenchmarkSpec(File("/m"), "r1", listOf("p"), 0, 1, 64, false, 0)
        val header = BenchmarkRunner.header("r1", "/m", null, mapOf("package" to "dev.flora.chat"), mapOf("abi" to "test"), 0)
        val report = BenchmarkRunner(engine, spec, ChatFormat.RAW, clock = { engine.now }).run(header)

        @Suppress("UNCHECKED_CAST")
        val run = (report["runs"] as List<Map<String, Any?>>).single()
        assertEquals(answer, run["text"])
        assertEquals(
            answer,
            Json
                .parseObject(Json.write(report))
                .list("runs")!!
                .filterIsInstance<Map<*, *>>()
                .single()["text"],
        )
        assertEquals(answer.length, run["generated_tokens"]) // app clock: one per callback
    }
}
