@testable import HeraldServer
import HeraldCore
import NIOCore
import Testing

@Suite("Fan-out under load, slow consumers, shutdown", .serialized, .timeLimit(.minutes(5)))
struct FanOutTests {
    @Test("200 concurrent subscribers each receive all 2000 events, in order, none missing or doubled")
    func twoHundredSubscribers() async throws {
        try await withServer({ $0.historyCapacity = 5000 }) { server in
            var clients: [SSEClient] = []
            for index in 0..<200 {
                let topic = index % 2 == 0 ? "load" : "lo*"
                clients.append(try await SSEClient.open(port: server.port, path: "/events?topic=\(topic)"))
            }
            for client in clients { _ = try await client.hello() }
            // Two publishers at once: single events and NDJSON batches.
            async let singles: [Int64] = {
                var ids: [Int64] = []
                for index in 0..<500 { ids += try await HTTPTestClient.publish(server.port, "/events?topic=load", body: "s\(index)") }
                return ids
            }()
            async let batches: [Int64] = {
                var ids: [Int64] = []
                for batch in 0..<30 {
                    let body = (0..<50).map { "{\"topic\":\"load\",\"data\":\"b\(batch)-\($0)\"}" }.joined(separator: "\n")
                    ids += try await HTTPTestClient.publish(server.port, "/events", body: body, contentType: "application/x-ndjson")
                }
                return ids
            }()
            let published = try await (singles + batches).sorted()
            #expect(published.count == 2000)
            for client in clients {
                let ids = try await Self.waitForIDs(client, count: 2000)
                #expect(ids == published)
            }
            for client in clients { await client.close() }
        }
    }

    /// Event ids on a stream, scanned without a full SSE decode (200 x 2000 events through a
    /// debug-built decoder would dominate the test's time).
    static func waitForIDs(_ client: SSEClient, count: Int) async throws -> [Int64] {
        let deadline = ContinuousClock.now + .seconds(60)
        while true {
            let body = client.body
            var ids: [Int64] = []
            var index = 0
            let marker = Array("\nid: ".utf8)
            while let found = HTTPResponseParser.find(marker, in: body, from: index) {
                var end = found + marker.count
                var value: Int64 = 0
                while end < body.count, body[end] >= 0x30, body[end] <= 0x39 {
                    value = value * 10 + Int64(body[end] - 0x30)
                    end += 1
                }
                ids.append(value)
                index = end
            }
            if ids.count >= count { return ids }
            if ContinuousClock.now >= deadline { throw TestTimeout(what: "\(count) ids (have \(ids.count))") }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    @Test("A subscriber that never reads is cut off at --max-queued-bytes while the others get everything")
    func slowConsumer() async throws {
        try await withServer({ $0.maxQueuedBytes = 64 * 1024; $0.historyCapacity = 10_000 }) { server in
            let stalled = try await SSEClient.open(
                port: server.port, path: "/events?topic=flood&client=stalled_client", reading: false, receiveBuffer: 4096)
            let readers = [
                try await SSEClient.open(port: server.port, path: "/events?topic=flood"),
                try await SSEClient.open(port: server.port, path: "/events?topic=flood"),
            ]
            for reader in readers { _ = try await reader.hello() }
            // The stalled client reads nothing, not even its hello: wait until the server lists it.
            try await eventually("the stalled stream to be registered") {
                try await HTTPTestClient.get(server.port, "/clients/stalled_client").status == 200
            }
            let payload = String(repeating: "z", count: 4000)
            var published: [Int64] = []
            for _ in 0..<40 {
                let body = (0..<50).map { _ in "{\"topic\":\"flood\",\"data\":\"\(payload)\"}" }.joined(separator: "\n")
                published += try await HTTPTestClient.publish(server.port, "/events", body: body, contentType: "application/x-ndjson")
            }
            for reader in readers {
                let ids = try await Self.waitForIDs(reader, count: published.count)
                #expect(ids == published)
            }
            // The server let go of the stalled stream (the client, not reading, cannot see it yet).
            #expect(try await HTTPTestClient.get(server.port, "/clients/stalled_client").status == 404)
            let metrics = try await HTTPTestClient.get(server.port, "/metrics").text
            #expect(metrics.contains("herald_slow_consumer_disconnects_total 1"))
            // Once it reads, it finds its stream closed after far fewer events than were sent.
            try await stalled.connection.startReading()
            try await stalled.connection.waitForClose(timeout: .seconds(20))
            let got = try await Self.waitForIDs(stalled, count: 0)
            #expect(got.count < published.count)
            #expect(got == Array(published.prefix(got.count)), "what it did get is a gap-free prefix")
            for reader in readers { await reader.close() }
        }
    }

    @Test("Graceful shutdown closes every stream and the server stops")
    func shutdown() async throws {
        var clients: [SSEClient] = []
        try await withServer({ $0.shutdownGrace = .milliseconds(300) }) { server in
            for _ in 0..<20 { clients.append(try await SSEClient.open(port: server.port, path: "/events?topic=a")) }
            for client in clients { _ = try await client.hello() }
        }
        for client in clients {
            let bytes = try await client.connection.waitForClose(timeout: .seconds(5))
            #expect(String(decoding: bytes, as: UTF8.self).contains("retry: "))
        }
    }

    @Test("Only the socket's loopback peer address counts for keyless publishing")
    func loopbackRule() throws {
        #expect(PeerAddress.isLoopback(try SocketAddress(ipAddress: "127.0.0.1", port: 1)))
        #expect(PeerAddress.isLoopback(try SocketAddress(ipAddress: "127.8.9.10", port: 1)))
        #expect(PeerAddress.isLoopback(try SocketAddress(ipAddress: "::1", port: 1)))
        #expect(PeerAddress.isLoopback(try SocketAddress(ipAddress: "::ffff:127.0.0.1", port: 1)))
        #expect(!PeerAddress.isLoopback(try SocketAddress(ipAddress: "10.0.0.1", port: 1)))
        #expect(!PeerAddress.isLoopback(try SocketAddress(ipAddress: "192.168.1.1", port: 1)))
        #expect(!PeerAddress.isLoopback(try SocketAddress(ipAddress: "::2", port: 1)))
        #expect(!PeerAddress.isLoopback(nil))
    }
}
