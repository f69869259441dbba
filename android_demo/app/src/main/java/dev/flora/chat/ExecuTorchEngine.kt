package dev.flora.chat

import android.os.SystemClock
import dev.flora.chat.core.ExportManifest
import dev.flora.chat.core.GenerationListener
import dev.flora.chat.core.LlmEngine
import org.pytorch.executorch.extension.llm.LlmCallback
import org.pytorch.executorch.extension.llm.LlmGenerationConfig
import org.pytorch.executorch.extension.llm.LlmModule

/**
 * An export run by ExecuTorch's LLM runner (LlmModule: the .pte on XNNPACK plus the
 * tokenizer). Greedy decoding (temperature 0), as flora-bench and the exporter's parity
 * check use; the runner stops at the model's end-of-turn tokens.
 */
class ExecuTorchEngine(
    private val manifest: ExportManifest,
) : LlmEngine {
    private var module: LlmModule? = null

    override fun load(): Double {
        val started = SystemClock.elapsedRealtimeNanos()
        val m = LlmModule(manifest.pte.path, manifest.tokenizer.path, TEMPERATURE)
        m.load()
        module = m
        return (SystemClock.elapsedRealtimeNanos() - started) / 1e6
    }

    override fun generate(
        prompt: String,
        maxNewTokens: Int,
        listener: GenerationListener,
    ) {
        val m = module ?: throw IllegalStateException("load() the model first")
        // Each request holds the whole conversation: start from an empty context.
        m.resetContext()
        val config =
            LlmGenerationConfig
                .create()
                .echo(false)
                .maxNewTokens(maxNewTokens)
                .seqLen(manifest.maxSeqLen)
                .temperature(TEMPERATURE)
                .build()
        m.generate(
            prompt,
            config,
            object : LlmCallback {
                override fun onResult(result: String) = listener.onToken(result)

                override fun onStats(stats: String) = listener.onStats(stats)

                override fun onError(
                    errorCode: Int,
                    message: String,
                ) = listener.onError("ExecuTorch error $errorCode: $message")
            },
        )
    }

    override fun stop() {
        module?.stop()
    }

    override fun close() {
        module?.close()
        module = null
    }

    private companion object {
        const val TEMPERATURE = 0.0f
    }
}
