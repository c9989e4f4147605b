import Foundation
import HeraldCore
import HeraldServer
import Testing

@Suite("--store sqlite: durable history", .timeLimit(.minutes(3)))
struct StoreTests {
    @Test("Events, retained events, idempotency keys and the id sequence survive a restart")
    func survivesRestart() async throws {
        try await withStoreFolder { path in
            let configure: (inout HeraldConfiguration) -> Void = { $0.store = .sqlite(path: path) }
            let (ids, keyed, retainedID) = try await withServer(configure) { server in
                var ids: [Int64] = []
                for index in 0..<20 {
                    ids += try await HTTPTestClient.publish(server.port, "/events?topic=t/\(index % 3)", body: "event \(index)\nline two")
                }
                ids += try await HTTPTestClient.publish(
                    server.port, "/events?topic=t/0", body: "{\"data\":{\"n\":1}}\n{\"data\":\"two\",\"type\":\"kind\"}\n",
                    contentType: "application/x-ndjson")
                let keyed = try await HTTPTestClient.publish(
                    server.port, "/events?topic=t/1", body: "once", headers: [("Idempotency-Key", "order-17")])
                let retainedID = try await HTTPTestClient.publish(server.port, "/events?topic=quote&retain=1", body: "42.5")[0]
                return (ids, keyed, retainedID)
            }
            try await withServer(configure) { server in
                // Everything acknowledged before the restart replays, in order, with its data.
                let replayed = try await replay(server.port, "topic=t/*", from: ids[0] - 1, until: keyed[0])
                #expect(replayed.map(\.lastEventID) == (ids + keyed).map(String.init))
                #expect(replayed[0].data == "event 0\nline two")
                #expect(replayed[20].data == "{\"n\":1}")
                #expect(replayed[21].type == "kind")
                // The key is remembered: the retry gets the first ids and publishes nothing.
                let retry = try await HTTPTestClient.post(
                    server.port, "/events?topic=t/1", body: "once", headers: [("Idempotency-Key", "order-17")])
                #expect(retry.status == 200)
                #expect(retry.header("Idempotent-Replayed") == "true")
                #expect(retry.json?["ids"] == .array([.string(String(keyed[0]))]))
                // The retained event greets a new subscriber.
                let fresh = try await SSEClient.open(port: server.port, path: "/events?topic=quote")
                let greeting = try await fresh.waitForDataEvents(1)
                #expect(greeting.map(\.lastEventID) == [String(retainedID)])
                #expect(greeting[0].data == "42.5")
                await fresh.close()
                // The sequence continues above every id of the first run.
                let next = try await HTTPTestClient.publish(server.port, "/events?topic=t/0", body: "after")[0]
                #expect(next > retainedID)
            }
        }
    }

    @Test("Replay reaches past the in-memory cache into the file, for exact, prefix and poll")
    func replayFallsBackToTheFile() async throws {
        try await withStoreFolder { path in
            let configure: (inout HeraldConfiguration) -> Void = {
                $0.store = .sqlite(path: path)
                $0.historyCapacity = 1000
                $0.cacheCapacity = 10
            }
            try await withServer(configure, Self.checkFallback)
        }
    }

    static func checkFallback(_ server: TestServer) async throws {
        let start = try await HTTPTestClient.publish(server.port, "/events?topic=warmup", body: "w")[0]
        var byTopic: [String: [Int64]] = [:]
        for index in 0..<150 {
            let topic = ["x/a", "x/b", "y"][index % 3]
            let id = try await HTTPTestClient.publish(server.port, "/events?topic=\(topic)", body: "n\(index)")[0]
            byTopic[topic, default: []].append(id)
        }
        let exact = try await replay(server.port, "topic=x/a", from: start, until: byTopic["x/a"]!.last!)
        #expect(exact.map(\.lastEventID) == byTopic["x/a"]!.map(String.init))
        let prefix = try await replay(server.port, "topic=x/*", from: start, until: byTopic["x/b"]!.last!)
        #expect(prefix.map(\.lastEventID) == (byTopic["x/a"]! + byTopic["x/b"]!).sorted().map(String.init))
        // /poll pages through the file with the lastEventId it answers.
        var position = start
        var polled: [String] = []
        for _ in 0..<20 where polled.count < 50 {
            let answer = try await HTTPTestClient.get(server.port, "/poll?topic=y&timeout=0&lastEventId=\(position)")
            #expect(answer.status == 200)
            guard case .array(let events)? = answer.json?["events"], case .string(let last)? = answer.json?["lastEventId"] else {
                Issue.record("unexpected poll answer \(answer.text)")
                return
            }
            for event in events { if case .string(let id)? = event["id"] { polled.append(id) } }
            position = Int64(last)!
        }
        #expect(polled == byTopic["y"]!.map(String.init))
    }

    @Test("Retention by count prunes the file; an id before the history gets herald.reset, the floor resumes")
    func retentionByCount() async throws {
        try await withStoreFolder { path in
            let configure: (inout HeraldConfiguration) -> Void = {
                $0.store = .sqlite(path: path)
                $0.historyCapacity = 20
                $0.cacheCapacity = 5
            }
            try await withServer(configure) { server in
                var ids: [Int64] = []
                for index in 0..<60 {
                    ids += try await HTTPTestClient.publish(server.port, "/events?topic=c", body: "c\(index)")
                }
                try await eventually("the history to shrink to 20 events") {
                    try await metricValue(server.port, "herald_history_events") == 20
                }
                // ids[39] is the newest pruned event: resuming from it gets the 20 kept.
                let kept = try await replay(server.port, "topic=c", from: ids[39], until: ids[59])
                #expect(kept.map(\.lastEventID) == ids[40...].map(String.init))
                let stale = try await SSEClient.open(
                    port: server.port, path: "/events?topic=c", headers: [("Accept", "text/event-stream"), ("Last-Event-ID", String(ids[10]))])
                let messages = try await stale.waitFor("herald.reset") { messages in
                    messages.contains { if case .event(let e) = $0 { return e.type == "herald.reset" } else { return false } }
                }
                let reset = messages.compactMap { if case .event(let e) = $0, e.type == "herald.reset" { return e } else { return nil } }.first!
                #expect(reset.data.contains("history-truncated"))
                #expect(reset.lastEventID == String(ids[59]))
                await stale.close()
            }
        }
    }

    @Test("Retention by age empties the history, and ids still continue after a restart")
    func retentionByAge() async throws {
        try await withStoreFolder { path in
            let configure: (inout HeraldConfiguration) -> Void = {
                $0.store = .sqlite(path: path)
                $0.historyMaxAge = .seconds(1)
            }
            let last = try await withServer(configure) { server in
                var ids: [Int64] = []
                for index in 0..<10 {
                    ids += try await HTTPTestClient.publish(server.port, "/events?topic=old", body: "o\(index)")
                }
                try await eventually("events older than 1 s to be pruned") {
                    try await metricValue(server.port, "herald_history_events") == 0
                }
                return ids.last!
            }
            try await withServer(configure) { server in
                let next = try await HTTPTestClient.publish(server.port, "/events?topic=old", body: "new")[0]
                #expect(next > last)
            }
        }
    }

    @Test("The memory store prunes by age too")
    func memoryRetentionByAge() async throws {
        let configure: (inout HeraldConfiguration) -> Void = { $0.historyMaxAge = .milliseconds(500) }
        try await withServer(configure) { server in
            let ids = try await ReplayTests.publishMany(server.port, topic: "m", count: 5)
            try await eventually("the ring to be pruned by age") {
                try await metricValue(server.port, "herald_history_events") == 0
            }
            let stale = try await SSEClient.open(
                port: server.port, path: "/events?topic=m", headers: [("Accept", "text/event-stream"), ("Last-Event-ID", String(ids[0]))])
            _ = try await stale.waitFor("herald.reset") { messages in
                messages.contains { if case .event(let e) = $0 { return e.type == "herald.reset" } else { return false } }
            }
            await stale.close()
        }
    }

    @Test("Concurrent publishers share group commits: every id unique, every event delivered once in order")
    func concurrentDurablePublishes() async throws {
        try await withStoreFolder { path in
            let configure: (inout HeraldConfiguration) -> Void = { $0.store = .sqlite(path: path) }
            try await withServer(configure) { server in
                let client = try await SSEClient.open(port: server.port, path: "/events?topic=g")
                _ = try await client.hello()
                let ids = try await withThrowingTaskGroup(of: [Int64].self) { tasks in
                    for publisher in 0..<8 {
                        tasks.addTask {
                            var ids: [Int64] = []
                            for index in 0..<25 {
                                ids += try await HTTPTestClient.publish(server.port, "/events?topic=g", body: "p\(publisher)-\(index)")
                            }
                            return ids
                        }
                    }
                    var all: [Int64] = []
                    for try await ids in tasks { all += ids }
                    return all
                }
                #expect(Set(ids).count == 200)
                let seen = try await client.waitForDataEvents(200)
                #expect(seen.map(\.lastEventID) == ids.sorted().map(String.init))
                await client.close()
            }
        }
    }

    @Test("A store that cannot be opened stops the server with a clear error")
    func unopenableStore() async throws {
        var configuration = TestServer.configuration { $0.store = .sqlite(path: "/nonexistent-dir-\(UUID().uuidString)/events.db") }
        configuration.port = 0
        await #expect(throws: (any Error).self) {
            try await withServer(configuration: configuration) { _ in }
        }
    }
}
