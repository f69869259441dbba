package dev.flora.chat.core

/**
 * A small JSON reader and writer for manifests, stats and benchmark reports.
 *
 * Pure Kotlin so the same code runs in the app and in JVM unit tests (org.json is an
 * Android framework class and is absent on a plain JVM). Objects become
 * `Map<String, Any?>` (insertion ordered), arrays `List<Any?>`, numbers `Double`.
 */
object Json {
    fun parse(text: String): Any? {
        val reader = Reader(text)
        val value = reader.value()
        reader.skipSpace()
        if (!reader.atEnd()) throw reader.error("trailing characters")
        return value
    }

    @Suppress("UNCHECKED_CAST")
    fun parseObject(text: String): Map<String, Any?> = parse(text) as? Map<String, Any?> ?: throw JsonException("expected a JSON object")

    fun write(value: Any?): String = StringBuilder().also { writeTo(it, value) }.toString()

    private fun writeTo(
        out: StringBuilder,
        value: Any?,
    ) {
        when (value) {
            null -> out.append("null")
            is String -> writeString(out, value)
            is Boolean -> out.append(value)
            is Int, is Long -> out.append(value)
            is Number -> writeNumber(out, value.toDouble())
            is Map<*, *> -> writeObject(out, value)
            is Iterable<*> -> writeArray(out, value)
            else -> throw JsonException("cannot write ${value::class.simpleName} as JSON")
        }
    }

    private fun writeNumber(
        out: StringBuilder,
        d: Double,
    ) {
        when {
            d.isNaN() || d.isInfinite() -> out.append("null")
            d == Math.rint(d) && Math.abs(d) < 1e15 -> out.append(d.toLong())
            else -> out.append(d)
        }
    }

    private fun writeObject(
        out: StringBuilder,
        map: Map<*, *>,
    ) {
        out.append('{')
        map.entries.forEachIndexed { i, (k, v) ->
            if (i > 0) out.append(", ")
            writeString(out, k.toString())
            out.append(": ")
            writeTo(out, v)
        }
        out.append('}')
    }

    private fun writeArray(
        out: StringBuilder,
        items: Iterable<*>,
    ) {
        out.append('[')
        items.forEachIndexed { i, v ->
            if (i > 0) out.append(", ")
            writeTo(out, v)
        }
        out.append(']')
    }

    private fun writeString(
        out: StringBuilder,
        s: String,
    ) {
        out.append('"')
        for (c in s) {
            when {
                c == '"' -> out.append("\\\"")
                c == '\\' -> out.append("\\\\")
                c == '\n' -> out.append("\\n")
                c == '\r' -> out.append("\\r")
                c == '\t' -> out.append("\\t")
                c < ' ' -> out.append(String.format("\\u%04x", c.code))
                else -> out.append(c)
            }
        }
        out.append('"')
    }

    private class Reader(
        val text: String,
    ) {
        var pos = 0

        fun atEnd() = pos >= text.length

        fun error(what: String) = JsonException("$what at offset $pos")

        fun skipSpace() {
            while (!atEnd() && text[pos].isWhitespace()) pos++
        }

        fun value(): Any? {
            skipSpace()
            if (atEnd()) throw error("unexpected end of input")
            return when (val c = text[pos]) {
                '{' -> obj()
                '[' -> array()
                '"' -> string()
                't' -> literal("true", true)
                'f' -> literal("false", false)
                'n' -> literal("null", null)
                else -> if (c == '-' || c.isDigit()) number() else throw error("unexpected '$c'")
            }
        }

        fun literal(
            word: String,
            value: Any?,
        ): Any? {
            if (!text.startsWith(word, pos)) throw error("expected $word")
            pos += word.length
            return value
        }

        fun number(): Double {
            val start = pos
            while (!atEnd() && text[pos] in "+-0123456789.eE") pos++
            return text.substring(start, pos).toDoubleOrNull() ?: throw error("bad number")
        }

        fun obj(): Map<String, Any?> {
            val out = LinkedHashMap<String, Any?>()
            pos++
            skipSpace()
            if (!atEnd() && text[pos] == '}') return out.also { pos++ }
            while (true) {
                skipSpace()
                if (atEnd() || text[pos] != '"') throw error("expected a key")
                val key = string()
                skipSpace()
                expect(':')
                out[key] = value()
                skipSpace()
                if (!atEnd() && text[pos] == ',') {
                    pos++
                    continue
                }
                expect('}')
                return out
            }
        }

        fun array(): List<Any?> {
            val out = ArrayList<Any?>()
            pos++
            skipSpace()
            if (!atEnd() && text[pos] == ']') return out.also { pos++ }
            while (true) {
                out.add(value())
                skipSpace()
                if (!atEnd() && text[pos] == ',') {
                    pos++
                    continue
                }
                expect(']')
                return out
            }
        }

        fun expect(c: Char) {
            if (atEnd() || text[pos] != c) throw error("expected '$c'")
            pos++
        }

        fun string(): String {
            val out = StringBuilder()
            pos++
            while (true) {
                if (atEnd()) throw error("unterminated string")
                val c = text[pos++]
                when (c) {
                    '"' -> return out.toString()
                    '\\' -> out.append(escape())
                    else -> out.append(c)
                }
            }
        }

        fun escape(): Char {
            if (atEnd()) throw error("unterminated escape")
            return when (val e = text[pos++]) {
                'n' -> '\n'
                't' -> '\t'
                'r' -> '\r'
                'b' -> '\b'
                'f' -> '\u000c'
                'u' -> unicode()
                '"', '\\', '/' -> e
                else -> throw error("bad escape '\\$e'")
            }
        }

        fun unicode(): Char {
            if (pos + 4 > text.length) throw error("bad \\u escape")
            val code = text.substring(pos, pos + 4).toIntOrNull(16) ?: throw error("bad \\u escape")
            pos += 4
            return code.toChar()
        }
    }
}

class JsonException(
    message: String,
) : IllegalArgumentException(message)

/** Typed reads from a parsed JSON object; a wrong type reads as null. */
fun Map<String, Any?>.string(key: String): String? = this[key] as? String

fun Map<String, Any?>.number(key: String): Double? = (this[key] as? Number)?.toDouble()

fun Map<String, Any?>.int(key: String): Int? = number(key)?.toInt()

@Suppress("UNCHECKED_CAST")
fun Map<String, Any?>.obj(key: String): Map<String, Any?>? = this[key] as? Map<String, Any?>

@Suppress("UNCHECKED_CAST")
fun Map<String, Any?>.list(key: String): List<Any?>? = this[key] as? List<Any?>
