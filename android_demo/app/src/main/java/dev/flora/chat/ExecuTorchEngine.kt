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
        // Upstream's load() returns an error code, react-native-executorch's build returns
        // nothing; reading it as Any compiles against both.
        val status: Any = m.load()
        if (status is Int && status != 0) {
            m.resetNative()
            throw IllegalStateException("ExecuTorch could not load ${manifest.pte.name} (error $status)")
        }
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
        // LlmModule passes seqLen on to the runner but not maxNewTokens (checked in the
        // bytecode of react-native-executorch 0.9.3 and upstream's source), so the limit is
        // enforced here: stop the runner at the limit and drop what it still emits.
        var pieces = 0
        m.generate(
            prompt,
            config,
            object : LlmCallback {
                override fun onResult(result: String) {
                    if (pieces >= maxNewTokens) return
                    pieces++
                    listener.onToken(result)
                    if (pieces == maxNewTokens) m.stop()
                }

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
        // resetNative() frees the native runner in every LlmModule release (close() is newer).
        module?.resetNative()
        module = null
    }

    private companion object {
        const val TEMPERATURE = 0.0f
    }
}
