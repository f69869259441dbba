package dev.flora.chat.core

/**
 * Latency figures of one reply, as docs/metrics.md defines them:
 * TTFT = request start to the first generated token; TPOT = (t_last - t_first) / (n - 1);
 * prefill tokens/s = prompt tokens / TTFT; decode tokens/s = 1000 / TPOT.
 * A rate over a 0 ms interval is undefined (null), not infinite.
 */
data class Figures(
    val ttftMs: Double,
    val tpotMs: Double?,
    val promptTokens: Int?,
    val generatedTokens: Int,
) {
    val prefillTps: Double? get() = promptTokens?.takeIf { ttftMs > 0 }?.let { it * 1000.0 / ttftMs }
    val decodeTps: Double? get() = tpotMs?.takeIf { it > 0 }?.let { 1000.0 / it }

    /** "TTFT 95 ms · TPOT 21.3 ms · 46.9 tok/s · 64 tokens" */
    fun summary(): String {
        val parts = mutableListOf("TTFT ${fmt(ttftMs, 0)} ms")
        tpotMs?.let { parts += "TPOT ${fmt(it, 1)} ms" }
        decodeTps?.let { parts += "${fmt(it, 1)} tok/s" }
        parts += "$generatedTokens tokens"
        return parts.joinToString(" · ")
    }

    fun toMap(): Map<String, Any?> =
        linkedMapOf(
            "ttft_ms" to ttftMs,
            "tpot_ms" to tpotMs,
            "prefill_tps" to prefillTps,
            "decode_tps" to decodeTps,
            "prompt_tokens" to promptTokens,
            "generated_tokens" to generatedTokens,
        )

    companion object {
        private fun fmt(
            v: Double,
            digits: Int,
        ) = String.format(java.util.Locale.ROOT, "%.${digits}f", v)

        /**
         * Figures from ExecuTorch's runner stats JSON (`LlmCallback.onStats`, the
         * PyTorchObserver fields). `generated_tokens` counts the tokens decoded after the
         * first, so n = generated_tokens + 1 and TPOT = (end - first) / generated_tokens.
         */
        fun fromRunnerStats(stats: Map<String, Any?>): Figures? {
            val unit = 1000.0 / (stats.number("SCALING_FACTOR_UNITS_PER_SECOND") ?: 1000.0)
            val start = stats.number("inference_start_ms") ?: return null
            val first = stats.number("first_token_ms") ?: return null
            val end = stats.number("inference_end_ms") ?: return null
            val decoded = stats.int("generated_tokens") ?: return null
            return Figures(
                ttftMs = (first - start) * unit,
                tpotMs = if (decoded > 0) (end - first) * unit / decoded else null,
                promptTokens = stats.int("prompt_tokens"),
                generatedTokens = decoded + 1,
            )
        }
    }
}

/**
 * Times one generation with the app's own clock: `start` when the request is issued,
 * `token` for every streamed piece. `clock` returns nanoseconds (System.nanoTime in the
 * app, a fake in tests).
 */
class GenerationTimer(
    private val clock: () -> Long = System::nanoTime,
) {
    private var startNs = 0L
    private var firstNs = -1L
    private var lastNs = -1L
    var tokens = 0
        private set

    fun start() {
        startNs = clock()
        firstNs = -1L
        lastNs = -1L
        tokens = 0
    }

    fun token() {
        val now = clock()
        if (firstNs < 0) firstNs = now
        lastNs = now
        tokens++
    }

    /** Milliseconds since `start`. */
    fun elapsedMs(): Double = (clock() - startNs) / 1e6

    /** The figures so far, or null before the first token. */
    fun figures(promptTokens: Int?): Figures? {
        if (firstNs < 0) return null
        val tpot = if (tokens > 1) (lastNs - firstNs) / 1e6 / (tokens - 1) else null
        return Figures((firstNs - startNs) / 1e6, tpot, promptTokens, tokens)
    }
}

/** Peak resident memory (VmHWM) in MiB from the text of /proc/self/status, or null. */
fun peakRssMb(procStatus: String): Double? =
    procStatus
        .lineSequence()
        .firstOrNull { it.startsWith("VmHWM:") }
        ?.split(Regex("\\s+"))
        ?.getOrNull(1)
        ?.toDoubleOrNull()
        ?.div(1024.0)
