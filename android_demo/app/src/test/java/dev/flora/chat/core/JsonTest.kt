package dev.flora.chat.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Assert.assertThrows
import org.junit.Test

class JsonTest {
    @Test
    fun parsesNestedValues() {
        val v = Json.parseObject("""{"a": [1, 2.5, -3e2], "b": {"c": null, "d": true}, "e": "x\"y\n\u00e9"}""")
        assertEquals(listOf(1.0, 2.5, -300.0), v["a"])
        assertNull(v.obj("b")!!["c"])
        assertEquals(true, v.obj("b")!!["d"])
        assertEquals("x\"y\né", v.string("e"))
    }

    @Test
    fun writesWhatItReads() {
        val data = linkedMapOf("n" to 3, "f" to 0.25, "s" to "tab\there", "l" to listOf(null, false), "big" to 1e20)
        val back = Json.parseObject(Json.write(data))
        assertEquals(3.0, back["n"])
        assertEquals(0.25, back["f"])
        assertEquals("tab\there", back["s"])
        assertEquals(listOf(null, false), back["l"])
        assertEquals(1e20, back["big"])
    }

    @Test
    fun integralDoublesAreWrittenWithoutFraction() {
        assertEquals("""{"x": 64, "y": 21.5, "z": null}""", Json.write(linkedMapOf("x" to 64.0, "y" to 21.5, "z" to Double.NaN)))
    }

    @Test
    fun rejectsBrokenInput() {
        for (bad in listOf("{", "{\"a\" 1}", "[1,]", "tru", "\"open", "{} x", "{\"a\": \"\\q\"}")) {
            assertThrows(bad, JsonException::class.java) { Json.parse(bad) }
        }
    }

    @Test
    fun typedReadsReturnNullOnWrongType() {
        val v = Json.parseObject("""{"a": "1", "b": 2}""")
        assertNull(v.int("a"))
        assertEquals(2, v.int("b"))
        assertNull(v.string("b"))
    }
}
