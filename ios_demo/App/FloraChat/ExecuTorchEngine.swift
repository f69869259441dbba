import ExecuTorchLLM
import FloraChatCore
import Foundation

/// An export's `.pte` run by ExecuTorch's LLM runner (`TextRunner` of ExecuTorchLLM: the
/// program on XNNPACK plus the tokenizer). Greedy decoding (temperature 0), as flora-bench
/// and the exporter's parity check use; the runner stops at the model's end-of-turn tokens.
/// iOS's TextRunner reports no stats, so benchmark runs carry the app clock's figures and
/// the prompt's token count from the export's tokenizer (`countTokens`).
final class ExecuTorchEngine: LlmEngine {
    private let manifest: ExportManifest
    private var runner: TextRunner?
    private lazy var tokenizer: HFTokenizer? = try? HFTokenizer(url: manifest.tokenizer)

    init(manifest: ExportManifest) {
        self.manifest = manifest
    }

    func load() throws -> Double {
        guard let pte = manifest.pte else {
            throw RunError("\(manifest.dir.lastPathComponent) has no .pte program")
        }
        let started = DispatchTime.now().uptimeNanoseconds
        let r = TextRunner(modelPath: pte.path, tokenizerPath: manifest.tokenizer.path)
        try r.load()
        runner = r
        return Double(DispatchTime.now().uptimeNanoseconds - started) / 1e6
    }

    func generate(prompt: String, maxNewTokens: Int, listener: GenerationListener) {
        guard let r = runner else {
            listener.onError("load() the model first")
            return
        }
        // Each request holds the whole conversation: start from an empty context.
        r.reset()
        let seqLen = manifest.maxSeqLen
        let config = Config {
            $0.isEchoEnabled = false        // ObjC `echoEnabled` (getter isEchoEnabled)
            $0.maximumNewTokens = maxNewTokens
            $0.sequenceLength = seqLen
            $0.temperature = 0
        }
        do {
            // TextRunner loses a piece that is not whole UTF-8 (it arrives empty); LostTextMarker
            // shows the loss as U+FFFD. The Core ML engine detokenizes in the app and loses none.
            let marker = LostTextMarker()
            try r.generate(prompt, config) { token in listener.onToken(marker.push(token)) }
        } catch {
            listener.onError("ExecuTorch error: \(describe(error))")
        }
    }

    func stop() {
        runner?.stop()
    }

    func close() {
        runner = nil
    }

    func countTokens(_ prompt: String) -> Int? {
        try? tokenizer?.encode(prompt).count
    }
}
