import FloraChatCore
import SwiftUI

/// The chat screen: a picker over the exports in Documents and their engines, the
/// conversation with each reply's TTFT / TPOT / tokens per second, and a Send button that
/// turns into Stop while a reply streams.
struct ChatView: View {
    @StateObject private var model = ChatModel()
    @State private var input = ""

    var body: some View {
        NavigationStack {
            VStack(spacing: 8) {
                pickers
                Text(model.status)
                    .font(.footnote)
                    .foregroundStyle(.secondary)
                    .frame(maxWidth: .infinity, alignment: .leading)
                conversation
                inputBar
            }
            .padding(.horizontal)
            .navigationTitle("flora chat")
            .navigationBarTitleDisplayMode(.inline)
            .toolbar {
                ToolbarItemGroup(placement: .topBarTrailing) {
                    Button("Rescan") { model.refresh() }
                    Button("New chat") { model.newChat() }
                        .disabled(model.generating)
                }
            }
        }
        .onAppear { model.refresh() }
    }

    private var pickers: some View {
        VStack(alignment: .leading, spacing: 6) {
            Picker("Model", selection: $model.selectedPath) {
                ForEach(model.entries, id: \.dir.path) { entry in
                    Text(entry.label).tag(Optional(entry.dir.path))
                }
            }
            .pickerStyle(.menu)
            if model.engines.count > 1 {
                Picker("Engine", selection: $model.engineKind) {
                    ForEach(model.engines, id: \.self) { kind in
                        Text(kind.title).tag(kind)
                    }
                }
                .pickerStyle(.segmented)
            }
        }
        .disabled(model.loading || model.generating)
    }

    private var conversation: some View {
        ScrollViewReader { proxy in
            ScrollView {
                LazyVStack(alignment: .leading, spacing: 10) {
                    ForEach(model.messages) { message in
                        Bubble(message: message, details: model.details[message.id] ?? [])
                            .id(message.id)
                    }
                }
                .padding(.vertical, 4)
            }
            .onChange(of: model.messages) {
                if let last = model.messages.last { proxy.scrollTo(last.id, anchor: .bottom) }
            }
        }
    }

    private var inputBar: some View {
        HStack {
            TextField("Message", text: $input, axis: .vertical)
                .textFieldStyle(.roundedBorder)
                .lineLimit(1...4)
                .disabled(model.generating)
            Button(model.generating ? "Stop" : "Send") {
                if model.sendOrStop(input) { input = "" }
            }
            .buttonStyle(.borderedProminent)
            .disabled(model.loading || (!model.generating && input.trimmingCharacters(in: .whitespaces).isEmpty))
        }
        .padding(.bottom, 8)
    }
}

/// One message: the user's on the right, the model's on the left with its figures below.
struct Bubble: View {
    let message: Message
    let details: [String]

    var body: some View {
        VStack(alignment: message.fromUser ? .trailing : .leading, spacing: 4) {
            Text(message.text.isEmpty && !message.fromUser ? "…" : message.text)
                .padding(10)
                .background(message.fromUser ? Color.accentColor.opacity(0.2) : Color.secondary.opacity(0.15))
                .clipShape(RoundedRectangle(cornerRadius: 12))
                .textSelection(.enabled)
            ForEach(details, id: \.self) { line in
                Text(line)
                    .font(.caption.monospacedDigit())
                    .foregroundStyle(.secondary)
            }
        }
        .frame(maxWidth: .infinity, alignment: message.fromUser ? .trailing : .leading)
    }
}
