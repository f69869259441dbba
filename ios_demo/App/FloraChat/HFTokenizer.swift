import FloraChatCore
import Foundation
import Hub
import Tokenizers

/// The export's `tokenizer.json` through swift-transformers (`Tokenizers`), behind
/// FloraChatCore's `TextTokenizer`. The export folder has no `tokenizer_config.json`, so
/// the configuration is built here: a generic fast tokenizer (BPE for Llama-3) with no
/// clean-up of spaces, which would change already-streamed text.
final class HFTokenizer: TextTokenizer {
    private let tokenizer: Tokenizer
    private let added: [String: Int]

    init(url: URL) throws {
        let data = try Data(contentsOf: url)
        guard let json = try JSONSerialization.jsonObject(with: data) as? [NSString: Any] else {
            throw RunError("\(url.lastPathComponent) is not a JSON object")
        }
        let config: [NSString: Any] = [
            "tokenizer_class": "PreTrainedTokenizerFast",
            "clean_up_tokenization_spaces": false,
        ]
        tokenizer = try PreTrainedTokenizer(tokenizerConfig: Config(config), tokenizerData: Config(json))
        var added: [String: Int] = [:]
        for case let token as [String: Any] in json["added_tokens"] as? [Any] ?? [] {
            if let content = token["content"] as? String, let id = token["id"] as? Int { added[content] = id }
        }
        self.added = added
    }

    func encode(_ text: String) throws -> [Int] {
        tokenizer.encode(text: text, addSpecialTokens: false)
    }

    func decode(_ ids: [Int]) -> String {
        tokenizer.decode(tokens: ids, skipSpecialTokens: false)
    }

    func tokenId(_ token: String) -> Int? {
        added[token] ?? tokenizer.convertTokenToId(token)
    }
}
