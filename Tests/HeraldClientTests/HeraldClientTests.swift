import HeraldClient
import HeraldCore
import HeraldServer
import Logging
import ServiceLifecycle
import Testing

/// HeraldClient against a real server on an ephemeral port: publishing in two formats,
/// refusals with the problem detail, and a subscription that keeps going across a
/// server-side DELETE and across a server restart, resuming with the last id it received.
@Suite("HeraldClient against a real server", .timeLimit(.minutes(2)))
struct HeraldClientTests {
    /// A server with the given configuration; `stop()` shuts it down.
    final class Running: @unchecked Sendable {
        let port: Int
        private let group: ServiceGroup
        private let task: Task<Void, any Error>

        init(_ configure: (inout HeraldConfiguration) -> Void) async throws {
            var configuration = HeraldConfiguration()
            configuration.host = "127.0.0.1"
            configuration.port = 0
            configuration.eventLoopThreads = 1
            configuration.shutdownGrace = .milliseconds(50)
            configuration.retryMilliseconds = 100
            configuration.logger = Logger(label: "client-test", factory: { _ in SwiftLogNoOpLogHandler() })
            configure(&configuration)
            let server = HeraldServer(configuration: configuration)
            let group = ServiceGroup(configuration: .init(services: [.init(service: server)], logger: configuration.logger))
            self.group = group
            task = Task { try await group.run() }
            port = try await server.listeningAddress().port!
        }

        func stop() async {
            await group.triggerGracefulShutdown()
            _ = try? await task.value
        }
    }

    /// Collects messages from a subscription in the background.
    final class Collector: @unchecked Sendable {
        private let lock = NSLockish()
        private var messages: [HeraldClient.Message] = []
        private var failure: (any Error)?
        private var task: Task<Void, Never>?

        init(_ stream: AsyncThrowingStream<HeraldClient.Message, any Error>) {
            task = Task {
                do {
                    for try await message in stream { self.lock.run { self.messages.append(message) } }
                } catch {
                    self.lock.run { self.failure = error }
                }
            }
        }

        var events: [HeraldClient.Event] {
            lock.run { messages.compactMap { if case .event(let event) = $0 { event } else { nil } } }
        }
        var all: [HeraldClient.Message] { lock.run { messages } }
        var error: (any Error)? { lock.run { failure } }

        func waitUntil(_ what: String, timeout: Double = 10, _ condition: () -> Bool) async throws {
            let deadline = ContinuousClock.now + .seconds(timeout)
            while !condition() {
                guard ContinuousClock.now < deadline else { throw TimedOut(what: what) }
                try await Task.sleep(for: .milliseconds(20))
            }
        }

        func cancel() { task?.cancel() }
    }

    struct TimedOut: Error, CustomStringConvertible {
        var what: String
        var description: String { "timed out waiting for \(what)" }
    }

    @Test("Publishes raw text and NDJSON batches; a refusal carries the problem detail")
    func publishing() async throws {
        let server = try await Running { $0.publishKeys = ["secret-key"] }
        defer { Task { await server.stop() } }
        var client = try HeraldClient(url: "http://127.0.0.1:\(server.port)", publishKey: "secret-key")
        let one = try await client.publish("line one\nline two", to: ["a", "b"], type: "note")
        #expect(one.count == 1)
        let batch = try await client.publishNDJSON([#"{"data":"x"}"#, #"{"data":"y","topic":"c"}"#], topics: ["a"])
        #expect(batch.count == 2 && batch[0] > one[0] && batch[1] == batch[0] + 1)
        let again = try await client.publish("ignored", to: ["a"], idempotencyKey: "k-1")
        #expect(try await client.publish("other body", to: ["a"], idempotencyKey: "k-1") == again)
        client.publishKey = "wrong"
        await #expect(throws: HeraldClientError.refused(status: 401, detail: "the bearer key is not valid")) {
            try await client.publish("x", to: ["a"])
        }
        client.publishKey = "secret-key"
        do {
            _ = try await client.publish("x", to: ["bad*"])
            Issue.record("a topic ending in * was accepted for publishing")
        } catch HeraldClientError.refused(let status, let detail) {
            #expect(status == 400 && detail.contains("bad*"))
        }
        await #expect(throws: HeraldClientError.self) {
            _ = try await HeraldClient(url: "http://127.0.0.1:1").publish("x", to: ["a"])
        }
        #expect(throws: HeraldClientError.self) { _ = try HeraldClient(url: "ftp://x") }
    }

    @Test("A subscription resumes after a server-side DELETE with exactly the missed events")
    func resumesAfterDelete() async throws {
        let server = try await Running { _ in }
        defer { Task { await server.stop() } }
        let client = try HeraldClient(url: "http://127.0.0.1:\(server.port)")
        let collector = Collector(client.subscribe(topics: ["t"], client: "resume_client_1"))
        try await collector.waitUntil("the stream to open") { collector.all.contains { if case .opened = $0 { true } else { false } } }
        var ids = [try await client.publish("one", to: ["t"])[0]]
        try await collector.waitUntil("the first event") { collector.events.count == 1 }
        let deleted = try await HTTPProbe.delete(port: server.port, path: "/clients/resume_client_1")
        #expect(deleted == 204)
        for data in ["two", "three", "four"] { ids.append(try await client.publish(data, to: ["t"])[0]) }
        try await collector.waitUntil("the missed events") { collector.events.count == 4 }
        #expect(collector.events.map(\.data) == ["one", "two", "three", "four"])
        #expect(collector.events.map(\.id) == ids.map(String.init))
        #expect(collector.all.contains { if case .reconnecting = $0 { true } else { false } })
        #expect(collector.all.contains { if case .opened(_, true) = $0 { true } else { false } }, "the second stream resumed")
        collector.cancel()
    }

    @Test("A subscription survives a server restart on the same port and file (sqlite)")
    func resumesAcrossRestart() async throws {
        let path = "/tmp/herald-client-test-\(UInt32.random(in: 0...UInt32.max)).db"
        defer { for suffix in ["", "-wal", "-shm", ".lock"] { unlink(path + suffix) } }
        let first = try await Running { $0.store = .sqlite(path: path) }
        let port = first.port
        let client = try HeraldClient(url: "http://127.0.0.1:\(port)")
        let collector = Collector(client.subscribe(topics: ["r"]))
        try await collector.waitUntil("the stream to open") { collector.all.contains { if case .opened = $0 { true } else { false } } }
        _ = try await client.publish("before", to: ["r"])
        try await collector.waitUntil("the first event") { collector.events.count == 1 }
        await first.stop()
        let second = try await Running {
            $0.store = .sqlite(path: path)
            $0.port = port
        }
        defer { Task { await second.stop() } }
        try await collector.waitUntil("the stream to reopen", timeout: 20) {
            collector.all.filter { if case .opened = $0 { true } else { false } }.count >= 2
        }
        _ = try await client.publish("after", to: ["r"])
        try await collector.waitUntil("the event after the restart") { collector.events.count == 2 }
        #expect(collector.events.map(\.data) == ["before", "after"])
        #expect(!collector.all.contains { if case .reset = $0 { true } else { false } })
        collector.cancel()
    }

    @Test("A refused subscription ends the sequence with the problem detail")
    func refusedSubscription() async throws {
        let server = try await Running { $0.subscriberKeys = ["client-test-subscriber-key-0123456789abcdef"] }
        defer { Task { await server.stop() } }
        let client = try HeraldClient(url: "http://127.0.0.1:\(server.port)")
        let collector = Collector(client.subscribe(topics: ["secret"]))
        try await collector.waitUntil("the refusal") { collector.error != nil }
        guard case .refused(let status, let detail)? = collector.error as? HeraldClientError else {
            Issue.record("not a refusal: \(String(describing: collector.error))")
            return
        }
        #expect(status == 401 && detail.contains("token"))
    }
}

/// A lock for the collector (Foundation-free).
final class NSLockish: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    init() { pthread_mutex_init(&mutex, nil) }
    deinit { pthread_mutex_destroy(&mutex) }
    func run<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return try body()
    }
}

/// One plain request, for what the client library does not do (DELETE /clients).
enum HTTPProbe {
    static func delete(port: Int, path: String) async throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { return 0 }
        let request = Array("DELETE \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)
        _ = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
        var buffer = [UInt8](repeating: 0, count: 512)
        let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard count > 12 else { return 0 }
        return Int(String(decoding: buffer[9..<12], as: UTF8.self)) ?? 0
    }
}

#if canImport(Glibc)
import Glibc
#endif
