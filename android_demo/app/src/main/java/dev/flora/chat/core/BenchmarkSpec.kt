package dev.flora.chat.core

import org.json.JSONException
import java.io.File

/**
 * Benchmark mode's settings, read from the launch intent's extras (see
 * android_demo/README.md, "Benchmark mode"). Bad extras fail with a message that names
 * the extra, the allowed values and the fix.
 */
data class BenchmarkSpec(
    val model: File,
    val runId: String,
    val prompts: List<String>,
    val warmup: Int,
    val runs: Int,
    val maxNewTokens: Int,
    val chatTemplate: Boolean,
    val cooldownMs: Long,
) {
    fun toMap(): Map<String, Any?> =
        linkedMapOf(
            "warmup" to warmup,
            "runs" to runs,
            "max_new_tokens" to maxNewTokens,
            "chat_template" to chatTemplate,
            "cooldown_ms" to cooldownMs,
            "prompts" to prompts,
        )

    companion object {
        /** Used when neither `prompts_file` nor `prompt` is given. */
        val FIXED_PROMPTS =
            listOf(
                "Write a short story about a lighthouse keeper who finds a message in a bottle.",
                "Explain in three sentences why the sky is blue.",
                "List five uses of a paper clip.",
            )

        private val RUN_ID = Regex("[A-Za-z0-9._-]{1,80}")

        /** `extras`: the intent's extras as a map; `readFile`: reads a device file's text. */
        fun fromExtras(
            extras: Map<String, Any?>,
            now: Long,
            readFile: (File) -> String = { it.readText() },
        ): BenchmarkSpec {
            val model =
                extras["model"] as? String
                    ?: throw BenchmarkException("missing extra 'model'", "pass --es model /data/local/tmp/flora/NAME")
            val runId = extras["run_id"] as? String ?: "bench-$now"
            if (!RUN_ID.matches(runId)) {
                throw BenchmarkException("run_id '$runId' is not a plain name", "use letters, digits, '.', '_' and '-' only")
            }
            return BenchmarkSpec(
                model = File(model),
                runId = runId,
                prompts = prompts(extras, readFile),
                warmup = intExtra(extras, "warmup", 1, 0),
                runs = intExtra(extras, "runs", 5, 1),
                maxNewTokens = intExtra(extras, "max_new_tokens", 64, 2),
                chatTemplate = extras["chat_template"] as? Boolean ?: false,
                cooldownMs = intExtra(extras, "cooldown_ms", 0, 0).toLong(),
            )
        }

        private fun prompts(
            extras: Map<String, Any?>,
            readFile: (File) -> String,
        ): List<String> {
            val path = extras["prompts_file"] as? String
            if (path != null) {
                val text =
                    try {
                        readFile(File(path))
                    } catch (e: java.io.IOException) {
                        throw BenchmarkException(
                            "cannot read prompts_file $path (${e.message})",
                            "push the file and make it readable (chmod a+r)",
                        )
                    }
                val root =
                    try {
                        Json.parse(text)
                    } catch (e: JSONException) {
                        throw BenchmarkException("prompts_file $path is not JSON (${e.message})", "write {\"prompts\": [\"...\"]}")
                    }
                val list = ((root as? Map<*, *>)?.get("prompts") ?: root) as? List<*>
                val prompts = list?.filterIsInstance<String>()?.filter { it.isNotEmpty() }
                if (prompts.isNullOrEmpty()) {
                    throw BenchmarkException(
                        "prompts_file $path holds no prompts",
                        "write {\"prompts\": [\"...\"]} with at least one string",
                    )
                }
                return prompts
            }
            return (extras["prompt"] as? String)?.takeIf { it.isNotEmpty() }?.let { listOf(it) } ?: FIXED_PROMPTS
        }

        private fun intExtra(
            extras: Map<String, Any?>,
            key: String,
            default: Int,
            min: Int,
        ): Int {
            val raw = extras[key] ?: return default
            val v = (raw as? Number)?.toInt() ?: (raw as? String)?.toIntOrNull()
            if (v == null || v < min) {
                throw BenchmarkException("extra '$key' is $raw", "pass --ei $key N with N >= $min")
            }
            return v
        }
    }
}

class BenchmarkException(
    val problem: String,
    val fix: String,
) : IllegalArgumentException("$problem: $fix")
