import Foundation

/// Benchmark mode's settings, read from the launch arguments (`--bench --model NAME
/// --runs 5 ...`; names as the Android app's intent extras, see ios_demo/README.md,
/// "Benchmark mode"). Bad arguments fail with a message that names the argument, the
/// allowed values and the fix.
public struct BenchmarkSpec: Equatable, Sendable {
    /// Used when neither `prompts_file` nor `prompt` is given (the Android app's list).
    public static let fixedPrompts = [
        "Write a short story about a lighthouse keeper who finds a message in a bottle.",
        "Explain in three sentences why the sky is blue.",
        "List five uses of a paper clip.",
    ]
    /// Core ML compute units the `compute_units` argument accepts.
    public static let computeUnitChoices = ["all", "cpu", "gpu", "ane"]
    static let keys: Set<String> = ["bench", "model", "run_id", "prompts_file", "prompt", "warmup", "runs",
                                    "max_new_tokens", "chat_template", "cooldown_ms", "engine", "compute_units"]

    /// The export directory: a name under the app's Documents, or an absolute path.
    public let model: String
    public let runId: String
    public let prompts: [String]
    public let warmup: Int
    public let runs: Int
    public let maxNewTokens: Int
    public let chatTemplate: Bool
    public let cooldownMs: Int
    /// nil: the export's first engine (Core ML when it has a package).
    public let engine: EngineKind?
    public let computeUnits: String

    public init(model: String, runId: String, prompts: [String], warmup: Int, runs: Int, maxNewTokens: Int,
                chatTemplate: Bool, cooldownMs: Int, engine: EngineKind? = nil, computeUnits: String = "all") {
        self.model = model
        self.runId = runId
        self.prompts = prompts
        self.warmup = warmup
        self.runs = runs
        self.maxNewTokens = maxNewTokens
        self.chatTemplate = chatTemplate
        self.cooldownMs = cooldownMs
        self.engine = engine
        self.computeUnits = computeUnits
    }

    /// The report's `config` (the same keys as the Android app's).
    public func toJSON() -> JSONObject {
        [
            "warmup": JSONValue(warmup),
            "runs": JSONValue(runs),
            "max_new_tokens": JSONValue(maxNewTokens),
            "chat_template": JSONValue(chatTemplate),
            "cooldown_ms": JSONValue(cooldownMs),
            "prompts": JSONValue(prompts),
        ]
    }

    /// True when the process was launched in benchmark mode (`--bench`).
    public static func isBenchmarkLaunch(_ argv: [String]) -> Bool { argv.contains("--bench") }

    /// `--key value`, `--key=value` and bare `--flag` (= "true") pairs from the launch
    /// arguments; `-` and `_` are the same in names. Arguments with a single dash (the
    /// ones Xcode adds, such as `-NSDocumentRevisionsDebugMode YES`) are ignored.
    public static func arguments(_ argv: [String]) throws -> [String: String] {
        var out: [String: String] = [:]
        var i = 0
        while i < argv.count {
            let arg = argv[i]
            i += 1
            guard arg.hasPrefix("--"), arg.count > 2 else { continue }
            var key = String(arg.dropFirst(2))
            var value: String
            if let eq = key.firstIndex(of: "=") {
                value = String(key[key.index(after: eq)...])
                key = String(key[..<eq])
            } else if i < argv.count, !argv[i].hasPrefix("--") {
                value = argv[i]
                i += 1
            } else {
                value = "true"
            }
            key = key.replacingOccurrences(of: "-", with: "_")
            guard keys.contains(key) else {
                throw BenchmarkError(problem: "unknown launch argument --\(key)",
                                     fix: "use \(keys.sorted().map { "--\($0)" }.joined(separator: ", "))")
            }
            out[key] = value
        }
        return out
    }

    public static func fromArguments(_ argv: [String], now: Int64,
                                     readFile: (String) throws -> String) throws -> BenchmarkSpec {
        try fromExtras(arguments(argv), now: now, readFile: readFile)
    }

    /// `extras`: the arguments by name; `readFile`: reads a file on the phone (a path as
    /// given, resolved against Documents by the app).
    public static func fromExtras(_ extras: [String: String], now: Int64,
                                  readFile: (String) throws -> String) throws -> BenchmarkSpec {
        guard let model = extras["model"], !model.isEmpty, model != "true" else {
            throw BenchmarkError(problem: "missing argument --model",
                                 fix: "pass --model NAME (an export folder in the app's Documents)")
        }
        let runId = extras["run_id"] ?? "bench-\(now)"
        guard isPlainName(runId) else {
            throw BenchmarkError(problem: "run_id '\(runId)' is not a plain name",
                                 fix: "use letters, digits, '.', '_' and '-' only")
        }
        return BenchmarkSpec(
            model: model,
            runId: runId,
            prompts: try prompts(extras, readFile),
            warmup: try int(extras, "warmup", 1, min: 0),
            runs: try int(extras, "runs", 5, min: 1),
            maxNewTokens: try int(extras, "max_new_tokens", 64, min: 2),
            chatTemplate: try bool(extras, "chat_template"),
            cooldownMs: try int(extras, "cooldown_ms", 0, min: 0),
            engine: try engine(extras),
            computeUnits: try computeUnits(extras)
        )
    }

    /// 1 to 80 letters, digits, '.', '_' or '-' (a result file name that cannot escape).
    public static func isPlainName(_ s: String) -> Bool {
        (1...80).contains(s.count) && s.unicodeScalars.allSatisfy {
            ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || "._-".unicodeScalars.contains($0)
        }
    }

    private static func prompts(_ extras: [String: String], _ readFile: (String) throws -> String) throws -> [String] {
        if let path = extras["prompts_file"] {
            let text: String
            do {
                text = try readFile(path)
            } catch {
                throw BenchmarkError(problem: "cannot read prompts_file \(path) (\(describe(error)))",
                                     fix: "copy the file into the app's Documents (xcrun devicectl device copy to)")
            }
            let root: JSONValue
            do {
                root = try Json.parse(text)
            } catch {
                throw BenchmarkError(problem: "prompts_file \(path) is not JSON (\(error))",
                                     fix: "write {\"prompts\": [\"...\"]}")
            }
            let list = root.objectValue?.list("prompts") ?? root.arrayValue ?? []
            let prompts = list.compactMap(\.stringValue).filter { !$0.isEmpty }
            if prompts.isEmpty {
                throw BenchmarkError(problem: "prompts_file \(path) holds no prompts",
                                     fix: "write {\"prompts\": [\"...\"]} with at least one string")
            }
            return prompts
        }
        if let p = extras["prompt"], !p.isEmpty { return [p] }
        return fixedPrompts
    }

    private static func int(_ extras: [String: String], _ key: String, _ def: Int, min: Int) throws -> Int {
        guard let raw = extras[key] else { return def }
        guard let v = Int(raw), v >= min else {
            throw BenchmarkError(problem: "argument '\(key)' is \(raw)", fix: "pass --\(key) N with N >= \(min)")
        }
        return v
    }

    private static func bool(_ extras: [String: String], _ key: String) throws -> Bool {
        guard let raw = extras[key] else { return false }
        switch raw.lowercased() {
        case "true", "1", "yes": return true
        case "false", "0", "no": return false
        default: throw BenchmarkError(problem: "argument '\(key)' is \(raw)", fix: "pass --\(key) true or false")
        }
    }

    private static func engine(_ extras: [String: String]) throws -> EngineKind? {
        guard let raw = extras["engine"] else { return nil }
        guard let e = EngineKind(rawValue: raw) else {
            throw BenchmarkError(problem: "argument 'engine' is \(raw)", fix: "pass --engine coreml or --engine executorch")
        }
        return e
    }

    private static func computeUnits(_ extras: [String: String]) throws -> String {
        let raw = extras["compute_units"] ?? "all"
        guard computeUnitChoices.contains(raw) else {
            throw BenchmarkError(problem: "argument 'compute_units' is \(raw)",
                                 fix: "pass --compute_units \(computeUnitChoices.joined(separator: "|"))")
        }
        return raw
    }
}

public struct BenchmarkError: ProblemError, Equatable {
    public let problem: String
    public let fix: String

    public init(problem: String, fix: String) {
        self.problem = problem
        self.fix = fix
    }
}
