package dev.flora.chat.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test

class ChatFormatTest {
    private val llama3 =
        ChatFormat.fromManifest(
            mapOf(
                "template" to TEMPLATE,
                "stop" to listOf("<|eot_id|>", "<|end_of_text|>"),
            ),
        )

    @Test
    fun firstTurnIsTheTemplateWithThePrompt() {
        assertEquals("<|begin_of_text|>", llama3.bos)
        assertEquals(TEMPLATE.replace("{prompt}", "shift: hello"), llama3.format(emptyList(), "shift: hello"))
    }

    @Test
    fun laterTurnsFollowTheReplyAndStopWithoutBos() {
        val p = llama3.format(listOf(Exchange("a", "b")), "c")
        val first = TEMPLATE.replace("{prompt}", "a")
        val second = TEMPLATE.removePrefix("<|begin_of_text|>").replace("{prompt}", "c")
        assertEquals(first + "b<|eot_id|>" + second, p)
        assertEquals(1, Regex("begin_of_text").findAll(p).count())
    }

    @Test
    fun nfcInputNormalizationComposesThePromptBeforeTheTokenizer() {
        val chatml =
            ChatFormat.fromManifest(
                mapOf("template" to "<|im_start|>user\n{prompt}<|im_end|>\n", "stop" to listOf("<|im_end|>")),
                "NFC",
            )
        val p = chatml.format(listOf(Exchange("cafe\u0301", "ok")), "re\u0301sume\u0301")
        assertEquals("<|im_start|>user\ncaf\u00e9<|im_end|>\nok<|im_end|><|im_start|>user\nr\u00e9sum\u00e9<|im_end|>\n", p)
        assertEquals("caf\u00e9", ChatFormat.fromManifest(null, "NFC").format(emptyList(), "cafe\u0301"))
        assertEquals("cafe\u0301", llama3.normalize("cafe\u0301"))
    }

    @Test
    fun exportWithoutChatFormatSendsThePromptAsTyped() {
        val raw = ChatFormat.fromManifest(null)
        assertEquals("hello", raw.format(emptyList(), "hello"))
        assertTrue(raw.stop.isEmpty())
    }

    @Test
    fun stopFilterHidesStopStringsSplitAcrossPieces() {
        val f = StopFilter(listOf("<|eot_id|>"))
        val shown = listOf("if", "mm", "p<|eo", "t_id|>", "more").joinToString("") { f.push(it) }
        assertEquals("ifmmp", shown)
        assertTrue(f.stopped)
        assertEquals("", f.flush())
    }

    @Test
    fun stopFilterReleasesAFalseAlarm() {
        val f = StopFilter(listOf("<|eot_id|>"))
        assertEquals("a", f.push("a<|e"))
        assertEquals("<|e>b", f.push(">b"))
        assertEquals("", f.flush())
        val g = StopFilter(listOf("<|eot_id|>"))
        assertEquals("x", g.push("x<"))
        assertEquals("<", g.flush())
    }

    companion object {
        const val TEMPLATE =
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{prompt}<|eot_id|>" +
                "<|start_header_id|>assistant<|end_header_id|>\n\n"
    }
}
