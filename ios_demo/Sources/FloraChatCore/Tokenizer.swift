import Foundation

/// The tokenizer the Core ML engine needs, kept small so the app can plug in any
/// implementation of `tokenizer.json` (swift-transformers' `Tokenizers` in the app, a
/// tiny vocabulary in the tests).
public protocol TextTokenizer: AnyObject {
    /// The token ids of `text`. Special-token strings in the text (`<|eot_id|>`, ...)
    /// become their ids; nothing is added (the chat template carries the bos).
    func encode(_ text: String) throws -> [Int]

    /// The text of `ids`, special tokens written out. Bytes that do not form a whole UTF-8
    /// character yet decode as U+FFFD (as Hugging Face tokenizers do).
    func decode(_ ids: [Int]) -> String

    /// The id of one token string (special tokens included), or nil.
    func tokenId(_ token: String) -> Int?
}

/// Incremental detokenization of streamed ids: `push` returns the text that the new id
/// adds. A token that ends inside a multi-byte character (byte-level BPE splits them) is
/// held back until the character is complete. Each step decodes a short window that starts
/// one token before the new text, so decoders that treat the first token of a string
/// specially (a leading-space marker) still give the same text as decoding everything.
public final class TokenStream {
    private let tokenizer: TextTokenizer
    private var ids: [Int] = []
    private var prefixOffset = 0
    private var readOffset = 0

    public init(tokenizer: TextTokenizer) { self.tokenizer = tokenizer }

    public var count: Int { ids.count }

    public func push(_ id: Int) -> String {
        ids.append(id)
        let prefix = tokenizer.decode(Array(ids[prefixOffset..<readOffset]))
        let full = tokenizer.decode(Array(ids[prefixOffset...]))
        if full.unicodeScalars.last == "\u{FFFD}" { return "" }
        let prefixScalars = prefix.unicodeScalars.count
        guard full.unicodeScalars.count > prefixScalars else { return "" }
        var added = String.UnicodeScalarView()
        added.append(contentsOf: full.unicodeScalars.dropFirst(prefixScalars))
        prefixOffset = readOffset
        readOffset = ids.count
        return String(added)
    }

    /// What is still held back (tokens that end inside a character) as the tokenizer decodes
    /// it, with U+FFFD for the incomplete bytes; empty when everything was returned. The
    /// stream starts over afterwards.
    public func finish() -> String {
        let prefix = tokenizer.decode(Array(ids[prefixOffset..<readOffset]))
        let full = tokenizer.decode(Array(ids[prefixOffset...]))
        ids = []
        prefixOffset = 0
        readOffset = 0
        guard full.unicodeScalars.count > prefix.unicodeScalars.count else { return "" }
        var rest = String.UnicodeScalarView()
        rest.append(contentsOf: full.unicodeScalars.dropFirst(prefix.unicodeScalars.count))
        return String(rest)
    }
}

/// Marks where a runner lost text. ExecuTorch's iOS `TextRunner` hands each piece over as
/// `@(token.c_str())`, which is nil for a piece that is not whole UTF-8 (a character split
/// over byte tokens), and Swift receives that as an empty string: the bytes are gone. A run
/// of empty pieces followed by more text becomes one U+FFFD before that text, so a reply
/// shows where it lost a character. Empty pieces at the very end are not marked, since an
/// end-of-turn token can decode to nothing (SentencePiece's `</s>`).
public final class LostTextMarker {
    private var lost = false

    public init() {}

    public func push(_ piece: String) -> String {
        if piece.isEmpty {
            lost = true
            return ""
        }
        defer { lost = false }
        return lost ? "\u{FFFD}" + piece : piece
    }
}

/// The ids that end a reply: the manifest's `eos_ids` and the ids of the chat format's
/// stop strings that are single tokens (`<|eot_id|>`).
public func stopTokenIds(eosIds: [Int], stop: [String], tokenizer: TextTokenizer) -> Set<Int> {
    Set(eosIds + stop.compactMap { tokenizer.tokenId($0) })
}
