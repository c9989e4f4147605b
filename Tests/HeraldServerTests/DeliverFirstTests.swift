import Foundation
@testable import HeraldServer
import HeraldCore
import NIOCore
import Testing

/// A publish read by the fast path is delivered to its loop's few subscribers before the
/// publisher's answer is written (`Shard.deliverNowIfSmall`); a larger fan-out on that loop
/// stays queued, its pulled events kept for the queued run. Either way every stream gets
/// every event once, in id order, whatever mix of small and large topics, single and
/// pipelined publishes, and polls arrives.
@Suite("Delivering before the answer: small fan-outs at once, large ones queued, nothing lost or doubled", .timeLimit(.minutes(2)))
struct DeliverFirstTests {
    /// One loop, so every stream shares the publisher's loop and both paths are taken.
    static func oneLoop(_ configuration: inout HeraldConfiguration) {
        configuration.eventLoopThreads = 1
    }

    @Test("Small and large topics, single and pipelined publishes: every stream gets each of its events once, in order",
          arguments: [true, false])
    func mixedFanOut(fastPath: Bool) async throws {
        try await withServer({ Self.oneLoop(&$0); $0.publishFastPath = fastPath }) { server in
            let large = PublishFastPath.deliverFirstLimit + 4
            var small: [SSEClient] = []
            var wide: [SSEClient] = []
            for _ in 0..<2 { small.append(try await SSEClient.open(port: server.port, path: "/events?topic=small")) }
            for _ in 0..<large { wide.append(try await SSEClient.open(port: server.port, path: "/events?topic=wide")) }
            for client in small + wide { _ = try await client.hello() }

            // Alternating single publishes, then a pipelined burst mixing both topics.
            var expected: [String: [Int64]] = ["small": [], "wide": []]
            for index in 0..<10 {
                let topic = index % 3 == 0 ? "wide" : "small"
                expected[topic]! += try await HTTPTestClient.publish(server.port, "/events?topic=\(topic)", body: "\(topic)-\(index)")
            }
            let connection = try await RawConnection.connect(port: server.port)
            var burst = ""
            let burstTopics = (0..<8).map { $0 % 2 == 0 ? "small" : "wide" }
            for (index, topic) in burstTopics.enumerated() {
                let body = "\(topic)-b\(index)"
                burst += "POST /events?topic=\(topic) HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
            }
            try await connection.send(burst)
            let answers = try await connection.waitUntil("8 answers") { bytes, _ in
                String(decoding: bytes, as: UTF8.self).components(separatedBy: "HTTP/1.1 200 OK").count == 9
            }
            let ids = String(decoding: answers, as: UTF8.self).components(separatedBy: "\"ids\":[\"").dropFirst().map {
                Int64($0.prefix { $0 != "\"" })!
            }
            #expect(ids.count == 8)
            for (topic, id) in zip(burstTopics, ids) { expected[topic]!.append(id) }
            await connection.close()

            for (client, topic) in small.map({ ($0, "small") }) + wide.map({ ($0, "wide") }) {
                let events = try await client.waitForDataEvents(expected[topic]!.count)
                #expect(events.map(\.lastEventID) == expected[topic]!.map(String.init), "\(topic)")
                // Nothing more arrives (no event delivered twice).
                try await Task.sleep(for: .milliseconds(100))
                #expect(client.dataEvents.count == expected[topic]!.count, "\(topic)")
                await client.close()
            }
        }
    }

    @Test("A waiting long poll on the publisher's loop is answered, and the streams beside it still get their events")
    func pollBeside() async throws {
        try await withServer(Self.oneLoop) { server in
            let stream = try await SSEClient.open(port: server.port, path: "/events?topic=p")
            _ = try await stream.hello()
            async let polled = HTTPTestClient.get(server.port, "/poll?topic=p&timeout=5")
            try await Task.sleep(for: .milliseconds(300))
            let ids = try await HTTPTestClient.publish(server.port, "/events?topic=p", body: "one")
            let poll = try await polled
            #expect(poll.status == 200)
            #expect(poll.text.contains("\"one\""), "\(poll.text)")
            let events = try await stream.waitForDataEvents(1)
            #expect(events.map(\.lastEventID) == ids.map(String.init))
            await stream.close()
        }
    }
}
