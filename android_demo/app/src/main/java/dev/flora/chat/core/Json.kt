package dev.flora.chat.core

import org.json.JSONArray
import org.json.JSONException
import org.json.JSONObject
import org.json.JSONTokener

/**
 * Manifests, stats and benchmark reports through Android's own `org.json` (on a JVM the
 * tests use the same library, Debian's `libandroid-json-java`). Values come back as Kotlin
 * types so the rest of the core stays plain: objects `Map<String, Any?>` (in file order),
 * arrays `List<Any?>`, numbers `Double`, JSON null `null`. Errors are `JSONException`.
 *
 * org.json's parser is lenient in places JSON is not (unquoted strings, a trailing comma as
 * a null element); text after the value is refused here, and every number or string a
 * reader needs is checked for its type where it is read.
 */
object Json {
    fun parse(text: String): Any? {
        val tokens = JSONTokener(text)
        val value = tokens.nextValue()
        if (tokens.nextClean() != '\u0000') throw JSONException("trailing characters after the JSON value")
        return plain(value)
    }

    @Suppress("UNCHECKED_CAST")
    fun parseObject(text: String): Map<String, Any?> = parse(text) as? Map<String, Any?> ?: throw JSONException("expected a JSON object")

    /** JSON text of an object of maps, lists, strings, numbers, booleans and null; NaN and infinities become null. */
    fun write(value: Map<*, *>): String = json(value).toString()

    private fun plain(value: Any?): Any? =
        when (value) {
            JSONObject.NULL, null -> null
            is JSONObject -> value.keys().asSequence().associateWith { plain(value.opt(it)) }
            is JSONArray -> (0 until value.length()).map { plain(value.opt(it)) }
            is Number -> value.toDouble()
            else -> value
        }

    private fun json(value: Any?): Any =
        when (value) {
            null -> JSONObject.NULL
            is Map<*, *> -> JSONObject().apply { value.forEach { (k, v) -> put(k.toString(), json(v)) } }
            is Iterable<*> -> JSONArray().apply { value.forEach { put(json(it)) } }
            is Float, is Double -> (value as Number).toDouble().let { if (it.isNaN() || it.isInfinite()) JSONObject.NULL else it }
            is String, is Boolean, is Number -> value
            else -> throw JSONException("cannot write ${value::class.simpleName} as JSON")
        }
}

fun Map<String, Any?>.string(key: String): String? = this[key] as? String

fun Map<String, Any?>.number(key: String): Double? = (this[key] as? Number)?.toDouble()

fun Map<String, Any?>.int(key: String): Int? = number(key)?.toInt()

@Suppress("UNCHECKED_CAST")
fun Map<String, Any?>.obj(key: String): Map<String, Any?>? = this[key] as? Map<String, Any?>

@Suppress("UNCHECKED_CAST")
fun Map<String, Any?>.list(key: String): List<Any?>? = this[key] as? List<Any?>
