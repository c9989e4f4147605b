import Foundation
import HeraldCore

/// A fresh folder for a store file, removed afterwards.
func withStoreFolder<T: Sendable>(_ body: (String) async throws -> T) async throws -> T {
    let folder = FileManager.default.temporaryDirectory.appendingPathComponent("herald-store-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: folder) }
    return try await body(folder.appendingPathComponent("events.db").path)
}

/// Subscribes from `lastEventID` and returns the data events until one with `untilID`.
func replay(_ port: Int, _ query: String, from lastEventID: Int64, until untilID: Int64) async throws -> [ReceivedEvent] {
    let client = try await SSEClient.open(
        port: port, path: "/events?\(query)", headers: [("Accept", "text/event-stream"), ("Last-Event-ID", String(lastEventID))])
    defer { Task { await client.close() } }
    let messages = try await client.waitFor("replay through \(untilID)") { messages in
        SSEClient.dataEvents(in: messages).contains { $0.lastEventID == String(untilID) }
    }
    return SSEClient.dataEvents(in: messages)
}

/// The value of a metric line without labels.
func metricValue(_ port: Int, _ name: String) async throws -> Double? {
    let text = try await HTTPTestClient.get(port, "/metrics").text
    for line in text.split(separator: "\n") where line.hasPrefix(name + " ") {
        return Double(line.dropFirst(name.count + 1))
    }
    return nil
}

/// Polls `condition` every `interval` until it holds, or throws ``TestTimeout`` at the
/// deadline (the server prunes in the background, once a second; streams and polls are
/// registered on their event loops, not when the client's request has been sent).
func eventually(
    _ what: String, timeout: Duration = .seconds(15), interval: Duration = .milliseconds(100),
    _ condition: () async throws -> Bool
) async throws {
    let deadline = ContinuousClock.now + timeout
    while try await !condition() {
        if ContinuousClock.now >= deadline { throw TestTimeout(what: what) }
        try await Task.sleep(for: interval)
    }
}

/// Waits until the server counts exactly `count` open streams and waiting polls (the
/// `herald_streams_open` gauge, which `--max-connections` is checked against).
func waitForOpenStreams(_ port: Int, _ count: Int, timeout: Duration = .seconds(15)) async throws {
    try await eventually("\(count) open streams and waiting polls", timeout: timeout, interval: .milliseconds(10)) {
        try await metricValue(port, "herald_streams_open") == Double(count)
    }
}
