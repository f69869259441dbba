import CoreML
import FloraChatCore
import Foundation

/// The Core ML engine: the stateful `model.mlpackage` of `flora-export --target ios`
/// (README "iOS / Core ML": inputs `inputIds` [1, S] int32 and `causalMask` [1, 1, S, T]
/// float16, states `keyCache`/`valueCache`, output `logits` [1, 1, vocab] float16) driven by
/// FloraChatCore's greedy loop, with the export's `tokenizer.json` through swift-transformers.
enum CoreMLEngine {
    static func make(manifest: ExportManifest, computeUnits: String) -> LlmEngine {
        StepModelEngine(
            loadModel: { try CoreMLStepModel(manifest: manifest, computeUnits: computeUnits) },
            loadTokenizer: { try HFTokenizer(url: manifest.tokenizer) },
            eosIds: manifest.eosIds,
            stop: manifest.chat.stop
        )
    }

    static func units(_ name: String) -> MLComputeUnits {
        switch name {
        case "cpu": return .cpuOnly
        case "gpu": return .cpuAndGPU
        case "ane": return .cpuAndNeuralEngine
        default: return .all
        }
    }
}

/// One `MLModel` and its `MLState` (the KV cache). `reset` makes a fresh state; `step`
/// is one prediction with the new ids and the causal mask.
final class CoreMLStepModel: StepModel {
    static let inputIds = "inputIds"
    static let causalMask = "causalMask"
    static let logits = "logits"

    let maxContext: Int
    private let model: MLModel
    private var state: MLState

    init(manifest: ExportManifest, computeUnits: String) throws {
        guard let package = manifest.mlpackage else {
            throw RunError("\(manifest.dir.lastPathComponent) has no Core ML package")
        }
        let config = MLModelConfiguration()
        config.computeUnits = CoreMLEngine.units(computeUnits)
        model = try MLModel(contentsOf: try CompiledModelCache.compiled(package, manifest: manifest), configuration: config)
        let meta = model.modelDescription.metadata[MLModelMetadataKey.creatorDefinedKey] as? [String: String]
        maxContext = meta?["flora.max_context"].flatMap { Int($0) } ?? manifest.maxSeqLen
        state = model.makeState()
    }

    func reset() throws {
        state = model.makeState()
    }

    func step(ids: [Int32], mask: CausalMask) throws -> [Float] {
        let s = ids.count
        let idArray = try MLMultiArray(shape: [1, NSNumber(value: s)], dataType: .int32)
        idArray.withUnsafeMutableBufferPointer(ofType: Int32.self) { ptr, strides in
            for (i, id) in ids.enumerated() { ptr[i * strides[1]] = id }
        }
        let maskArray = try MLMultiArray(shape: [1, 1, NSNumber(value: mask.rows), NSNumber(value: mask.cols)],
                                         dataType: .float16)
        maskArray.withUnsafeMutableBufferPointer(ofType: Float16.self) { ptr, strides in
            for i in 0..<mask.rows {
                for j in 0..<mask.cols {
                    ptr[i * strides[2] + j * strides[3]] = Float16(mask.value(row: i, col: j))
                }
            }
        }
        let input = try MLDictionaryFeatureProvider(dictionary: [
            Self.inputIds: MLFeatureValue(multiArray: idArray),
            Self.causalMask: MLFeatureValue(multiArray: maskArray),
        ])
        let output = try model.prediction(from: input, using: state)
        guard let logits = output.featureValue(for: Self.logits)?.multiArrayValue else {
            throw RunError("the Core ML package returned no '\(Self.logits)'")
        }
        return Self.floats(logits)
    }

    /// The last axis of a [1, 1, vocab] array as Float, whatever its strides and type.
    static func floats(_ a: MLMultiArray) -> [Float] {
        let n = a.shape.last?.intValue ?? 0
        let stride = a.strides.last?.intValue ?? 1
        switch a.dataType {
        case .float16:
            return a.withUnsafeBufferPointer(ofType: Float16.self) { p in (0..<n).map { Float(p[$0 * stride]) } }
        case .float32:
            return a.withUnsafeBufferPointer(ofType: Float.self) { p in (0..<n).map { p[$0 * stride] } }
        default:
            return (0..<n).map { a[[0, 0, NSNumber(value: $0)]].floatValue }
        }
    }
}

/// Core ML runs compiled models (`.mlmodelc`). The first load of an export compiles its
/// package once into Library/Caches/compiled/, keyed by the export folder, its creation
/// time and the package name; later loads reuse it.
enum CompiledModelCache {
    static func compiled(_ package: URL, manifest: ExportManifest) throws -> URL {
        let fm = FileManager.default
        let caches = try fm.url(for: .cachesDirectory, in: .userDomainMask, appropriateFor: nil, create: true)
            .appendingPathComponent("compiled", isDirectory: true)
        try fm.createDirectory(at: caches, withIntermediateDirectories: true)
        let parts = [manifest.dir.lastPathComponent, manifest.created ?? "undated",
                     package.deletingPathExtension().lastPathComponent]
        let raw = parts.joined(separator: "-")
        let key = String(raw.map { $0.isLetter || $0.isNumber || $0 == "-" ? $0 : "_" })
        let target = caches.appendingPathComponent("\(key).mlmodelc", isDirectory: true)
        if fm.fileExists(atPath: target.path) { return target }
        let fresh = try compile(package)
        try? fm.removeItem(at: target)
        try fm.moveItem(at: fresh, to: target)
        return target
    }

    /// `MLModel.compileModel(at:)` (async) from the engine's worker thread.
    private static func compile(_ package: URL) throws -> URL {
        let box = ResultBox()
        Task.detached {
            do {
                box.result = .success(try await MLModel.compileModel(at: package))
            } catch {
                box.result = .failure(error)
            }
            box.done.signal()
        }
        box.done.wait()
        return try box.result.get()
    }

    private final class ResultBox: @unchecked Sendable {
        let done = DispatchSemaphore(value: 0)
        var result: Result<URL, Error> = .failure(RunError("Core ML compilation did not finish"))
    }
}
