import FloraChatCore
import Foundation
import UIKit

/// Where the app keeps things, and what it reports about itself and the phone.
enum AppEnvironment {
    /// The app's Documents folder: exports are copied here (Finder file sharing, the Files
    /// app, `xcrun devicectl device copy to --domain-type appDataContainer ... Documents/`).
    static var documents: URL {
        FileManager.default.urls(for: .documentDirectory, in: .userDomainMask)[0]
    }

    /// Benchmark reports: Documents/bench/<run_id>.json.
    static var benchDirectory: URL { documents.appendingPathComponent("bench", isDirectory: true) }

    static func nowMs() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }

    /// The report's `app` object.
    static func app() -> JSONObject {
        let info = Bundle.main.infoDictionary ?? [:]
        return [
            "package": JSONValue(Bundle.main.bundleIdentifier ?? "dev.flora.chat"),
            "version": JSONValue(info["CFBundleShortVersionString"] as? String),
        ]
    }

    /// The report's `device` object, with the Android keys: `model` is the hardware
    /// identifier from uname (e.g. "iPhone16,1"), `sdk` the iOS version, `soc` unknown
    /// (iOS has no API that names the chip).
    static func device() -> JSONObject {
        var sys = utsname()
        uname(&sys)
        let machine = withUnsafeBytes(of: &sys.machine) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        #if arch(arm64)
        let abi = "arm64"
        #else
        let abi = "x86_64"
        #endif
        return [
            "manufacturer": "Apple",
            "model": JSONValue(machine),
            "soc": nil,
            "abi": JSONValue(abi),
            "sdk": JSONValue("\(UIDevice.current.systemName) \(UIDevice.current.systemVersion)"),
        ]
    }

    /// The engine for `kind` on `manifest` (not loaded yet).
    static func makeEngine(_ kind: EngineKind, manifest: ExportManifest, computeUnits: String = "all") -> LlmEngine {
        switch kind {
        case .coreML: return CoreMLEngine.make(manifest: manifest, computeUnits: computeUnits)
        case .executorch: return ExecuTorchEngine(manifest: manifest)
        }
    }
}
