package dev.flora.chat.core

/**
 * The model behind the chat and the benchmark: ExecuTorch's LlmModule in the app
 * (ExecuTorchEngine), a scripted engine in unit tests. Calls come from one worker
 * thread, except `stop`, which the UI thread may call during `generate`.
 */
interface LlmEngine : AutoCloseable {
    /** Load the program; returns the load time in milliseconds. */
    fun load(): Double

    /**
     * Generate up to `maxNewTokens` tokens after `prompt` (blocking). Pieces of text
     * stream to `listener` on the calling thread; the runner's stats JSON arrives last.
     * Starts from an empty context (the whole conversation is in `prompt`).
     */
    fun generate(
        prompt: String,
        maxNewTokens: Int,
        listener: GenerationListener,
    )

    /** Ask a running `generate` to return early (thread-safe). */
    fun stop()
}

interface GenerationListener {
    fun onToken(piece: String)

    fun onStats(json: String) {}

    fun onError(message: String) {}
}

/**
 * Times one generation with the app's clock and keeps what the runner reported (its
 * stats JSON, an error); every piece goes on to `onPiece`. The chat screen and the
 * benchmark both listen through one of these.
 */
class GenerationRecord(
    clock: () -> Long = System::nanoTime,
    private val onPiece: (String) -> Unit = {},
) : GenerationListener {
    val timer = GenerationTimer(clock)
    var stats: String? = null
        private set
    var error: String? = null
        private set

    /** The runner's stats as a JSON object, or null when it sent none (or not JSON). */
    val runnerStats: Map<String, Any?>?
        get() = stats?.let { runCatching { Json.parseObject(it) }.getOrNull() }

    override fun onToken(piece: String) {
        timer.token()
        onPiece(piece)
    }

    override fun onStats(json: String) {
        stats = json
    }

    override fun onError(message: String) {
        error = message
    }
}
