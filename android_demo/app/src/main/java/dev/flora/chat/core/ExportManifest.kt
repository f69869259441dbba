package dev.flora.chat.core

import org.json.JSONException
import java.io.File

/**
 * What the app needs from a flora-export output directory: the program and tokenizer
 * files, the context length, and the chat format (template + stop strings) recorded by
 * the exporter in `manifest.json` (`runtime.chat`). The tokenizer is the file named by
 * `tokenizers.executorch-xnnpack.file`, the one the exporter checked in this runtime.
 */
data class ExportManifest(
    val dir: File,
    val pte: File,
    val tokenizer: File,
    val target: String,
    val modelName: String,
    val adapter: String?,
    val quant: String?,
    val maxSeqLen: Int,
    val chat: ChatFormat,
) {
    /** One line for the model picker, e.g. "android · base + ffba · 8da4w". */
    val label: String
        get() =
            listOfNotNull(dir.name, modelName + (adapter?.let { " + $it" } ?: ""), quant)
                .joinToString(" · ")

    companion object {
        const val FILE = "manifest.json"

        /** Read `dir/manifest.json`; fails with a message that names the problem and the fix. */
        fun load(dir: File): ExportManifest {
            val file = File(dir, FILE)
            if (!file.isFile) {
                throw ManifestException(
                    "$dir has no $FILE",
                    "push a whole flora-export output directory (flora-export --target android --push)",
                )
            }
            val names = dir.list()?.toList() ?: emptyList()
            return parse(dir, file.readText(), names)
        }

        fun parse(
            dir: File,
            text: String,
            fileNames: List<String>,
        ): ExportManifest {
            val root =
                try {
                    Json.parseObject(text)
                } catch (e: JSONException) {
                    throw ManifestException("${dir.name}/$FILE is not valid JSON (${e.message})", "re-export the model")
                }
            val backends = root.list("backends")?.filterIsInstance<String>() ?: emptyList()
            if ("executorch-xnnpack" !in backends) {
                throw ManifestException(
                    "${dir.name} is a ${backends.joinToString().ifEmpty { "non-ExecuTorch" }} export",
                    "export with flora-export --target android",
                )
            }
            val runtime = root.obj("runtime") ?: emptyMap()
            val pte = fileNames.filter { it.endsWith(".pte") }.sorted().firstOrNull()
            // The file the exporter's tokenizer gate checked for this runtime (it may be a
            // rewrite, tokenizer.executorch.json, or a SentencePiece tokenizer.model);
            // exports without that record ship one tokenizer.json.
            val checked = root.obj("tokenizers")?.obj("executorch-xnnpack")?.string("file")
            if (checked != null && checked !in fileNames) {
                throw ManifestException(
                    "${dir.name} lacks $checked, the tokenizer file its manifest names",
                    "push the whole export directory again",
                )
            }
            val tokenizer = checked ?: fileNames.firstOrNull { it == "tokenizer.json" }
            if (pte == null || tokenizer == null) {
                throw ManifestException(
                    "${dir.name} lacks ${if (pte == null) "a .pte program" else "a tokenizer file"}",
                    "push the whole export directory again",
                )
            }
            val model = root.obj("model") ?: emptyMap()
            return ExportManifest(
                dir = dir,
                pte = File(dir, pte),
                tokenizer = File(dir, tokenizer),
                target = root.string("target") ?: "?",
                modelName = model.string("name") ?: "model",
                adapter = root.obj("adapter")?.let { a -> a.string("adapter_type")?.let { "$it (${a.string("state")})" } },
                quant = root.obj("quantization")?.string("name"),
                maxSeqLen = runtime.int("max_seq_len") ?: DEFAULT_MAX_SEQ,
                chat = ChatFormat.fromManifest(runtime.obj("chat"), runtime.string("input_normalization")),
            )
        }

        private const val DEFAULT_MAX_SEQ = 128
    }
}

class ManifestException(
    val problem: String,
    val fix: String,
) : IllegalArgumentException("$problem: $fix")
