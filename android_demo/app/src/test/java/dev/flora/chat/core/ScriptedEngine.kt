package dev.flora.chat.core

/**
 * A test engine: streams fixed pieces and a stats JSON, advancing a fake clock by
 * `prefillNs` before the first piece and `stepNs` between pieces. Not ExecuTorch: it
 * stands in for the model so the app's own logic can be checked on a JVM.
 */
class ScriptedEngine(
    private val pieces: List<String>,
    private val prefillNs: Long = 100_000_000L,
    private val stepNs: Long = 20_000_000L,
    private val failOnCall: Int = -1,
) : LlmEngine {
    var now = 0L
    val prompts = mutableListOf<String>()
    var closed = false

    override fun load(): Double = 42.0

    override fun generate(
        prompt: String,
        maxNewTokens: Int,
        listener: GenerationListener,
    ) {
        prompts += prompt
        if (prompts.size == failOnCall) {
            listener.onError("scripted failure")
            return
        }
        val start = now / 1_000_000
        now += prefillNs
        val first = now / 1_000_000
        val emitted = pieces.take(maxNewTokens)
        emitted.forEachIndexed { i, p ->
            if (i > 0) now += stepNs
            listener.onToken(p)
        }
        listener.onStats(
            """{"prompt_tokens": ${prompt.length}, "generated_tokens": ${emitted.size - 1},
            "inference_start_ms": $start, "first_token_ms": $first, "inference_end_ms": ${now / 1_000_000},
            "SCALING_FACTOR_UNITS_PER_SECOND": 1000}""",
        )
    }

    override fun stop() {}

    override fun close() {
        closed = true
    }
}
