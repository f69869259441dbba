import Foundation

/// What `generate` reports as it runs. Calls arrive on the generating thread.
public protocol GenerationListener: AnyObject {
    /// One generated token's text (may be empty while a multi-byte character is incomplete).
    func onToken(_ piece: String)
    /// Text that no new token brought: what was still held back when generation ended (a
    /// character left incomplete, as U+FFFD). Not a token; the timers do not count it.
    func onText(_ text: String)
    /// The runner's stats JSON (ExecuTorch's PyTorchObserver fields), after the last token.
    func onStats(_ json: String)
    func onError(_ message: String)
}

public extension GenerationListener {
    /// A listener that does not tell the two apart gets the text as one more piece.
    func onText(_ text: String) { onToken(text) }
    func onStats(_ json: String) {}
    func onError(_ message: String) {}
}

/// The model behind the chat and the benchmark: Core ML or ExecuTorch in the app, a
/// scripted engine in unit tests. Calls come from one worker thread, except `stop`, which
/// the UI may call during `generate`.
public protocol LlmEngine: AnyObject {
    /// Load the program; returns the load time in milliseconds.
    func load() throws -> Double

    /// Generate up to `maxNewTokens` tokens after `prompt` (blocking). Pieces of text
    /// stream to `listener` on the calling thread; the runner's stats JSON arrives last.
    /// Starts from an empty context (the whole conversation is in `prompt`).
    func generate(prompt: String, maxNewTokens: Int, listener: GenerationListener)

    /// Ask a running `generate` to return early (thread-safe).
    func stop()

    func close()

    /// The prompt's token count when the engine can tell without running the model
    /// (used when its runner reports no stats); nil otherwise.
    func countTokens(_ prompt: String) -> Int?
}

public extension LlmEngine {
    func countTokens(_ prompt: String) -> Int? { nil }
}

/// Times one generation with the app's clock and keeps what the runner reported (its
/// stats JSON, an error); every piece goes on to `onPiece`. The chat screen and the
/// benchmark both listen through one of these.
public final class GenerationRecord: GenerationListener {
    public let timer: GenerationTimer
    public private(set) var stats: String?
    public private(set) var error: String?
    private let onPiece: (String) -> Void

    public init(clock: @escaping Clock = monotonicNanos, onPiece: @escaping (String) -> Void = { _ in }) {
        timer = GenerationTimer(clock: clock)
        self.onPiece = onPiece
    }

    /// The runner's stats as a JSON object, or nil when it sent none (or not JSON).
    public var runnerStats: JSONObject? { stats.flatMap { try? Json.parseObject($0) } }

    public func onToken(_ piece: String) {
        timer.token()
        onPiece(piece)
    }

    public func onText(_ text: String) { onPiece(text) }

    public func onStats(_ json: String) { stats = json }
    public func onError(_ message: String) { error = message }
}

/// A flag one thread sets and another polls (the stop button during generation).
public final class AtomicFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false

    public init() {}

    public var isSet: Bool {
        lock.lock()
        defer { lock.unlock() }
        return value
    }

    public func set(_ v: Bool = true) {
        lock.lock()
        value = v
        lock.unlock()
    }
}

/// The text of an error for a report or the screen: its localized description when it
/// has one, else its description.
public func describe(_ error: Error) -> String {
    if let e = error as? LocalizedError, let d = e.errorDescription { return d }
    return String(describing: error)
}
