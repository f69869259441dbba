import FloraChatCore
import SwiftUI

/// The flora chat app: the chat screen, or benchmark mode when launched with `--bench`.
@main
struct FloraChatApp: App {
    private let arguments = ProcessInfo.processInfo.arguments

    var body: some Scene {
        WindowGroup {
            if BenchmarkSpec.isBenchmarkLaunch(arguments) {
                BenchmarkView(mode: BenchmarkMode(arguments: arguments))
            } else {
                ChatView()
            }
        }
    }
}

/// What benchmark mode shows while it runs (the report goes to Documents/bench/).
struct BenchmarkView: View {
    @StateObject var mode: BenchmarkMode

    init(mode: BenchmarkMode) {
        _mode = StateObject(wrappedValue: mode)
    }

    var body: some View {
        VStack(alignment: .leading, spacing: 6) {
            Text("flora benchmark").font(.headline)
            Text("Results go to Documents/bench/").font(.footnote).foregroundStyle(.secondary)
            ForEach(Array(mode.lines.enumerated()), id: \.offset) { _, line in
                Text(line).font(.caption.monospaced())
            }
            Spacer()
        }
        .padding()
        .frame(maxWidth: .infinity, alignment: .leading)
        .onAppear { mode.start() }
    }
}
