package dev.flora.chat

import android.app.Activity
import android.os.Build
import android.os.Bundle
import android.os.Process
import android.util.Log
import android.widget.TextView
import dev.flora.chat.core.BenchmarkException
import dev.flora.chat.core.BenchmarkRunner
import dev.flora.chat.core.BenchmarkSpec
import dev.flora.chat.core.ExportManifest
import dev.flora.chat.core.Json
import dev.flora.chat.core.ManifestException
import dev.flora.chat.core.peakRssMb
import java.io.File

/**
 * Benchmark mode, started by `adb shell am start -S -W -n dev.flora.chat/.BenchmarkActivity
 * --es model DIR ...` (extras and report format: android_demo/README.md). Runs in its own
 * process, writes `files/bench/<run_id>.json` atomically, then ends that process so the
 * next launch measures a fresh load and its own peak memory.
 */
class BenchmarkActivity : Activity() {
    private lateinit var status: TextView

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_benchmark)
        status = findViewById(R.id.bench_status)
        val extras = intent.extras?.let { b -> b.keySet().associateWith { readExtra(b, it) } } ?: emptyMap()
        Thread({ runAndExit(extras) }, "flora-bench").start()
    }

    private fun runAndExit(extras: Map<String, Any?>) {
        val started = System.currentTimeMillis()
        val runId = (extras["run_id"] as? String)?.takeIf { PLAIN.matches(it) } ?: "bench-$started"
        val report: Map<String, Any?> =
            try {
                val spec = BenchmarkSpec.fromExtras(extras, started)
                val manifest = ExportManifest.load(spec.model)
                val header = BenchmarkRunner.header(spec.runId, spec.model.path, manifest, app(), device(), started)
                ExecuTorchEngine(manifest).use { engine ->
                    BenchmarkRunner(engine, spec, manifest.chat, progress = ::say).run(header)
                }
            } catch (e: BenchmarkException) {
                BenchmarkRunner.failed(header(runId, extras, started), e.message ?: "bad extras")
            } catch (e: ManifestException) {
                BenchmarkRunner.failed(header(runId, extras, started), e.message ?: "bad export")
            } catch (e: Throwable) {
                // Also Errors: a missing native library (UnsatisfiedLinkError) must still
                // end in a report that names it, not in a silent crash.
                BenchmarkRunner.failed(header(runId, extras, started), "${e::class.java.simpleName}: ${e.message}")
            }
        val done =
            LinkedHashMap(report).apply {
                put("peak_rss_mb", runCatching { peakRssMb(File("/proc/self/status").readText()) }.getOrNull())
                put("finished_ms", System.currentTimeMillis())
            }
        val file = write(runId, done)
        say("${done["status"]}: wrote $file")
        Log.i(TAG, "done ${done["status"]} $file")
        runOnUiThread { finishAndRemoveTask() }
        Thread.sleep(EXIT_DELAY_MS)
        Process.killProcess(Process.myPid())
    }

    private fun header(
        runId: String,
        extras: Map<String, Any?>,
        started: Long,
    ) = BenchmarkRunner.header(runId, extras["model"] as? String ?: "", null, app(), device(), started)

    /** Write `<run_id>.json.tmp`, then rename: flora-bench never reads a partial file. */
    private fun write(
        runId: String,
        report: Map<String, Any?>,
    ): File {
        val dir = File(getExternalFilesDir(null), "bench").apply { mkdirs() }
        val tmp = File(dir, "$runId.json.tmp")
        val out = File(dir, "$runId.json")
        tmp.writeText(Json.write(report))
        if (!tmp.renameTo(out)) Log.e(TAG, "could not rename $tmp to $out")
        return out
    }

    private fun say(line: String) {
        Log.i(TAG, line)
        runOnUiThread { status.append(line + "\n") }
    }

    private fun app(): Map<String, Any?> =
        linkedMapOf("package" to packageName, "version" to packageManager.getPackageInfo(packageName, 0).versionName)

    private fun device(): Map<String, Any?> =
        linkedMapOf(
            "manufacturer" to Build.MANUFACTURER,
            "model" to Build.MODEL,
            "soc" to if (Build.VERSION.SDK_INT >= SOC_API) Build.SOC_MODEL else Build.HARDWARE,
            "abi" to Build.SUPPORTED_ABIS.firstOrNull(),
            "sdk" to Build.VERSION.SDK_INT,
        )

    private companion object {
        const val TAG = "FloraBench"
        const val EXIT_DELAY_MS = 300L
        const val SOC_API = 31
        val PLAIN = Regex("[A-Za-z0-9._-]{1,80}")

        @Suppress("DEPRECATION")
        fun readExtra(
            b: Bundle,
            key: String,
        ): Any? = b.get(key)
    }
}
