import Foundation

/// One line of the conversation as the screen shows it.
public struct Message: Equatable, Identifiable, Sendable {
    public let id: Int
    public let fromUser: Bool
    public var text: String
    public var figures: Figures?
    public var note: String?
}

/// What to send to the engine for one reply.
public struct Request: Equatable, Sendable {
    public let prompt: String
    public let maxNewTokens: Int
    public let turnsKept: Int
}

public enum ChatError: Error, Equatable, CustomStringConvertible, LocalizedError {
    case busy
    case empty
    case tooLong(maxSeqLen: Int, maxNewTokens: Int)

    public var description: String {
        switch self {
        case .busy: return "a reply is still being generated"
        case .empty: return "empty message"
        case let .tooLong(seq, new):
            return "message too long for the model's context (\(seq) tokens, \(new) kept for the reply)"
        }
    }

    public var errorDescription: String? { description }
}

/// The conversation and its rules, free of UIKit/SwiftUI: formats each request from the
/// history that fits the context, filters stop strings out of the streamed reply, and
/// records each reply's figures. Each request is a fresh context holding the whole kept
/// history, so a reply never depends on runner state left by an earlier one.
public final class ChatSession {
    public static let defaultMaxNewTokens = 128
    static let safety = 1.1

    public let format: ChatFormat
    public let maxSeqLen: Int
    public let maxNewTokens: Int
    public private(set) var messages: [Message] = []
    private var exchanges: [Exchange] = []
    private var filter: StopFilter
    private var pendingUser: String?
    private var nextId = 0

    /// Prompt tokens per character, learnt from the runner's counts (start: 1, pessimistic).
    public private(set) var tokensPerChar = 1.0

    public var generating: Bool { pendingUser != nil }

    public init(format: ChatFormat, maxSeqLen: Int, maxNewTokens: Int = ChatSession.defaultMaxNewTokens) {
        self.format = format
        self.maxSeqLen = maxSeqLen
        self.maxNewTokens = maxNewTokens
        filter = StopFilter(format.stop)
    }

    /// Start a reply to `user`; fails if a reply is running or the message cannot fit.
    public func begin(_ user: String) throws -> Request {
        if generating { throw ChatError.busy }
        if user.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty { throw ChatError.empty }
        let budget = maxSeqLen - maxNewTokens
        var kept = exchanges.count
        var prompt = format.format(Array(exchanges.suffix(kept)), user: user)
        while estimateTokens(prompt) > budget && kept > 0 {
            kept -= 1
            prompt = format.format(Array(exchanges.suffix(kept)), user: user)
        }
        if estimateTokens(prompt) > budget {
            throw ChatError.tooLong(maxSeqLen: maxSeqLen, maxNewTokens: maxNewTokens)
        }
        pendingUser = user
        filter = StopFilter(format.stop)
        append(Message(id: 0, fromUser: true, text: user))
        append(Message(id: 0, fromUser: false, text: ""))
        return Request(prompt: prompt, maxNewTokens: maxNewTokens, turnsKept: kept)
    }

    /// A streamed piece of the reply; returns the reply text shown so far.
    @discardableResult
    public func append(_ piece: String) -> String {
        guard generating else { return messages.last?.text ?? "" }
        messages[messages.count - 1].text += filter.push(piece)
        return messages[messages.count - 1].text
    }

    /// The reply ended (at a stop string, the length limit, or the stop button).
    public func finish(figures: Figures?, request: Request, stoppedByUser: Bool = false) {
        guard let user = pendingUser else { return }
        let last = messages.count - 1
        if !filter.stopped { messages[last].text += filter.flush() }
        messages[last].figures = figures
        messages[last].note = stoppedByUser ? "stopped" : nil
        let chars = request.prompt.utf16.count
        if let p = figures?.promptTokens, p > 0, chars > 0 {
            tokensPerChar = Double(p) / Double(chars)
        }
        exchanges.append(Exchange(user: user, reply: messages[last].text))
        pendingUser = nil
    }

    /// The reply failed; the exchange is not kept as history.
    public func fail(_ error: String) {
        guard pendingUser != nil else { return }
        messages[messages.count - 1].note = error
        pendingUser = nil
    }

    public func clear() throws {
        if generating { throw ChatError.busy }
        messages.removeAll()
        exchanges.removeAll()
    }

    private func append(_ m: Message) {
        var m = m
        m = Message(id: nextId, fromUser: m.fromUser, text: m.text, figures: m.figures, note: m.note)
        nextId += 1
        messages.append(m)
    }

    private func estimateTokens(_ prompt: String) -> Int {
        Int((Double(prompt.utf16.count) * tokensPerChar * Self.safety).rounded(.up))
    }
}

/// The lines under a reply: the app clock's figures, the runner's own figures when it
/// reported stats, how much history the prompt carried, and a note ("stopped", an error).
public func replyLines(app: Figures?, runner: Figures?, note: String?, turnsKept: Int) -> [String] {
    var lines: [String] = []
    if let app { lines.append(app.summary()) }
    if let runner { lines.append("runner: \(runner.summary())") }
    if turnsKept > 0 { lines.append("context: \(turnsKept) earlier exchange(s)") }
    if let note { lines.append(note) }
    return lines
}
