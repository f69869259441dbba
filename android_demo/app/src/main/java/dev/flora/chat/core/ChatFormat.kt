package dev.flora.chat.core

import java.text.Normalizer

/**
 * The exporter's chat format: a one-turn template with a `{prompt}` slot, the stop
 * strings that end an assistant turn, and the begin-of-text prefix that only the first
 * turn of a conversation carries.
 *
 * Later turns repeat the template without that prefix, after the previous reply and the
 * first stop string, which is how the model saw multi-turn text in training
 * (Llama-3: `<|start_header_id|>user<|end_header_id|>\n\n...<|eot_id|>`).
 *
 * `normalization` is the manifest's `runtime.input_normalization`: `"NFC"` when the shipped
 * tokenizer file leaves Unicode NFC to the caller (Qwen), applied to every prompt text
 * before the runtime's tokenizer sees it.
 */
data class ChatFormat(
    val template: String,
    val stop: List<String>,
    val bos: String,
    val normalization: String? = null,
) {
    init {
        require(SLOT in template) { "chat template has no $SLOT slot" }
    }

    /** The prompt for `turns` (earlier user/assistant exchanges) followed by `user`. */
    fun format(
        turns: List<Exchange>,
        user: String,
    ): String {
        val out = StringBuilder()
        for ((i, t) in turns.withIndex()) {
            out.append(turn(t.user, first = i == 0)).append(t.reply).append(stop.firstOrNull() ?: "")
        }
        return normalize(out.append(turn(user, first = turns.isEmpty())).toString())
    }

    /** The text as the runtime's tokenizer must receive it (the input normalization). */
    fun normalize(text: String): String = if (normalization == NFC) Normalizer.normalize(text, Normalizer.Form.NFC) else text

    private fun turn(
        user: String,
        first: Boolean,
    ): String {
        val t = if (!first && bos.isNotEmpty() && template.startsWith(bos)) template.substring(bos.length) else template
        return t.replace(SLOT, user)
    }

    companion object {
        const val SLOT = "{prompt}"

        /** Used when an export records no chat format: the prompt is sent as typed. */
        val RAW = ChatFormat(SLOT, emptyList(), "")

        const val NFC = "NFC"

        fun fromManifest(
            chat: Map<String, Any?>?,
            normalization: String? = null,
        ): ChatFormat {
            val raw = RAW.copy(normalization = normalization)
            val template = chat?.string("template") ?: return raw
            if (SLOT !in template) return raw
            val stop = chat.list("stop")?.filterIsInstance<String>() ?: emptyList()
            val bos = chat.string("bos") ?: LLAMA3_BOS.takeIf { template.startsWith(it) } ?: ""
            return ChatFormat(template, stop, bos, normalization)
        }

        private const val LLAMA3_BOS = "<|begin_of_text|>"
    }
}

/** One finished user/assistant exchange. */
data class Exchange(
    val user: String,
    val reply: String,
)

/**
 * Removes stop strings from streamed text. A piece that might be the start of a stop
 * string is held back until the next piece decides; after a stop string nothing more is
 * shown. `push` returns the text that can be shown now, `flush` what is left at the end.
 */
class StopFilter(
    private val stop: List<String>,
) {
    private val pending = StringBuilder()
    var stopped = false
        private set

    fun push(piece: String): String {
        if (stopped) return ""
        pending.append(piece)
        val text = pending.toString()
        val hit = stop.filter { it.isNotEmpty() }.mapNotNull { s -> text.indexOf(s).takeIf { it >= 0 } }.minOrNull()
        if (hit != null) {
            stopped = true
            pending.setLength(0)
            return text.substring(0, hit)
        }
        val keep = longestStopPrefixSuffix(text)
        pending.delete(0, text.length - keep)
        return text.substring(0, text.length - keep)
    }

    fun flush(): String = pending.toString().also { pending.setLength(0) }

    private fun longestStopPrefixSuffix(text: String): Int {
        var best = 0
        for (s in stop) {
            for (n in minOf(s.length - 1, text.length) downTo 1) {
                if (n > best && text.endsWith(s.substring(0, n))) best = n
            }
        }
        return best
    }
}
