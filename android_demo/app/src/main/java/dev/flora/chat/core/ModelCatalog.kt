package dev.flora.chat.core

import java.io.File

/** A directory the picker offers: its manifest, or why it cannot be used. */
data class ModelEntry(
    val dir: File,
    val manifest: ExportManifest?,
    val problem: String?,
) {
    val label: String get() = manifest?.label ?: "${dir.name} (unusable: $problem)"
}

/**
 * Finds exports pushed to the device: every directory directly under the roots
 * (default `/data/local/tmp/flora`, where `flora-export --push` copies them, and the
 * app's own `files/models`) that holds a `manifest.json`.
 */
object ModelCatalog {
    const val PUSH_ROOT = "/data/local/tmp/flora"

    fun scan(roots: List<File>): List<ModelEntry> =
        roots
            .flatMap { root -> root.listFiles()?.filter { it.isDirectory }.orEmpty() }
            .filter { File(it, ExportManifest.FILE).isFile }
            .sortedBy { it.path }
            .map { entry(it) }

    fun entry(dir: File): ModelEntry =
        try {
            ModelEntry(dir, ExportManifest.load(dir), null)
        } catch (e: ManifestException) {
            ModelEntry(dir, null, e.problem)
        }
}
