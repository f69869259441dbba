package dev.flora.chat

import android.app.Activity
import android.os.Bundle
import android.os.Handler
import android.os.Looper
import android.view.View
import android.widget.AdapterView
import android.widget.ArrayAdapter
import android.widget.Button
import android.widget.EditText
import android.widget.LinearLayout
import android.widget.ScrollView
import android.widget.Spinner
import android.widget.TextView
import dev.flora.chat.core.ChatSession
import dev.flora.chat.core.Figures
import dev.flora.chat.core.GenerationRecord
import dev.flora.chat.core.LlmEngine
import dev.flora.chat.core.ModelCatalog
import dev.flora.chat.core.ModelEntry
import dev.flora.chat.core.Request
import java.io.File
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors

/**
 * The chat screen: a model picker over the pushed exports, the conversation with each
 * reply's TTFT / TPOT / tokens per second, and a Send button that turns into Stop while
 * a reply streams. The engine runs on one worker thread; the UI only reads ChatSession.
 */
class ChatActivity : Activity() {
    private val main = Handler(Looper.getMainLooper())
    private val worker: ExecutorService = Executors.newSingleThreadExecutor()
    private var engine: LlmEngine? = null
    private var session: ChatSession? = null
    private var entries: List<ModelEntry> = emptyList()
    private var stopRequested = false
    private var loadedDir: String? = null

    private lateinit var picker: Spinner
    private lateinit var info: TextView
    private lateinit var messages: LinearLayout
    private lateinit var scroll: ScrollView
    private lateinit var input: EditText
    private lateinit var send: Button

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_chat)
        picker = findViewById(R.id.model_picker)
        info = findViewById(R.id.model_info)
        messages = findViewById(R.id.messages)
        scroll = findViewById(R.id.scroll)
        input = findViewById(R.id.input)
        send = findViewById(R.id.send)
        send.setOnClickListener { onSendOrStop() }
        findViewById<Button>(R.id.new_chat).setOnClickListener { newChat() }
        findViewById<Button>(R.id.refresh).setOnClickListener { refreshModels() }
        refreshModels()
    }

    override fun onDestroy() {
        engine?.stop()
        val old = engine
        worker.execute { old?.close() }
        worker.shutdown()
        super.onDestroy()
    }

    private fun refreshModels() {
        val roots = listOfNotNull(File(ModelCatalog.PUSH_ROOT), getExternalFilesDir("models"))
        val requested = intent.getStringExtra(EXTRA_MODEL)?.let { ModelCatalog.entry(File(it)) }
        entries = (listOfNotNull(requested) + ModelCatalog.scan(roots)).distinctBy { it.dir.path }
        if (entries.isEmpty()) {
            info.text = getString(R.string.no_models, ModelCatalog.PUSH_ROOT)
        }
        picker.adapter = ArrayAdapter(this, android.R.layout.simple_spinner_dropdown_item, entries.map { it.label })
        picker.onItemSelectedListener =
            object : AdapterView.OnItemSelectedListener {
                override fun onItemSelected(
                    parent: AdapterView<*>?,
                    view: View?,
                    position: Int,
                    id: Long,
                ) = select(entries[position])

                override fun onNothingSelected(parent: AdapterView<*>?) {}
            }
    }

    private fun select(entry: ModelEntry) {
        val manifest = entry.manifest
        if (manifest == null) {
            info.text = entry.label
            return
        }
        if (entry.dir.path == loadedDir && engine != null) return
        engine?.stop()
        val old = engine
        engine = null
        session = null
        setBusy(true)
        info.text = getString(R.string.loading, manifest.label)
        worker.execute {
            old?.close()
            val next = ExecuTorchEngine(manifest)
            val result = runCatching { next.load() }
            main.post {
                setBusy(false)
                result
                    .onSuccess { ms ->
                        engine = next
                        loadedDir = entry.dir.path
                        session = ChatSession(manifest.chat, manifest.maxSeqLen)
                        info.text = getString(R.string.loaded, manifest.label, ms)
                        newChat()
                    }.onFailure { info.text = getString(R.string.load_failed, it.message) }
            }
        }
    }

    private fun newChat() {
        val s = session ?: return
        if (s.generating) return
        s.clear()
        messages.removeAllViews()
    }

    private fun onSendOrStop() {
        val s = session ?: return
        if (s.generating) {
            stopRequested = true
            engine?.stop()
            return
        }
        val text = input.text.toString().trim()
        if (text.isEmpty()) return
        val request =
            try {
                s.begin(text)
            } catch (e: IllegalArgumentException) {
                info.text = e.message
                return
            }
        input.setText("")
        addBubble(text, fromUser = true)
        val reply = addBubble("…", fromUser = false)
        val stats = addStatsLine()
        stopRequested = false
        send.setText(R.string.stop)
        worker.execute { generate(s, request, reply, stats) }
    }

    /** On the worker thread: stream the reply into `reply`, then show its figures. */
    private fun generate(
        s: ChatSession,
        request: Request,
        reply: TextView,
        statsLine: TextView,
    ) {
        val e = engine ?: return
        val record = GenerationRecord { piece -> main.post { reply.text = s.append(piece) } }
        record.timer.start()
        e.generate(request.prompt, request.maxNewTokens, record)
        record.finish()
        val runner = record.runnerStats?.let { Figures.fromRunnerStats(it) }
        val figures = record.timer.figures(runner?.promptTokens)
        main.post {
            val err = record.error
            if (err != null) s.fail(err) else s.finish(figures, request, stopRequested)
            val msg = s.messages.last()
            reply.text = msg.text
            statsLine.text = describe(figures, runner, msg.note, request.turnsKept)
            send.setText(R.string.send)
        }
    }

    private fun describe(
        app: Figures?,
        runner: Figures?,
        note: String?,
        turnsKept: Int,
    ): String {
        val lines = mutableListOf<String>()
        app?.let { lines += it.summary() }
        runner?.let { lines += getString(R.string.runner_stats, it.summary()) }
        if (turnsKept > 0) lines += getString(R.string.history, turnsKept)
        note?.let { lines += it }
        return lines.joinToString("\n")
    }

    private fun addBubble(
        text: String,
        fromUser: Boolean,
    ): TextView {
        val v = layoutInflater.inflate(if (fromUser) R.layout.bubble_user else R.layout.bubble_model, messages, false) as TextView
        v.text = text
        messages.addView(v)
        scroll.post { scroll.fullScroll(View.FOCUS_DOWN) }
        return v
    }

    private fun addStatsLine(): TextView {
        val v = layoutInflater.inflate(R.layout.stats_line, messages, false) as TextView
        messages.addView(v)
        return v
    }

    private fun setBusy(busy: Boolean) {
        send.isEnabled = !busy
        picker.isEnabled = !busy
    }

    companion object {
        /** `--es model DIR`: open this export directory (flora-export --push prints it). */
        const val EXTRA_MODEL = "model"
    }
}
