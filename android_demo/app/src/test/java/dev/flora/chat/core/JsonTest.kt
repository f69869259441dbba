package dev.flora.chat.core

import org.json.JSONException
import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Assert.assertThrows
import org.junit.Test

/** The core's use of Android's org.json (Debian's build of it on the JVM, the framework's on a phone). */
class JsonTest {
    @Test
    fun parsesNestedValuesAsKotlinTypes() {
        val v = Json.parseObject("""{"a": [1, 2.5, -3e2], "b": {"c": null, "d": true}, "e": "x\"y\n\u00e9", "z": 0}""")
        assertEquals(listOf(1.0, 2.5, -300.0), v["a"])
        assertNull(v.obj("b")!!["c"])
        assertEquals(true, v.obj("b")!!["d"])
        assertEquals("x\"y\né", v.string("e"))
        assertEquals(listOf("a", "b", "e", "z"), v.keys.toList()) // file order
    }

    @Test
    fun writesWhatItReads() {
        val data = linkedMapOf("n" to 3, "f" to 0.25, "s" to "tab\there ☕ 🎉", "l" to listOf(null, false), "big" to 1e20)
        val back = Json.parseObject(Json.write(data))
        assertEquals(3.0, back["n"])
        assertEquals(0.25, back["f"])
        assertEquals("tab\there ☕ 🎉", back["s"])
        assertEquals(listOf(null, false), back["l"])
        assertEquals(1e20, back["big"])
    }

    @Test
    fun integralDoublesAreWrittenWithoutFractionAndNaNAsNull() {
        assertEquals(
            """{"x":64,"y":21.5,"z":null,"w":null}""",
            Json.write(
                linkedMapOf(
                    "x" to 64.0,
                    "y" to 21.5,
                    "z" to Double.NaN,
                    "w" to Float.POSITIVE_INFINITY,
                ),
            ),
        )
    }

    @Test
    fun rejectsBrokenInput() {
        for (bad in listOf("", "{", "{\"a\" 1}", "[1, 2", "\"open", "{} x", "[1] [2]", "{\"a\": 1,, }")) {
            assertThrows(bad, JSONException::class.java) { Json.parse(bad) }
        }
        assertThrows(JSONException::class.java) { Json.parseObject("[1]") }
    }

    @Test
    fun typedReadsReturnNullOnWrongType() {
        // org.json reads an unquoted word as a string; a reader that wants a number gets null.
        val v = Json.parseObject("""{"a": "1", "b": 2, "c": tru}""")
        assertNull(v.int("a"))
        assertEquals(2, v.int("b"))
        assertNull(v.string("b"))
        assertNull(v.number("c"))
        assertEquals("tru", v.string("c"))
    }
}
