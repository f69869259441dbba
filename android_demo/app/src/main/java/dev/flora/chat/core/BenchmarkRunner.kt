package dev.flora.chat.core

/**
 * Benchmark mode: load the model once, run warm-up + measured generations back to back,
 * and build the `flora-chat-bench/1` report (format in android_demo/README.md). Every run
 * keeps the app clock's figures and the runner's own stats (`observer`), which flora-bench
 * prefers.
 */
class BenchmarkRunner(
    private val engine: LlmEngine,
    private val spec: BenchmarkSpec,
    private val chat: ChatFormat,
    private val clock: () -> Long = System::nanoTime,
    private val sleep: (Long) -> Unit = { Thread.sleep(it) },
    private val progress: (String) -> Unit = {},
) {
    private val runs = mutableListOf<Map<String, Any?>>()

    /** Runs everything; never throws: a failure becomes `status: error` in the report. */
    fun run(header: Map<String, Any?>): Map<String, Any?> {
        val report = LinkedHashMap(header)
        report["config"] = spec.toMap()
        try {
            progress("loading ${spec.model}")
            report["load_ms"] = engine.load()
            val total = spec.warmup + spec.runs
            for (i in 0 until total) {
                if (spec.cooldownMs > 0) sleep(spec.cooldownMs)
                val warm = i < spec.warmup
                progress(if (warm) "warm-up ${i + 1}/${spec.warmup}" else "run ${i - spec.warmup + 1}/${spec.runs}")
                runs += one(i, warm)
            }
            report["status"] = "ok"
            report["error"] = null
        } catch (e: Throwable) {
            // Errors too (e.g. UnsatisfiedLinkError from the runtime): the report says what failed.
            report["status"] = "error"
            report["error"] = e.message ?: e.toString()
        }
        report["runs"] = runs
        return report
    }

    private fun one(
        index: Int,
        warmup: Boolean,
    ): Map<String, Any?> {
        val promptIndex = (if (warmup) index else index - spec.warmup) % spec.prompts.size
        val user = spec.prompts[promptIndex]
        val prompt = if (spec.chatTemplate) chat.format(emptyList(), user) else chat.normalize(user)
        val text = StringBuilder()
        val record = GenerationRecord(clock) { text.append(it) }
        record.timer.start()
        engine.generate(prompt, spec.maxNewTokens, record)
        record.finish()
        val wallMs = record.timer.elapsedMs()
        record.error?.let { throw IllegalStateException("generation ${index + 1} failed: $it") }
        val observer = record.runnerStats
        val promptTokens = observer?.int("prompt_tokens")
        val figures =
            record.timer.figures(promptTokens)
                ?: throw IllegalStateException("generation ${index + 1} produced no token")
        return linkedMapOf<String, Any?>("index" to index, "warmup" to warmup, "prompt_index" to promptIndex) +
            figures.toMap() + linkedMapOf("wall_ms" to wallMs, "text" to text.toString(), "observer" to observer)
    }

    companion object {
        const val FORMAT = "flora-chat-bench/1"

        /** The report's first fields: who ran what, where and when. */
        fun header(
            runId: String,
            modelDir: String,
            manifest: ExportManifest?,
            app: Map<String, Any?>,
            device: Map<String, Any?>,
            startedMs: Long,
        ): Map<String, Any?> =
            linkedMapOf(
                "format" to FORMAT,
                "run_id" to runId,
                "status" to "running",
                "error" to null,
                "app" to app,
                "device" to device,
                "model" to
                    linkedMapOf(
                        "dir" to modelDir,
                        "pte" to manifest?.pte?.name,
                        "tokenizer" to manifest?.tokenizer?.name,
                        "target" to manifest?.target,
                        "quant" to manifest?.quant,
                    ),
                "started_ms" to startedMs,
            )

        /** A report for a launch that could not start (bad extras, unusable export). */
        fun failed(
            header: Map<String, Any?>,
            error: String,
        ): Map<String, Any?> =
            LinkedHashMap(header).apply {
                put("status", "error")
                put("error", error)
                put("runs", emptyList<Any?>())
            }
    }
}
