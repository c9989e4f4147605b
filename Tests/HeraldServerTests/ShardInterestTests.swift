@testable import HeraldServer
import HeraldCore
import NIOCore
import Testing

/// A publish wakes only the loops whose streams or polls want one of its events (issue 15).
/// These tests are about what that must never cost: a loop that sleeps through publishes to
/// other topics still delivers everything it is subscribed to, is not taken for having fallen
/// behind the history when the ring evicts what it skipped, and a subscriber that arrives
/// while publishes flow misses nothing after its start. Two event loops, streams spread over
/// both (NIO hands accepted connections to the loops in turn).
@Suite("Shard interest: wake-ups only where wanted, nothing lost", .serialized, .timeLimit(.minutes(3)))
struct ShardInterestTests {
    @Test("Loops that sleep through 40 publishes to another topic (5 × the ring) still deliver, with no reset or close")
    func skippedLoopsStayLive() async throws {
        try await withServer({ $0.historyCapacity = 8 }) { server in
            var streams: [SSEClient] = []
            for _ in 0..<6 { streams.append(try await SSEClient.open(port: server.port, path: "/events?topic=quiet")) }
            for stream in streams { _ = try await stream.hello() }
            for index in 0..<40 { _ = try await HTTPTestClient.publish(server.port, "/events?topic=busy", body: "b\(index)") }
            let first = try await HTTPTestClient.publish(server.port, "/events?topic=quiet", body: "q1")[0]
            let second = try await HTTPTestClient.publish(server.port, "/events?topic=quiet", body: "q2")[0]
            for stream in streams {
                let events = try await stream.waitForDataEvents(through: second)
                #expect(events.map(\.data) == ["q1", "q2"])
                #expect(events.map(\.lastEventID) == [String(first), String(second)])
                #expect(!stream.events.contains { $0.type == "herald.reset" })
                #expect(!stream.connection.isClosed)
            }
            for stream in streams { await stream.close() }
        }
    }

    @Test("Prefix, * and direct-message subscribers on otherwise idle loops get their events")
    func broadAndDirectInterest() async throws {
        try await withServer({ $0.historyCapacity = 8 }) { server in
            var streams: [(SSEClient, String)] = []
            for index in 0..<4 {
                streams.append((try await SSEClient.open(port: server.port, path: "/events?topic=pre/*"), "prefix"))
                streams.append((try await SSEClient.open(port: server.port, path: "/events?topic=*"), "all"))
                streams.append((try await SSEClient.open(port: server.port, path: "/events?topic=none&client=direct_\(index)_token"),
                                "direct_\(index)_token"))
            }
            for (stream, _) in streams { _ = try await stream.hello() }
            for index in 0..<20 { _ = try await HTTPTestClient.publish(server.port, "/events?topic=other", body: "o\(index)") }
            let prefixed = try await HTTPTestClient.publish(server.port, "/events?topic=pre/x", body: "p")[0]
            var directIDs: [String: Int64] = [:]
            for index in 0..<4 {
                let token = "direct_\(index)_token"
                directIDs[token] = try await HTTPTestClient.publish(server.port, "/clients/\(token)/events", body: "d\(index)")[0]
            }
            let last = try await HTTPTestClient.publish(server.port, "/events?topic=pre/y", body: "end")[0]
            for (stream, kind) in streams {
                switch kind {
                case "prefix":
                    let events = try await stream.waitForDataEvents(through: last)
                    #expect(events.map(\.lastEventID) == [String(prefixed), String(last)])
                case "all":
                    let events = try await stream.waitForDataEvents(through: last)
                    #expect(events.count == 22) // 20 others, and the two prefixed; no direct messages
                    #expect(!events.contains { $0.data.hasPrefix("d") })
                default:
                    let id = directIDs[kind]!
                    let events = try await stream.waitForDataEvents(through: id)
                    #expect(events.map(\.lastEventID) == [String(id)])
                }
                #expect(!stream.events.contains { $0.type == "herald.reset" })
            }
            for (stream, _) in streams { await stream.close() }
        }
    }

    @Test("Subscribers that open while publishes flow get every event after their start, in order")
    func subscribeWhilePublishing() async throws {
        try await withServer({ $0.historyCapacity = 100_000 }) { server in
            let port = server.port
            // One publisher on the watched topic, one on another (it keeps the other loops
            // skipping), while 20 subscribers arrive one by one on both loops.
            async let watched: [Int64] = {
                var ids: [Int64] = []
                for index in 0..<400 { ids += try await HTTPTestClient.publish(port, "/events?topic=watched", body: "w\(index)") }
                return ids
            }()
            async let noise: Void = {
                for index in 0..<400 { _ = try await HTTPTestClient.publish(port, "/events?topic=noise", body: "n\(index)") }
            }()
            var streams: [SSEClient] = []
            for _ in 0..<20 {
                streams.append(try await SSEClient.open(port: port, path: "/events?topic=watched"))
                try await Task.sleep(for: .milliseconds(15))
            }
            let ids = try await watched
            try await noise
            let closing = try await HTTPTestClient.publish(port, "/events?topic=watched", body: "last")[0]
            var startedLate = 0
            for stream in streams {
                let received = try await stream.waitForDataEvents(through: closing).compactMap { Int64($0.lastEventID) }
                // From its first event on, a stream has every later id of the topic.
                guard let start = received.first, let index = ids.firstIndex(of: start) else {
                    #expect(received == [closing])
                    continue
                }
                if index > 0 { startedLate += 1 }
                #expect(received == Array(ids[index...]) + [closing])
            }
            // The subscribers did arrive while the topic was being published to.
            #expect(startedLate > 0)
            for stream in streams { await stream.close() }
        }
    }

    @Test("A long poll on a loop with no stream wanting its topic is answered by the next matching publish")
    func pollOnIdleLoop() async throws {
        try await withServer({ $0.historyCapacity = 8 }) { server in
            // Two polls, so both loops have one.
            async let first = HTTPTestClient.get(server.port, "/poll?topic=polled&timeout=20")
            async let second = HTTPTestClient.get(server.port, "/poll?topic=polled&timeout=20")
            try await waitForOpenStreams(server.port, 2)
            for index in 0..<20 { _ = try await HTTPTestClient.publish(server.port, "/events?topic=other", body: "o\(index)") }
            let id = try await HTTPTestClient.publish(server.port, "/events?topic=polled", body: "p")[0]
            for response in try await [first, second] {
                #expect(response.status == 200)
                #expect(response.json?["lastEventId"] == .string(String(id)))
                guard case .array(let events)? = response.json?["events"] else {
                    Issue.record("no events")
                    continue
                }
                #expect(events.count == 1)
            }
        }
    }
}
