import HeraldCore
import NIOConcurrencyHelpers
import Testing

@Suite("Last-Event-ID: replay, reset, restart", .timeLimit(.minutes(2)))
struct ReplayTests {
    /// Publishes `count` events to `topic` and returns their ids.
    static func publishMany(_ port: Int, topic: String, count: Int, prefix: String = "e") async throws -> [Int64] {
        var ids: [Int64] = []
        for index in 0..<count {
            ids += try await HTTPTestClient.publish(port, "/events?topic=\(topic)", body: "\(prefix)\(index)")
        }
        return ids
    }

    @Test("A reconnect with Last-Event-ID gets exactly the missed events of its topics, then live ones")
    func resumeAfterDisconnect() async throws {
        try await withServer { server in
            let client = try await SSEClient.open(port: server.port, path: "/events?topic=a&client=resumer_1")
            _ = try await client.hello()
            let first = try await Self.publishMany(server.port, topic: "a", count: 3)
            let seen = try await client.waitForDataEvents(3)
            #expect(seen.map(\.lastEventID) == first.map(String.init))
            await client.close()

            let missed = try await Self.publishMany(server.port, topic: "a", count: 4, prefix: "m")
            _ = try await Self.publishMany(server.port, topic: "b", count: 2)
            let back = try await SSEClient.open(
                port: server.port, path: "/events?topic=a&client=resumer_1",
                headers: [("Accept", "text/event-stream"), ("Last-Event-ID", seen.last!.lastEventID)])
            #expect(try await back.hello()["resumed"] == .bool(true))
            let replayed = try await back.waitForDataEvents(4)
            #expect(replayed.map(\.lastEventID) == missed.map(String.init))
            #expect(replayed.map(\.data) == ["m0", "m1", "m2", "m3"])
            let live = try await HTTPTestClient.publish(server.port, "/events?topic=a", body: "live")
            let all = try await back.waitForDataEvents(5)
            #expect(all.last?.lastEventID == String(live[0]))
            #expect(all.count == 5)
            await back.close()
        }
    }

    @Test("Replay for prefix, wildcard and mixed subscriptions: each matching event once, in order")
    func replayPatterns() async throws {
        try await withServer { server in
            let start = try await HTTPTestClient.publish(server.port, "/events?topic=warmup", body: "w")[0]
            var expected: [String: [Int64]] = ["a/*": [], "*": [], "a/x&topic=b": [], "b&client=tok_12345": []]
            for (index, topics) in [["a/x"], ["b"], ["a/y", "b"], ["c"], ["a/x"]].enumerated() {
                let query = topics.map { "topic=\($0)" }.joined(separator: "&")
                let id = try await HTTPTestClient.publish(server.port, "/events?\(query)", body: "e\(index)")[0]
                if topics.contains(where: { $0.hasPrefix("a/") }) { expected["a/*"]!.append(id) }
                expected["*"]!.append(id)
                if topics.contains("a/x") || topics.contains("b") { expected["a/x&topic=b"]!.append(id) }
                if topics.contains("b") { expected["b&client=tok_12345"]!.append(id) }
            }
            let direct = try await HTTPTestClient.publish(server.port, "/clients/tok_12345/events", body: "d")[0]
            expected["b&client=tok_12345"]!.append(direct)
            var clients: [(query: String, ids: [Int64], client: SSEClient)] = []
            for (query, ids) in expected {
                let client = try await SSEClient.open(
                    port: server.port, path: "/events?topic=\(query)",
                    headers: [("Accept", "text/event-stream"), ("Last-Event-ID", String(start))])
                let events = try await client.waitForDataEvents(ids.count)
                #expect(events.map(\.lastEventID) == ids.map(String.init), "\(query)")
                clients.append((query, ids, client))
            }
            // A marker on a/x and b, which every subscription matches: each stream gets it
            // next, with nothing extra replayed before it.
            let marker = try await HTTPTestClient.publish(server.port, "/events?topic=a/x&topic=b", body: "marker")[0]
            for (query, ids, client) in clients {
                let events = try await client.waitForDataEvents(through: marker)
                #expect(events.count == ids.count + 1, "\(query): nothing extra")
                #expect(events.map(\.lastEventID) == (ids + [marker]).map(String.init), "\(query): nothing extra")
                await client.close()
            }
        }
    }

    @Test("Every query spelling resumes; the header wins; empty values count as absent")
    func spellings() async throws {
        try await withServer { server in
            let ids = try await Self.publishMany(server.port, topic: "a", count: 4)
            for name in ["lastEventId", "last_event_id", "evs_last_event_id"] {
                let client = try await SSEClient.open(port: server.port, path: "/events?topic=a&\(name)=\(ids[1])")
                #expect(try await client.hello()["resumed"] == .bool(true), "\(name)")
                let events = try await client.waitForDataEvents(2)
                #expect(events.map(\.lastEventID) == [ids[2], ids[3]].map(String.init), "\(name)")
                await client.close()
            }
            let header = try await SSEClient.open(
                port: server.port, path: "/events?topic=a&lastEventId=\(ids[0])",
                headers: [("Accept", "text/event-stream"), ("Last-Event-ID", String(ids[2]))])
            let fromHeader = try await header.waitForDataEvents(1)
            #expect(fromHeader.map(\.lastEventID) == [String(ids[3])])
            await header.close()

            let emptyHeader = try await SSEClient.open(
                port: server.port, path: "/events?topic=a&lastEventId=\(ids[2])",
                headers: [("Accept", "text/event-stream"), ("Last-Event-ID", "")])
            #expect(try await emptyHeader.hello()["resumed"] == .bool(true))
            #expect(try await emptyHeader.waitForDataEvents(1).map(\.lastEventID) == [String(ids[3])])
            await emptyHeader.close()

            let emptyQuery = try await SSEClient.open(port: server.port, path: "/events?topic=a&lastEventId=")
            #expect(try await emptyQuery.hello()["resumed"] == .bool(false))
            await emptyQuery.close()
        }
    }

    /// The reset event of a stream, as (reason, lastEventId, id).
    static func reset(_ client: SSEClient) async throws -> (JSONValue, JSONValue, String) {
        let messages = try await client.waitFor("herald.reset") { messages in
            messages.contains { if case .event(let e) = $0 { return e.type == "herald.reset" } else { return false } }
        }
        for case .event(let event) in messages where event.type == "herald.reset" {
            let json = try JSON.parse(event.data)
            #expect(event.hadIDField)
            return (json["reason"] ?? .null, json["lastEventId"] ?? .null, event.lastEventID)
        }
        throw TestTimeout(what: "herald.reset")
    }

    @Test("Unknown, future and evicted ids get herald.reset with the newest id, then the retained events")
    func resets() async throws {
        try await withServer({ $0.historyCapacity = 5 }) { server in
            let retained = try await HTTPTestClient.publish(server.port, "/events?topic=a&retain=1", body: "state")
            let ids = try await Self.publishMany(server.port, topic: "a", count: 8)
            let newest = String(ids.last!)
            let cases: [(String, String)] = [
                ("abc", "unknown-id"), ("-5", "unknown-id"), ("12.5", "unknown-id"),
                (String(ids.last! + 1), "unknown-id"), (String(ids[0]), "history-truncated"), ("1", "history-truncated"),
            ]
            for (sent, reason) in cases {
                let client = try await SSEClient.open(
                    port: server.port, path: "/events?topic=a",
                    headers: [("Accept", "text/event-stream"), ("Last-Event-ID", sent)])
                #expect(try await client.hello()["resumed"] == .bool(false), "\(sent)")
                let (gotReason, gotSent, id) = try await Self.reset(client)
                #expect(gotReason == .string(reason), "\(sent)")
                #expect(gotSent == .string(sent))
                #expect(id == newest)
                let after = try await client.waitForDataEvents(1)
                #expect(after.first?.data == "state", "retained event follows the reset")
                #expect(after.first?.lastEventID == String(retained[0]))
                await client.close()
            }
            // The boundaries: the oldest id minus one still resumes, and so does the newest.
            let oldestMinusOne = ids[ids.count - 5] - 1
            for resumable in [oldestMinusOne, ids.last!] {
                let client = try await SSEClient.open(
                    port: server.port, path: "/events?topic=a",
                    headers: [("Accept", "text/event-stream"), ("Last-Event-ID", String(resumable))])
                #expect(try await client.hello()["resumed"] == .bool(true), "\(resumable)")
                await client.close()
            }
        }
    }

    @Test("After a restart ids keep increasing and a pre-restart id gets herald.reset, never a wrong replay")
    func restart() async throws {
        let before = try await withServer { server in
            try await Self.publishMany(server.port, topic: "a", count: 3)
        }
        try await withServer { server in
            let client = try await SSEClient.open(
                port: server.port, path: "/events?topic=a",
                headers: [("Accept", "text/event-stream"), ("Last-Event-ID", String(before[1]))])
            let (reason, _, _) = try await Self.reset(client)
            #expect(reason == .string("history-truncated"))
            let after = try await HTTPTestClient.publish(server.port, "/events?topic=a", body: "new")
            #expect(after[0] > before.last!)
            let events = try await client.waitForDataEvents(1)
            #expect(events.map(\.data) == ["new"])
            await client.close()
        }
    }

    @Test("Replay is paced by the socket: a gap larger than --max-queued-bytes is replayed whole")
    func largeReplay() async throws {
        try await withServer({ $0.maxQueuedBytes = 4096; $0.historyCapacity = 5000; $0.maxBodyBytes = 4 << 20 }) { server in
            let payload = String(repeating: "p", count: 900)
            var body = ""
            for _ in 0..<1500 { body += "{\"topic\":\"big\",\"data\":\"\(payload)\"}\n" }
            let ids = try await HTTPTestClient.publish(server.port, "/events", body: body, contentType: "application/x-ndjson")
            #expect(ids.count == 1500)
            let client = try await SSEClient.open(
                port: server.port, path: "/events?topic=big",
                headers: [("Accept", "text/event-stream"), ("Last-Event-ID", String(ids[0] - 1))])
            let events = try await client.waitForDataEvents(1500, timeout: .seconds(60))
            #expect(events.map(\.lastEventID) == ids.map(String.init))
            // It goes live afterwards.
            let live = try await HTTPTestClient.publish(server.port, "/events?topic=big", body: "live")
            let more = try await client.waitForDataEvents(1501)
            #expect(more.last?.lastEventID == String(live[0]))
            await client.close()
        }
    }

    @Test("Subscribing while events are published: replay and live join with no gap and no duplicate")
    func replayLiveBoundary() async throws {
        try await withServer { server in
            let seed = try await Self.publishMany(server.port, topic: "a", count: 5)
            let total = 300
            let progress = NIOLockedValueBox(0)
            let publisher = Task {
                var ids: [Int64] = []
                for index in 0..<total {
                    ids += try await HTTPTestClient.publish(server.port, "/events?topic=a", body: "n\(index)")
                    progress.withLockedValue { $0 = ids.count }
                }
                return ids
            }
            var clients: [(SSEClient, Int64)] = []
            for round in 0..<8 {
                // Subscribe at points spread over the publishing run: after 30, 60, ... 240 events.
                let reached = (round + 1) * total / 10
                try await eventually("the publisher to reach \(reached) events", timeout: .seconds(30), interval: .milliseconds(1)) {
                    progress.withLockedValue { $0 } >= reached
                }
                let from = round % 2 == 0 ? seed[round % seed.count] : seed.last!
                clients.append((try await SSEClient.open(
                    port: server.port, path: "/events?topic=a",
                    headers: [("Accept", "text/event-stream"), ("Last-Event-ID", String(from))]), from))
            }
            let published = try await publisher.value
            let all = seed + published
            // A marker after the last publish: every stream gets it right after the expected
            // events, with no duplicate between them.
            let marker = try await HTTPTestClient.publish(server.port, "/events?topic=a", body: "marker")[0]
            for (client, from) in clients {
                let expected = all.filter { $0 > from }
                let events = try await client.waitForDataEvents(through: marker, timeout: .seconds(30))
                #expect(events.dropLast().map(\.lastEventID) == expected.map(String.init))
                #expect(events.count == expected.count + 1, "no duplicates after the expected ones")
                await client.close()
            }
        }
    }
}
