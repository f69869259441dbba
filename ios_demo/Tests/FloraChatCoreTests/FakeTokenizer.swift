@testable import FloraChatCore
import Foundation

/// A tiny byte-level vocabulary for testing the tokenizer glue without a tokenizer
/// library: special tokens are matched first, then the longest vocabulary entry; "é" is
/// only reachable as two byte tokens (0xC3, 0xA9), as byte-level BPE splits rare
/// characters. With `stripsLeadingSpace`, decoding drops the first token's leading space
/// (what SentencePiece-style decoders do), which naive per-token decoding gets wrong.
final class FakeTokenizer: TextTokenizer {
    static let specials = ["<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>"]
    static let words = ["h", "e", "l", "o", "!", " ", "hel", "lo", " world", " hello", "[", "]"]
    let vocab: [[UInt8]]
    let stripsLeadingSpace: Bool

    init(stripsLeadingSpace: Bool = false) {
        vocab = Self.specials.map { Array($0.utf8) } + Self.words.map { Array($0.utf8) } + [[0xC3], [0xA9]]
        self.stripsLeadingSpace = stripsLeadingSpace
    }

    func id(_ token: String) -> Int { vocab.firstIndex(of: Array(token.utf8))! }
    var eAcute: [Int] { [vocab.count - 2, vocab.count - 1] }

    func encode(_ text: String) throws -> [Int] {
        var out: [Int] = []
        var rest = Array(text.utf8)
        while !rest.isEmpty {
            if let s = Self.specials.firstIndex(where: { rest.starts(with: Array($0.utf8)) }) {
                out.append(s)
                rest.removeFirst(Self.specials[s].utf8.count)
                continue
            }
            let candidates = vocab.indices.dropFirst(Self.specials.count).filter { rest.starts(with: vocab[$0]) }
            guard let best = candidates.max(by: { vocab[$0].count < vocab[$1].count }) else {
                throw RunError("no token for byte \(rest[0])")
            }
            out.append(best)
            rest.removeFirst(vocab[best].count)
        }
        return out
    }

    func decode(_ ids: [Int]) -> String {
        var bytes = ids.flatMap { vocab[$0] }
        if stripsLeadingSpace, bytes.first == 0x20 { bytes.removeFirst() }
        return String(decoding: bytes, as: UTF8.self)
    }

    func tokenId(_ token: String) -> Int? { vocab.firstIndex(of: Array(token.utf8)) }
}
