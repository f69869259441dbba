package dev.flora.chat.core

/** One line of the conversation as the screen shows it. */
data class Message(
    val fromUser: Boolean,
    var text: String,
    var figures: Figures? = null,
    var note: String? = null,
)

/** What to send to the engine for one reply. */
data class Request(
    val prompt: String,
    val maxNewTokens: Int,
    val turnsKept: Int,
)

/**
 * The conversation and its rules, free of Android: formats each request from the
 * history that fits the context, filters stop strings out of the streamed reply, and
 * records each reply's figures. Each request is a fresh context holding the whole kept
 * history, so a reply never depends on runner state left by an earlier one.
 */
class ChatSession(
    private val format: ChatFormat,
    private val maxSeqLen: Int,
    val maxNewTokens: Int = DEFAULT_MAX_NEW_TOKENS,
) {
    val messages = mutableListOf<Message>()
    private val exchanges = mutableListOf<Exchange>()
    private var filter = StopFilter(format.stop)
    private var pendingUser: String? = null

    /** Prompt tokens per character, learnt from the runner's counts (start: 1, pessimistic). */
    var tokensPerChar = 1.0
        private set

    val generating: Boolean get() = pendingUser != null

    /** Start a reply to `user`; fails if a reply is running or the message cannot fit. */
    fun begin(user: String): Request {
        check(!generating) { "a reply is still being generated" }
        require(user.isNotBlank()) { "empty message" }
        val budget = maxSeqLen - maxNewTokens
        var kept = exchanges.size
        var prompt = format.format(exchanges.takeLast(kept), user)
        while (estimateTokens(prompt) > budget && kept > 0) {
            kept--
            prompt = format.format(exchanges.takeLast(kept), user)
        }
        if (estimateTokens(prompt) > budget) {
            throw IllegalArgumentException(
                "message too long for the model's context ($maxSeqLen tokens, $maxNewTokens kept for the reply)",
            )
        }
        pendingUser = user
        filter = StopFilter(format.stop)
        messages += Message(fromUser = true, text = user)
        messages += Message(fromUser = false, text = "")
        return Request(prompt, maxNewTokens, kept)
    }

    /** A streamed piece of the reply; returns the reply text shown so far. */
    fun append(piece: String): String {
        val reply = messages.last()
        reply.text += filter.push(piece)
        return reply.text
    }

    /** The reply ended (at a stop string, the length limit, or the stop button). */
    fun finish(
        figures: Figures?,
        request: Request,
        stoppedByUser: Boolean = false,
    ) {
        val user = pendingUser ?: return
        val reply = messages.last()
        if (!filter.stopped) reply.text += filter.flush()
        reply.figures = figures
        reply.note = if (stoppedByUser) "stopped" else null
        figures?.promptTokens?.takeIf { it > 0 && request.prompt.isNotEmpty() }?.let {
            tokensPerChar = it.toDouble() / request.prompt.length
        }
        exchanges += Exchange(user, reply.text)
        pendingUser = null
    }

    /** The reply failed; the exchange is not kept as history. */
    fun fail(error: String) {
        if (pendingUser == null) return
        messages.last().note = error
        pendingUser = null
    }

    fun clear() {
        check(!generating) { "stop the reply before starting a new chat" }
        messages.clear()
        exchanges.clear()
    }

    private fun estimateTokens(prompt: String) = Math.ceil(prompt.length * tokensPerChar * SAFETY).toInt()

    companion object {
        const val DEFAULT_MAX_NEW_TOKENS = 128
        private const val SAFETY = 1.1
    }
}
