import Foundation

/// The exporter's chat format (`manifest.json`, `runtime.chat`): a one-turn template with a
/// `{prompt}` slot, the stop strings that end an assistant turn, and the begin-of-text
/// prefix that only the first turn of a conversation carries.
///
/// Later turns repeat the template without that prefix, after the previous reply and the
/// first stop string, which is how the model saw multi-turn text in training
/// (Llama-3: `<|start_header_id|>user<|end_header_id|>\n\n...<|eot_id|>`).
///
/// `normalization` is the manifest's `runtime.input_normalization`: `"NFC"` when the shipped
/// tokenizer file leaves Unicode NFC to the caller (Qwen), applied to every prompt text
/// before the tokenizer sees it.
public struct ChatFormat: Equatable, Sendable {
    public static let slot = "{prompt}"
    /// Used when an export records no chat format: the prompt is sent as typed.
    public static let raw = ChatFormat(template: slot, stop: [], bos: "")
    static let llama3Bos = "<|begin_of_text|>"

    static let nfc = "NFC"

    public let template: String
    public let stop: [String]
    public let bos: String
    public let normalization: String?

    public init(template: String, stop: [String], bos: String, normalization: String? = nil) {
        precondition(template.contains(Self.slot), "chat template has no \(Self.slot) slot")
        self.template = template
        self.stop = stop
        self.bos = bos
        self.normalization = normalization
    }

    /// The text as the runtime's tokenizer must receive it (the input normalization).
    public func normalize(_ text: String) -> String {
        normalization == Self.nfc ? text.precomposedStringWithCanonicalMapping : text
    }

    /// The prompt for `turns` (earlier user/assistant exchanges) followed by `user`.
    public func format(_ turns: [Exchange], user: String) -> String {
        var out = ""
        for (i, t) in turns.enumerated() {
            out += turn(t.user, first: i == 0) + t.reply + (stop.first ?? "")
        }
        return normalize(out + turn(user, first: turns.isEmpty))
    }

    private func turn(_ user: String, first: Bool) -> String {
        let t = !first && !bos.isEmpty && template.hasPrefix(bos) ? String(template.dropFirst(bos.count)) : template
        return t.replacingOccurrences(of: Self.slot, with: user)
    }

    public static func fromManifest(_ chat: JSONObject?, normalization: String? = nil) -> ChatFormat {
        guard let template = chat?.string("template"), template.contains(slot) else {
            return ChatFormat(template: slot, stop: [], bos: "", normalization: normalization)
        }
        let stop = chat?.list("stop")?.compactMap(\.stringValue) ?? []
        let bos = chat?.string("bos") ?? (template.hasPrefix(llama3Bos) ? llama3Bos : "")
        return ChatFormat(template: template, stop: stop, bos: bos, normalization: normalization)
    }
}

/// One finished user/assistant exchange.
public struct Exchange: Equatable, Sendable {
    public let user: String
    public let reply: String

    public init(user: String, reply: String) {
        self.user = user
        self.reply = reply
    }
}

/// Removes stop strings from streamed text. A piece that might be the start of a stop
/// string is held back until the next piece decides; after a stop string nothing more is
/// shown. `push` returns the text that can be shown now, `flush` what is left at the end.
/// Works on Unicode scalars, so a stop string split anywhere across pieces is found.
public struct StopFilter {
    private let stops: [[Unicode.Scalar]]
    private var pending: [Unicode.Scalar] = []
    public private(set) var stopped = false

    public init(_ stop: [String]) {
        stops = stop.map { Array($0.unicodeScalars) }.filter { !$0.isEmpty }
    }

    public mutating func push(_ piece: String) -> String {
        if stopped { return "" }
        pending.append(contentsOf: piece.unicodeScalars)
        if let hit = stops.compactMap({ firstIndex(of: $0, in: pending) }).min() {
            stopped = true
            let shown = Self.text(pending[..<hit])
            pending.removeAll()
            return shown
        }
        let keep = longestStopPrefixSuffix()
        let shown = Self.text(pending[..<(pending.count - keep)])
        pending.removeFirst(pending.count - keep)
        return shown
    }

    public mutating func flush() -> String {
        defer { pending.removeAll() }
        return Self.text(pending[...])
    }

    private func firstIndex(of needle: [Unicode.Scalar], in hay: [Unicode.Scalar]) -> Int? {
        guard needle.count <= hay.count else { return nil }
        for i in 0...(hay.count - needle.count) where hay[i..<(i + needle.count)].elementsEqual(needle) {
            return i
        }
        return nil
    }

    private func longestStopPrefixSuffix() -> Int {
        var best = 0
        for s in stops {
            var n = min(s.count - 1, pending.count)
            while n > best {
                if pending[(pending.count - n)...].elementsEqual(s[..<n]) { best = n }
                n -= 1
            }
        }
        return best
    }

    private static func text(_ scalars: ArraySlice<Unicode.Scalar>) -> String {
        var s = String.UnicodeScalarView()
        s.append(contentsOf: scalars)
        return String(s)
    }
}
