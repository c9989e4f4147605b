import HeraldCore
import Testing

@Suite("GET /poll: the long-polling fallback", .timeLimit(.minutes(2)))
struct PollTests {
    static func ids(_ response: HTTPResponse) -> [String] {
        guard case .array(let events)? = response.json?["events"] else { return [] }
        return events.compactMap { if case .string(let id)? = $0["id"] { return id } else { return nil } }
    }

    @Test("Bad parameters are 400 problem+json; no Accept header is needed")
    func validation() async throws {
        try await withServer { server in
            for path in ["/poll", "/poll?topic=a&timeout=-1", "/poll?topic=a&timeout=61", "/poll?topic=a&timeout=soon",
                         "/poll?client=bad", "/poll?topic=a*b%0A"] {
                let response = try await HTTPTestClient.get(server.port, path)
                #expect(response.status == 400, "\(path)")
                #expect(response.header("content-type") == "application/problem+json")
            }
            let ok = try await HTTPTestClient.get(server.port, "/poll?topic=a&timeout=0")
            #expect(ok.status == 200)
            #expect(ok.header("content-type") == "application/json")
            #expect(ok.json?["reset"] == .bool(false))
            #expect(Self.ids(ok).isEmpty)
        }
    }

    @Test("Without a resume id: retained events at once, else the next event")
    func fresh() async throws {
        try await withServer { server in
            let retained = try await HTTPTestClient.publish(server.port, "/events?topic=r&retain=1&type=state", body: "kept")
            let immediate = try await HTTPTestClient.get(server.port, "/poll?topic=r")
            #expect(Self.ids(immediate) == [String(retained[0])])
            guard case .array(let events)? = immediate.json?["events"], let first = events.first else {
                Issue.record("no events")
                return
            }
            #expect(first["type"] == .string("state"))
            #expect(first["data"] == .string("kept"))
            #expect(first["topic"] == .string("r"))

            async let waiting = HTTPTestClient.get(server.port, "/poll?topic=w&timeout=10")
            // The poll waits for the next event only once it is parked (counted as open).
            try await waitForOpenStreams(server.port, 1)
            let published = try await HTTPTestClient.publish(server.port, "/events?topic=w", body: "news")
            let answer = try await waiting
            #expect(Self.ids(answer) == [String(published[0])])
            #expect(answer.json?["lastEventId"] == .string(String(published[0])))
            if case .array(let events)? = answer.json?["events"] {
                #expect(events.first?["type"] == .null)
            }
        }
    }

    @Test("Resume: events after lastEventId at once, in order; empty at timeout with the newest id")
    func resume() async throws {
        try await withServer { server in
            var ids: [Int64] = []
            for index in 0..<5 { ids += try await HTTPTestClient.publish(server.port, "/events?topic=p", body: "e\(index)") }
            _ = try await HTTPTestClient.publish(server.port, "/events?topic=other", body: "x")
            let answer = try await HTTPTestClient.get(server.port, "/poll?topic=p&lastEventId=\(ids[1])")
            #expect(Self.ids(answer) == ids[2...].map(String.init))
            let header = try await HTTPTestClient.get(server.port, "/poll?topic=p", headers: [("Last-Event-ID", String(ids[3]))])
            #expect(Self.ids(header) == [String(ids[4])])

            let clock = ContinuousClock()
            let start = clock.now
            let empty = try await HTTPTestClient.get(server.port, "/poll?topic=p&timeout=1&lastEventId=\(ids[4] + 1)")
            #expect(clock.now - start >= .milliseconds(900))
            #expect(Self.ids(empty).isEmpty)
            #expect(empty.json?["reset"] == .bool(false))
            #expect(empty.json?["lastEventId"] == .string(String(ids[4] + 1)))
        }
    }

    @Test("An unknown id answers reset with the newest id and the retained events")
    func reset() async throws {
        try await withServer { server in
            let kept = try await HTTPTestClient.publish(server.port, "/events?topic=s&retain=1", body: "state")
            let newest = try await HTTPTestClient.publish(server.port, "/events?topic=s", body: "later")
            let answer = try await HTTPTestClient.get(server.port, "/poll?topic=s&lastEventId=nonsense")
            #expect(answer.json?["reset"] == .bool(true))
            #expect(answer.json?["lastEventId"] == .string(String(newest[0])))
            #expect(Self.ids(answer) == [String(kept[0])])
        }
    }

    @Test("Direct messages have a null topic; waiting polls count toward --max-connections")
    func directAndLimits() async throws {
        try await withServer({ $0.maxConnections = 1 }) { server in
            async let waiting = HTTPTestClient.get(server.port, "/poll?client=poller_token&timeout=10")
            try await waitForOpenStreams(server.port, 1)
            let refused = try await HTTPTestClient.get(server.port, "/events?topic=a", headers: [("Accept", "text/event-stream")])
            #expect(refused.status == 503)
            _ = try await HTTPTestClient.publish(server.port, "/clients/poller_token/events", body: "direct")
            let answer = try await waiting
            guard case .array(let events)? = answer.json?["events"] else {
                Issue.record("no events")
                return
            }
            #expect(events.first?["topic"] == .null)
            #expect(events.first?["data"] == .string("direct"))

            // A poll abandoned by its client frees its slot.
            let abandoned = try await RawConnection.connect(port: server.port)
            try await abandoned.send("GET /poll?topic=q&timeout=30 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            // Parked (holding the one slot; the first poll has given its slot back) before it is abandoned.
            try await waitForOpenStreams(server.port, 1)
            await abandoned.close()
            var admitted = false
            for _ in 0..<100 where !admitted {
                admitted = try await HTTPTestClient.get(server.port, "/poll?topic=q&timeout=0").status == 200
                if !admitted { try await Task.sleep(for: .milliseconds(20)) }
            }
            #expect(admitted)
        }
    }
}
