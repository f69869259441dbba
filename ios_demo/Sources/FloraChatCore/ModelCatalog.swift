import Foundation

/// A directory the picker offers: its manifest, or why it cannot be used.
public struct ModelEntry: Equatable, Sendable {
    public let dir: URL
    public let manifest: ExportManifest?
    public let problem: String?

    public var label: String { manifest?.label ?? "\(dir.lastPathComponent) (unusable: \(problem ?? "?"))" }
}

/// Finds exports copied to the phone: every directory directly under the roots (the app's
/// Documents folder, where Finder file sharing and `xcrun devicectl device copy to` put
/// them) that holds a `manifest.json`.
public enum ModelCatalog {
    public static func scan(_ roots: [URL]) -> [ModelEntry] {
        let fm = FileManager.default
        var dirs: [URL] = []
        for root in roots {
            guard let names = try? fm.contentsOfDirectory(atPath: root.path) else { continue }
            for name in names {
                let dir = root.appendingPathComponent(name)
                var isDir: ObjCBool = false
                guard fm.fileExists(atPath: dir.path, isDirectory: &isDir), isDir.boolValue,
                      fm.fileExists(atPath: dir.appendingPathComponent(ExportManifest.file).path) else { continue }
                dirs.append(dir)
            }
        }
        return dirs.sorted { $0.path < $1.path }.map(entry)
    }

    public static func entry(_ dir: URL) -> ModelEntry {
        do {
            return ModelEntry(dir: dir, manifest: try ExportManifest.load(dir), problem: nil)
        } catch let e as ManifestError {
            return ModelEntry(dir: dir, manifest: nil, problem: e.problem)
        } catch {
            return ModelEntry(dir: dir, manifest: nil, problem: "\(error)")
        }
    }

    /// A launch argument's model: an absolute path as is, else a directory under `root`.
    public static func resolve(_ name: String, under root: URL) -> URL {
        name.hasPrefix("/") ? URL(fileURLWithPath: name, isDirectory: true)
            : root.appendingPathComponent(name, isDirectory: true)
    }
}
