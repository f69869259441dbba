// flora-chat-inspect: how the app reads flora-export output directories, before they are
// copied to a phone. Prints one JSON object per directory (the engines the app offers,
// its files, context length, special ids, chat format and the first-turn prompt) and
// exits 2 when a directory is unusable, with the app's own message.
//
//   swift run flora-chat-inspect flora-out/ios
//   swift run flora-chat-inspect flora-out/ios flora-out/android
import FloraChatCore
import Foundation

let dirs = Array(CommandLine.arguments.dropFirst())
if dirs.isEmpty || dirs.contains("--help") || dirs.contains("-h") {
    print("""
    usage: flora-chat-inspect EXPORT_DIR [EXPORT_DIR ...]

    Reads each flora-export output directory as the flora chat iOS app does and prints what
    the app would use (one JSON object per line). Exit status 2 when one is unusable.

    example: swift run flora-chat-inspect flora-out/ios
    """)
    exit(dirs.isEmpty ? 2 : 0)
}

var failed = false
for path in dirs {
    let entry = ModelCatalog.entry(URL(fileURLWithPath: path, isDirectory: true))
    guard let m = entry.manifest else {
        failed = true
        print(Json.write(["dir": JSONValue(path), "problem": JSONValue(entry.problem)] as JSONObject))
        continue
    }
    let out: JSONObject = [
        "dir": JSONValue(path),
        "label": JSONValue(m.label),
        "engines": JSONValue(m.engines.map(\.rawValue)),
        "pte": JSONValue(m.pte?.lastPathComponent),
        "mlpackage": JSONValue(m.mlpackage?.lastPathComponent),
        "tokenizer": JSONValue(m.tokenizer.lastPathComponent),
        "target": JSONValue(m.target),
        "max_seq_len": JSONValue(m.maxSeqLen),
        "bos_id": JSONValue(m.bosId),
        "eos_ids": .array(m.eosIds.map { JSONValue($0) }),
        "chat": ["template": JSONValue(m.chat.template), "stop": JSONValue(m.chat.stop), "bos": JSONValue(m.chat.bos)],
        "first_turn": JSONValue(m.chat.format([], user: "hello")),
    ]
    print(Json.write(out))
}
exit(failed ? 2 : 0)
