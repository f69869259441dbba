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
 * stats JSON, an error); the text goes on to `onPiece` in whole characters (TextPieces).
 * The chat screen and the benchmark both listen through one of these; call `finish`
 * after `generate` returns, so text still held back is delivered rather than dropped.
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
    private val pieces = TextPieces()

    /** The runner's stats as a JSON object, or null when it sent none (or not JSON). */
    val runnerStats: Map<String, Any?>?
        get() = stats?.let { runCatching { Json.parseObject(it) }.getOrNull() }

    override fun onToken(piece: String) {
        timer.token()
        pieces.push(piece).takeIf { it.isNotEmpty() }?.let(onPiece)
    }

    override fun onStats(json: String) {
        stats = json
    }

    override fun onError(message: String) {
        error = message
    }

    /** The generation returned: deliver what is still held back (an unpaired surrogate as U+FFFD). */
    fun finish() {
        pieces.finish().takeIf { it.isNotEmpty() }?.let(onPiece)
    }
}

/**
 * Joins streamed pieces into whole characters. ExecuTorch's Android JNI makes each piece
 * a Java String only once its bytes are valid UTF-8 (it holds back a token that ends
 * inside a multi-byte character and sends it with the next), so on a phone the pieces
 * are whole; this guards the app's text against a runner that splits a character
 * anyway: a piece that ends in the first half of a UTF-16 surrogate pair (an emoji, a
 * rare CJK character) keeps that half until the next piece brings the second, and
 * `finish` turns a half that never got its pair into U+FFFD instead of dropping it.
 */
class TextPieces {
    private var high: Char? = null

    fun push(piece: String): String {
        val text = high?.let { it + piece } ?: piece
        high = null
        if (text.isNotEmpty() && text.last().isHighSurrogate()) {
            high = text.last()
            return text.dropLast(1)
        }
        return text
    }

    fun finish(): String = if (high != null) "\uFFFD".also { high = null } else ""
}
