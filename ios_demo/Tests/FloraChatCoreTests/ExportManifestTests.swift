@testable import FloraChatCore
import XCTest

final class ExportManifestTests: XCTestCase {
    static let manifest = """
        {"format_version": 1, "target": "android", "backends": ["executorch-xnnpack"],
         "model": {"name": "base"}, "adapter": {"adapter_type": "ffba", "state": "fused"},
         "quantization": {"name": "8da4w"},
         "runtime": {"max_seq_len": 512, "bos_id": 896, "eos_ids": [897, 905],
           "chat": {"template": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\\n\\n{prompt}<|eot_id|>\
        <|start_header_id|>assistant<|end_header_id|>\\n\\n",
                    "stop": ["<|eot_id|>", "<|end_of_text|>"]}}}
        """
    static let iosManifest = manifest
        .replacingOccurrences(of: #""target": "android""#, with: #""target": "ios""#)
        .replacingOccurrences(of: #"["executorch-xnnpack"]"#, with: #"["coreml", "executorch-xnnpack"]"#)
        .replacingOccurrences(of: #""max_seq_len": 512,"#,
                              with: #""max_seq_len": 512, "coreml": {"package": "model.mlpackage", "max_context": 512},"#)

    func testReadsWhatTheAppNeeds() throws {
        let m = try ExportManifest.parse(dir: URL(fileURLWithPath: "/d/android"), text: Self.manifest,
                                         fileNames: ["manifest.json", "model.pte", "tokenizer.json"])
        XCTAssertEqual(m.pte?.lastPathComponent, "model.pte")
        XCTAssertEqual(m.tokenizer.lastPathComponent, "tokenizer.json")
        XCTAssertEqual(m.maxSeqLen, 512)
        XCTAssertEqual(m.chat.stop, ["<|eot_id|>", "<|end_of_text|>"])
        XCTAssertEqual(m.chat.bos, "<|begin_of_text|>")
        XCTAssertEqual(m.label, "android · base + ffba (fused) · 8da4w")
        XCTAssertEqual(m.engines, [.executorch])
        XCTAssertEqual(m.bosId, 896)
        XCTAssertEqual(m.eosIds, [897, 905])
        XCTAssertNil(m.mlpackage)
    }

    func testAnIosExportOffersBothEnginesCoreMlFirst() throws {
        let names = ["coreml_reference.safetensors", "manifest.json", "model.mlpackage", "model.pte", "tokenizer.json"]
        let m = try ExportManifest.parse(dir: URL(fileURLWithPath: "/d/ios"), text: Self.iosManifest, fileNames: names)
        XCTAssertEqual(m.engines, [.coreML, .executorch])
        XCTAssertEqual(m.mlpackage?.lastPathComponent, "model.mlpackage")
        XCTAssertEqual(m.label, "ios · base + ffba (fused) · 8da4w")
        let coreOnly = try ExportManifest.parse(dir: URL(fileURLWithPath: "/d/ios"), text: Self.iosManifest,
                                                fileNames: ["manifest.json", "model.mlpackage", "tokenizer.json"])
        XCTAssertEqual(coreOnly.engines, [.coreML])
    }

    func testLoadsTheTokenizerFileTheExporterChecked() throws {
        let names = ["manifest.json", "model.pte", "tokenizer.executorch.json", "tokenizer.json", "tokenizer.model"]
        let record = #"{"tokenizers": {"executorch-xnnpack": {"file": "tokenizer.model"}}, "format_version""#
        let sp = Self.manifest.replacingOccurrences(of: #"{"format_version""#, with: record)
        let dir = URL(fileURLWithPath: "/d/a")
        XCTAssertEqual(try ExportManifest.parse(dir: dir, text: sp, fileNames: names).tokenizer.lastPathComponent,
                       "tokenizer.model")
        XCTAssertEqual(try ExportManifest.parse(dir: dir, text: Self.manifest, fileNames: names).tokenizer.lastPathComponent,
                       "tokenizer.json")
        XCTAssertThrowsError(try ExportManifest.parse(dir: dir, text: sp, fileNames: ["model.pte", "tokenizer.json"])) {
            XCTAssertEqual(($0 as? ManifestError)?.problem, "a lacks tokenizer.model, the tokenizer file its manifest names")
        }
    }

    func testRefusesExportsTheAppCannotRun() {
        let onnx = Self.manifest.replacingOccurrences(of: "executorch-xnnpack", with: "onnx")
        XCTAssertThrowsError(try ExportManifest.parse(dir: URL(fileURLWithPath: "/d/x"), text: onnx,
                                                      fileNames: ["model.pte", "tokenizer.json"])) { e in
            let err = e as? ManifestError
            XCTAssertEqual(err?.problem, "x is a onnx export")
            XCTAssertTrue(err?.fix.contains("--target ios") ?? false, "\(e)")
        }
        XCTAssertThrowsError(try ExportManifest.parse(dir: URL(fileURLWithPath: "/d/x"), text: Self.manifest,
                                                      fileNames: ["tokenizer.json"])) {
            XCTAssertEqual(($0 as? ManifestError)?.problem, "x lacks a .pte program")
        }
        XCTAssertThrowsError(try ExportManifest.parse(dir: URL(fileURLWithPath: "/d/x"), text: Self.iosManifest,
                                                      fileNames: ["tokenizer.json"])) {
            XCTAssertEqual(($0 as? ManifestError)?.problem, "x lacks a Core ML package (.mlpackage)")
        }
        XCTAssertThrowsError(try ExportManifest.parse(dir: URL(fileURLWithPath: "/d/x"), text: Self.manifest,
                                                      fileNames: ["model.pte"])) {
            XCTAssertEqual(($0 as? ManifestError)?.problem, "x lacks a tokenizer file")
        }
        XCTAssertThrowsError(try ExportManifest.parse(dir: URL(fileURLWithPath: "/d/x"), text: "{",
                                                      fileNames: ["model.pte", "tokenizer.json"])) {
            XCTAssertTrue(($0 as? ManifestError)?.problem.hasPrefix("x/manifest.json is not valid JSON") ?? false)
        }
    }

    func testCatalogListsCopiedExportsAndExplainsBrokenOnes() throws {
        let root = try temporaryDirectory().appendingPathComponent("Documents")
        let good = root.appendingPathComponent("good")
        let broken = root.appendingPathComponent("broken")
        for d in [good, broken, root.appendingPathComponent("unrelated")] {
            try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
        }
        try Self.manifest.write(to: good.appendingPathComponent("manifest.json"), atomically: true, encoding: .utf8)
        try "x".write(to: good.appendingPathComponent("model.pte"), atomically: true, encoding: .utf8)
        try "{}".write(to: good.appendingPathComponent("tokenizer.json"), atomically: true, encoding: .utf8)
        try Self.manifest.write(to: broken.appendingPathComponent("manifest.json"), atomically: true, encoding: .utf8)
        try "loose file".write(to: root.appendingPathComponent("notes.txt"), atomically: true, encoding: .utf8)
        let entries = ModelCatalog.scan([root, root.appendingPathComponent("missing")])
        XCTAssertEqual(entries.map(\.dir.lastPathComponent), ["broken", "good"])
        XCTAssertNil(entries[0].manifest)
        XCTAssertTrue(entries[0].label.contains("lacks a .pte"), entries[0].label)
        XCTAssertEqual(entries[1].manifest?.maxSeqLen, 512)
        XCTAssertEqual(ModelCatalog.entry(root.appendingPathComponent("unrelated")).problem, "unrelated has no manifest.json")
        XCTAssertEqual(ModelCatalog.resolve("good", under: root).path, good.path)
        XCTAssertEqual(ModelCatalog.resolve("/abs/dir", under: root).path, "/abs/dir")
    }
}

/// A fresh directory under the system's temporary folder, removed after the test.
extension XCTestCase {
    func temporaryDirectory() throws -> URL {
        let dir = FileManager.default.temporaryDirectory
            .appendingPathComponent("flora-chat-tests-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        return dir
    }
}
