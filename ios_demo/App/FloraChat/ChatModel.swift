import FloraChatCore
import Foundation

/// The chat screen's state: the exports in Documents, the chosen export and engine, the
/// conversation (FloraChatCore's ChatSession) and each reply's figures. The engine runs
/// on one serial worker queue; everything published changes on the main thread.
final class ChatModel: ObservableObject {
    @Published private(set) var entries: [ModelEntry] = []
    @Published private(set) var messages: [Message] = []
    /// The lines under each reply (figures, history, note), by message id.
    @Published private(set) var details: [Int: [String]] = [:]
    @Published private(set) var status = ""
    @Published private(set) var loading = false
    @Published private(set) var generating = false
    @Published var selectedPath: String? {
        didSet { if selectedPath != oldValue { load() } }
    }
    @Published var engineKind: EngineKind = .coreML {
        didSet { if engineKind != oldValue { load() } }
    }

    private let worker = DispatchQueue(label: "dev.flora.chat.engine", qos: .userInitiated)
    private var engine: LlmEngine?
    private var session: ChatSession?
    private var stopRequested = false

    var selected: ModelEntry? { entries.first { $0.dir.path == selectedPath } }
    var engines: [EngineKind] { selected?.manifest?.engines ?? [] }

    func refresh() {
        entries = ModelCatalog.scan([AppEnvironment.documents])
        if entries.isEmpty {
            status = "No exports found. Copy a flora-export --target ios folder into the app's Documents "
                + "(Finder > iPhone > Files, or xcrun devicectl device copy to), then tap Rescan."
        }
        if selected == nil { selectedPath = entries.first { $0.manifest != nil }?.dir.path }
    }

    /// Load the selected export with the selected engine (on the worker).
    private func load() {
        guard let entry = selected else { return }
        guard let manifest = entry.manifest else {
            status = entry.label
            return
        }
        if !manifest.engines.contains(engineKind), let first = manifest.engines.first {
            engineKind = first      // didSet calls load() again with an engine the export has
            return
        }
        let old = engine
        old?.stop()
        engine = nil
        session = nil
        loading = true
        status = "Loading \(manifest.label) on \(engineKind.title)…"
        let next = AppEnvironment.makeEngine(engineKind, manifest: manifest)
        let kind = engineKind
        worker.async {
            old?.close()
            let result = Result { try next.load() }
            DispatchQueue.main.async {
                self.loading = false
                switch result {
                case let .success(ms):
                    self.engine = next
                    self.session = ChatSession(format: manifest.chat, maxSeqLen: manifest.maxSeqLen)
                    self.status = "\(manifest.label) · \(kind.title) · loaded in \(Int(ms.rounded())) ms"
                    self.newChat()
                case let .failure(error):
                    self.status = "Could not load the model: \(describe(error))"
                }
            }
        }
    }

    func newChat() {
        guard let s = session, !s.generating else { return }
        try? s.clear()
        messages = []
        details = [:]
    }

    func sendOrStop(_ text: String) -> Bool {
        guard let s = session, let e = engine else { return false }
        if s.generating {
            stopRequested = true
            e.stop()
            return false
        }
        let request: Request
        do {
            request = try s.begin(text)
        } catch {
            status = describe(error)
            return false
        }
        messages = s.messages
        stopRequested = false
        generating = true
        worker.async { self.generate(e, s, request) }
        return true
    }

    /// On the worker: stream the reply into the session, then record its figures.
    private func generate(_ e: LlmEngine, _ s: ChatSession, _ request: Request) {
        let record = GenerationRecord { piece in
            DispatchQueue.main.async {
                s.append(piece)
                self.messages = s.messages
            }
        }
        record.timer.start()
        e.generate(prompt: request.prompt, maxNewTokens: request.maxNewTokens, listener: record)
        let runner = record.runnerStats.flatMap(Figures.fromRunnerStats)
        let figures = record.timer.figures(promptTokens: runner?.promptTokens ?? e.countTokens(request.prompt))
        DispatchQueue.main.async {
            if let error = record.error {
                s.fail(error)
            } else {
                s.finish(figures: figures, request: request, stoppedByUser: self.stopRequested)
            }
            self.messages = s.messages
            if let last = s.messages.last {
                self.details[last.id] = replyLines(app: figures, runner: runner, note: last.note,
                                                   turnsKept: request.turnsKept)
            }
            self.generating = false
        }
    }
}
