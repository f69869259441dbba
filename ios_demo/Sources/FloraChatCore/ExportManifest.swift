import Foundation

/// The two ways the app runs an export.
public enum EngineKind: String, CaseIterable, Sendable {
    /// The stateful `.mlpackage` (`--target ios` / `coreml`), driven by this app's decode loop.
    case coreML = "coreml"
    /// The `.pte` on XNNPACK through ExecuTorch's LLM runner (`--target ios` / `android`).
    case executorch = "executorch"

    /// The manifest backend (`backends`) that provides this engine's program.
    public var backend: String { self == .coreML ? "coreml" : "executorch-xnnpack" }

    public var title: String { self == .coreML ? "Core ML" : "ExecuTorch" }
}

/// What the app needs from a flora-export output directory: the programs and tokenizer,
/// the context length, the special token ids and the chat format (template + stop strings)
/// recorded by the exporter in `manifest.json`.
public struct ExportManifest: Equatable, Sendable {
    public static let file = "manifest.json"
    static let defaultMaxSeq = 128

    public let dir: URL
    /// The ExecuTorch program, when the export has one (`executorch-xnnpack` backend).
    public let pte: URL?
    /// The Core ML package, when the export has one (`coreml` backend).
    public let mlpackage: URL?
    public let tokenizer: URL
    public let target: String
    public let modelName: String
    public let adapter: String?
    public let quant: String?
    public let maxSeqLen: Int
    public let bosId: Int?
    public let eosIds: [Int]
    public let chat: ChatFormat
    /// When the export was made (`created_utc`); part of the compiled Core ML cache key.
    public let created: String?

    /// The engines this export can run on, Core ML first.
    public var engines: [EngineKind] {
        EngineKind.allCases.filter { $0 == .coreML ? mlpackage != nil : pte != nil }
    }

    /// One line for the model picker, e.g. "ios · base + ffba (fused) · 8da4w".
    public var label: String {
        [dir.lastPathComponent, modelName + (adapter.map { " + \($0)" } ?? ""), quant]
            .compactMap { $0 }.joined(separator: " · ")
    }

    /// Read `dir/manifest.json`; fails with a message that names the problem and the fix.
    public static func load(_ dir: URL) throws -> ExportManifest {
        let url = dir.appendingPathComponent(file)
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDir), !isDir.boolValue else {
            throw ManifestError(problem: "\(dir.lastPathComponent) has no \(file)",
                                fix: "copy a whole flora-export --target ios output directory into the app's Documents")
        }
        let text: String
        do {
            text = try String(contentsOf: url, encoding: .utf8)
        } catch {
            throw ManifestError(problem: "cannot read \(dir.lastPathComponent)/\(file) (\(error.localizedDescription))",
                                fix: "copy the export again")
        }
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []
        return try parse(dir: dir, text: text, fileNames: names)
    }

    public static func parse(dir: URL, text: String, fileNames: [String]) throws -> ExportManifest {
        let root: JSONObject
        do {
            root = try Json.parseObject(text)
        } catch {
            throw ManifestError(problem: "\(dir.lastPathComponent)/\(file) is not valid JSON (\(error))",
                                fix: "re-export the model")
        }
        let name = dir.lastPathComponent
        let backends = root.list("backends")?.compactMap(\.stringValue) ?? []
        let runnable = EngineKind.allCases.filter { backends.contains($0.backend) }
        if runnable.isEmpty {
            let what = backends.isEmpty ? "non-ExecuTorch, non-Core ML" : backends.joined(separator: ", ")
            throw ManifestError(problem: "\(name) is a \(what) export",
                                fix: "export with flora-export --target ios (or --target coreml / android)")
        }
        let runtime = root.obj("runtime") ?? JSONObject()
        let sorted = fileNames.sorted()
        let pteName = backends.contains("executorch-xnnpack") ? sorted.first { $0.hasSuffix(".pte") } : nil
        let packageName = backends.contains("coreml") ? coreMLPackage(runtime, sorted) : nil
        // The file the exporter's tokenizer gate checked for ExecuTorch (a rewrite or a
        // SentencePiece tokenizer.model) when ExecuTorch is the only engine; tokenizer.json
        // otherwise (what swift-transformers reads for Core ML).
        let checked = backends == ["executorch-xnnpack"]
            ? root.obj("tokenizers")?.obj("executorch-xnnpack")?.string("file") : nil
        if let checked, !fileNames.contains(checked) {
            throw ManifestError(problem: "\(name) lacks \(checked), the tokenizer file its manifest names",
                                fix: "copy the whole export directory again")
        }
        let tokenizerName = checked ?? (fileNames.contains("tokenizer.json") ? "tokenizer.json" : nil)
        if pteName == nil && packageName == nil {
            let missing = runnable.contains(.coreML) ? "a Core ML package (.mlpackage)" : "a .pte program"
            throw ManifestError(problem: "\(name) lacks \(missing)", fix: "copy the whole export directory again")
        }
        guard let tokenizerName else {
            throw ManifestError(problem: "\(name) lacks a tokenizer file", fix: "copy the whole export directory again")
        }
        let model = root.obj("model") ?? JSONObject()
        let adapter = root.obj("adapter").flatMap { a in a.string("adapter_type").map { "\($0) (\(a.string("state") ?? "?"))" } }
        return ExportManifest(
            dir: dir,
            pte: pteName.map { dir.appendingPathComponent($0) },
            mlpackage: packageName.map { dir.appendingPathComponent($0) },
            tokenizer: dir.appendingPathComponent(tokenizerName),
            target: root.string("target") ?? "?",
            modelName: model.string("name") ?? "model",
            adapter: adapter,
            quant: root.obj("quantization")?.string("name"),
            maxSeqLen: runtime.int("max_seq_len") ?? defaultMaxSeq,
            bosId: runtime.int("bos_id"),
            eosIds: runtime.list("eos_ids")?.compactMap { $0.numberValue.map { Int($0) } } ?? [],
            chat: ChatFormat.fromManifest(runtime.obj("chat"), normalization: runtime.string("input_normalization")),
            created: root.string("created_utc")
        )
    }

    /// `runtime.coreml.package` when the directory has it, else the first `.mlpackage`.
    private static func coreMLPackage(_ runtime: JSONObject, _ names: [String]) -> String? {
        if let named = runtime.obj("coreml")?.string("package"), names.contains(named) { return named }
        return names.first { $0.hasSuffix(".mlpackage") }
    }
}

/// An error that names the problem and its fix; printed as "problem: fix".
public protocol ProblemError: Error, CustomStringConvertible, LocalizedError {
    var problem: String { get }
    var fix: String { get }
}

extension ProblemError {
    public var description: String { "\(problem): \(fix)" }
    public var errorDescription: String? { description }
}

/// Why an export cannot be used, and what to do about it.
public struct ManifestError: ProblemError, Equatable {
    public let problem: String
    public let fix: String

    public init(problem: String, fix: String) {
        self.problem = problem
        self.fix = fix
    }
}
