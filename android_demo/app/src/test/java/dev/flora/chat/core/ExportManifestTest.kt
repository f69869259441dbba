package dev.flora.chat.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Assert.assertThrows
import org.junit.Assert.assertTrue
import org.junit.Rule
import org.junit.Test
import org.junit.rules.TemporaryFolder
import java.io.File

class ExportManifestTest {
    @get:Rule
    val tmp = TemporaryFolder()

    @Test
    fun readsWhatTheAppNeeds() {
        val m = ExportManifest.parse(File("/d/android"), MANIFEST, listOf("manifest.json", "model.pte", "tokenizer.json"))
        assertEquals("model.pte", m.pte.name)
        assertEquals("tokenizer.json", m.tokenizer.name)
        assertEquals(512, m.maxSeqLen)
        assertEquals(listOf("<|eot_id|>", "<|end_of_text|>"), m.chat.stop)
        assertEquals("<|begin_of_text|>", m.chat.bos)
        assertEquals("android · base + ffba (fused) · 8da4w", m.label)
    }

    @Test
    fun loadsTheTokenizerFileTheExporterChecked() {
        val names = listOf("manifest.json", "model.pte", "tokenizer.executorch.json", "tokenizer.json", "tokenizer.model")
        val sp = MANIFEST.replaceFirst("{", """{"tokenizers": {"executorch-xnnpack": {"file": "tokenizer.model"}},""")
        assertEquals("tokenizer.model", ExportManifest.parse(File("/d/a"), sp, names).tokenizer.name)
        val rewrite = MANIFEST.replaceFirst("{", """{"tokenizers": {"executorch-xnnpack": {"file": "tokenizer.executorch.json"}},""")
        assertEquals("tokenizer.executorch.json", ExportManifest.parse(File("/d/a"), rewrite, names).tokenizer.name)
        assertEquals("tokenizer.json", ExportManifest.parse(File("/d/a"), MANIFEST, names).tokenizer.name)
        val e =
            assertThrows(ManifestException::class.java) { ExportManifest.parse(File("/d/a"), sp, listOf("model.pte", "tokenizer.json")) }
        assertTrue(e.problem, "tokenizer.model" in e.problem)
    }

    @Test
    fun refusesExportsTheAppCannotRun() {
        val onnx = MANIFEST.replace("executorch-xnnpack", "onnx")
        val e =
            assertThrows(ManifestException::class.java) { ExportManifest.parse(File("/d/x"), onnx, listOf("model.pte", "tokenizer.json")) }
        assertTrue(e.fix, "--target android" in e.fix)
        assertThrows(ManifestException::class.java) { ExportManifest.parse(File("/d/x"), MANIFEST, listOf("tokenizer.json")) }
        assertThrows(ManifestException::class.java) { ExportManifest.parse(File("/d/x"), "{", listOf("model.pte", "tokenizer.json")) }
    }

    @Test
    fun catalogListsPushedExportsAndExplainsBrokenOnes() {
        val root = tmp.newFolder("flora")
        File(root, "good").apply { mkdirs() }.also {
            File(it, "manifest.json").writeText(MANIFEST)
            File(it, "model.pte").writeText("x")
            File(it, "tokenizer.json").writeText("{}")
        }
        File(root, "broken").apply { mkdirs() }.also { File(it, "manifest.json").writeText(MANIFEST) }
        File(root, "unrelated").mkdirs()
        val entries = ModelCatalog.scan(listOf(root, File(tmp.root, "missing")))
        assertEquals(listOf("broken", "good"), entries.map { it.dir.name })
        assertNull(entries[0].manifest)
        assertTrue(entries[0].label, "lacks a .pte" in entries[0].label)
        assertEquals(512, entries[1].manifest!!.maxSeqLen)
    }

    companion object {
        val MANIFEST =
            """
            {"format_version": 1, "target": "android", "backends": ["executorch-xnnpack"],
             "model": {"name": "base"}, "adapter": {"adapter_type": "ffba", "state": "fused"},
             "quantization": {"name": "8da4w"},
             "runtime": {"max_seq_len": 512, "bos_id": 896, "eos_ids": [897, 905],
               "chat": {"template": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{prompt}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
                        "stop": ["<|eot_id|>", "<|end_of_text|>"]}}}
            """.trimIndent()
    }
}
