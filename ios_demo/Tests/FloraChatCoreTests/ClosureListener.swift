import FloraChatCore

/// A listener made of closures (tests of engines that stream to a listener).
final class ClosureListener: GenerationListener {
    private let token: (String) -> Void
    private let stats: (String) -> Void
    private let error: (String) -> Void

    init(onToken: @escaping (String) -> Void, onStats: @escaping (String) -> Void = { _ in },
         onError: @escaping (String) -> Void = { _ in }) {
        token = onToken
        stats = onStats
        error = onError
    }

    func onToken(_ piece: String) { token(piece) }
    func onStats(_ json: String) { stats(json) }
    func onError(_ message: String) { error(message) }
}
