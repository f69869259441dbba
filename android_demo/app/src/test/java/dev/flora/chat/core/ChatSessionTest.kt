package dev.flora.chat.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertNull
import org.junit.Assert.assertThrows
import org.junit.Assert.assertTrue
import org.junit.Test

class ChatSessionTest {
    private val format = ChatFormat("<s>[{prompt}]", listOf("</s>"), "<s>")

    @Test
    fun aReplyStreamsWithoutTheStopStringAndIsKeptAsHistory() {
        val s = ChatSession(format, maxSeqLen = 200, maxNewTokens = 20)
        val r = s.begin("hi")
        assertEquals("<s>[hi]", r.prompt)
        assertTrue(s.generating)
        s.append("hel")
        assertEquals("hello", s.append("lo</"))
        s.append("s>")
        s.finish(Figures(10.0, 2.0, 7, 3), r)
        assertFalse(s.generating)
        assertEquals("hello", s.messages.last().text)
        val r2 = s.begin("again")
        assertEquals("<s>[hi]hello</s>[again]", r2.prompt)
        assertEquals(1, r2.turnsKept)
    }

    @Test
    fun oldestExchangesAreDroppedWhenTheContextIsFull() {
        val s = ChatSession(format, maxSeqLen = 40, maxNewTokens = 10)
        for (q in listOf("aaaa", "bbbb", "cccc")) {
            val r = s.begin(q)
            s.append("xxxx")
            s.finish(null, r)
        }
        // Budget 30 tokens at 1 token/char (x1.1 margin): "[cccc]xxxx</s>[dddd]" fits, more does not.
        val r = s.begin("dddd")
        assertEquals(1, r.turnsKept)
        assertEquals("<s>[cccc]xxxx</s>[dddd]", r.prompt)
    }

    @Test
    fun theRunnersTokenCountRefinesTheEstimate() {
        val s = ChatSession(format, maxSeqLen = 40, maxNewTokens = 10)
        val r = s.begin("aaaa")
        s.finish(Figures(1.0, 1.0, 3, 2), r)
        assertEquals(3.0 / "<s>[aaaa]".length, s.tokensPerChar, 1e-9)
    }

    @Test
    fun aMessageThatCannotFitIsRefused() {
        val s = ChatSession(format, maxSeqLen = 20, maxNewTokens = 10)
        assertThrows(IllegalArgumentException::class.java) { s.begin("x".repeat(30)) }
        assertFalse(s.generating)
        assertTrue(s.messages.isEmpty())
    }

    @Test
    fun aFailedReplyIsNotHistoryAndOneReplyRunsAtATime() {
        val s = ChatSession(format, maxSeqLen = 200, maxNewTokens = 10)
        s.begin("q")
        assertThrows(IllegalStateException::class.java) { s.begin("again") }
        s.fail("boom")
        assertEquals("boom", s.messages.last().note)
        assertEquals("<s>[next]", s.begin("next").prompt)
    }

    @Test
    fun stoppedRepliesAreMarkedAndClearEmptiesTheChat() {
        val s = ChatSession(format, maxSeqLen = 200, maxNewTokens = 10)
        val r = s.begin("q")
        s.append("partial")
        s.finish(null, r, stoppedByUser = true)
        assertEquals("stopped", s.messages.last().note)
        assertNull(s.messages.last().figures)
        s.clear()
        assertTrue(s.messages.isEmpty())
        assertEquals("<s>[q2]", s.begin("q2").prompt)
    }
}
