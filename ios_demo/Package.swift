// swift-tools-version:5.9
// The platform-neutral core of the flora chat iOS app (Foundation only): JSON, export
// manifests, chat format and stop strings, chat state, latency figures, benchmark mode and
// its report, tokenizer glue and the Core ML decode loop. It builds and tests on macOS
// and on Linux (Swift 6.0.3), so `swift test` checks it without a Mac. The app itself
// (SwiftUI, Core ML, ExecuTorch) is in App/ and builds with Xcode: see README.md.
import PackageDescription

let package = Package(
    name: "FloraChatCore",
    platforms: [.iOS(.v17), .macOS(.v14)],
    products: [
        .library(name: "FloraChatCore", targets: ["FloraChatCore"]),
        .executable(name: "flora-chat-inspect", targets: ["FloraChatInspect"]),
    ],
    targets: [
        .target(name: "FloraChatCore", path: "Sources/FloraChatCore"),
        .executableTarget(name: "FloraChatInspect", dependencies: ["FloraChatCore"], path: "Sources/FloraChatInspect"),
        .testTarget(name: "FloraChatCoreTests", dependencies: ["FloraChatCore"], path: "Tests/FloraChatCoreTests"),
    ]
)
