import HeraldCore
import Testing

@Suite("GET /events: negotiation, validation, stream start", .timeLimit(.minutes(2)))
struct SubscribeTests {
    @Test("Accept must list text/event-stream itself, else 406 telling curl users the header")
    func acceptNegotiation() async throws {
        try await withServer { server in
            for accept in [nil, "*/*", "text/*", "text/html", "text/event-stream;q=0", "application/json, */*;q=0.8"] as [String?] {
                let headers = accept.map { [("Accept", $0)] } ?? []
                let response = try await HTTPTestClient.get(server.port, "/events?topic=a", headers: headers)
                #expect(response.status == 406, "Accept: \(accept ?? "none")")
                #expect(response.header("content-type") == "application/problem+json")
                let detail = response.json?["detail"]
                guard case .string(let text)? = detail else { Issue.record("no detail"); continue }
                #expect(text.contains("-H 'Accept: text/event-stream'"))
            }
            for accept in ["text/event-stream", "text/html, TEXT/EVENT-STREAM;q=0.5", "text/event-stream; charset=utf-8"] {
                let client = try await SSEClient.open(port: server.port, path: "/events?topic=a", headers: [("Accept", accept)])
                #expect(try await client.head().status == 200, "Accept: \(accept)")
                await client.close()
            }
        }
    }

    @Test("Bad subscription parameters get 400 problem+json")
    func badParameters() async throws {
        try await withServer { server in
            let tooMany = (0..<65).map { "topic=t\($0)" }.joined(separator: "&")
            let long = String(repeating: "x", count: 257)
            let cases = [
                "/events",
                "/events?other=1",
                "/events?\(tooMany)",
                "/events?topic=",
                "/events?topic=\(long)",
                "/events?topic=a%0Ab",
                "/events?topic=a%FF",
                "/events?client=short",
                "/events?client=has%20space%20inside",
                "/events?topic=a&client=\(String(repeating: "a", count: 129))",
                "/events?topic=a&padding=maybe",
            ]
            for path in cases {
                let response = try await HTTPTestClient.get(server.port, path, headers: [("Accept", "text/event-stream")])
                #expect(response.status == 400, "\(path)")
                #expect(response.header("content-type") == "application/problem+json", "\(path)")
                #expect(response.json?["detail"] != nil, "\(path)")
            }
        }
    }

    @Test("A stream starts with its headers, retry:, then herald.hello with the token and topics")
    func streamStart() async throws {
        try await withServer({ $0.retryMilliseconds = 1234 }) { server in
            let client = try await SSEClient.open(port: server.port, path: "/events?topic=quotes/*&topic=news&client=token_12345678")
            let head = try await client.head()
            #expect(head.status == 200)
            #expect(head.header("content-type") == "text/event-stream; charset=utf-8")
            #expect(head.header("cache-control") == "no-store, no-transform")
            #expect(head.header("x-accel-buffering") == "no")
            #expect(head.header("transfer-encoding") == "chunked")
            #expect(head.header("content-length") == nil)
            let hello = try await client.hello()
            #expect(hello["client"] == .string("token_12345678"))
            #expect(hello["topics"] == .array([.string("quotes/*"), .string("news")]))
            #expect(hello["resumed"] == .bool(false))
            let messages = client.messages
            #expect(messages.first == .retry(1234))
            let text = String(decoding: client.body, as: UTF8.self)
            #expect(text.hasPrefix("retry: 1234\n"))
            if case .event(let event)? = messages.dropFirst().first {
                #expect(event.type == "herald.hello")
                #expect(!event.hadIDField, "hello carries no id")
            } else {
                Issue.record("hello is not the first event: \(messages)")
            }
            await client.close()
        }
    }

    @Test("Without a client token the server assigns a random 128-bit one")
    func assignedToken() async throws {
        try await withServer { server in
            var tokens: Set<String> = []
            for _ in 0..<3 {
                let client = try await SSEClient.open(port: server.port, path: "/events?topic=a")
                guard case .string(let token)? = try await client.hello()["client"] else {
                    Issue.record("no token")
                    continue
                }
                #expect(token.count == 32 && token.allSatisfy(\.isHexDigit))
                tokens.insert(token)
                await client.close()
            }
            #expect(tokens.count == 3)
        }
    }

    @Test("padding=1 and evs_preamble send a >= 2 KiB comment between retry: and hello")
    func padding() async throws {
        try await withServer { server in
            for query in ["padding=1", "padding=true", "evs_preamble=1"] {
                let client = try await SSEClient.open(port: server.port, path: "/events?topic=a&\(query)")
                _ = try await client.hello()
                let messages = client.messages
                #expect(messages.count >= 3)
                #expect(messages.first == .retry(3000))
                if case .comment(let text)? = messages.dropFirst().first {
                    #expect(text.utf8.count + 2 >= 2048, "comment line of \(text.utf8.count + 2) bytes")
                } else {
                    Issue.record("\(query): no padding comment after retry: \(messages.prefix(3))")
                }
                await client.close()
            }
            let plain = try await SSEClient.open(port: server.port, path: "/events?topic=a")
            _ = try await plain.hello()
            #expect(!plain.messages.contains { if case .comment = $0 { return true } else { return false } })
            await plain.close()
        }
    }

    @Test("--no-chunked and HTTP/1.0 clients get close-delimited streams")
    func closeDelimited() async throws {
        try await withServer({ $0.noChunked = true }) { server in
            let client = try await SSEClient.open(port: server.port, path: "/events?topic=a")
            let head = try await client.head()
            #expect(head.header("transfer-encoding") == nil)
            #expect(head.header("connection")?.lowercased() == "close")
            _ = try await client.hello()
            let ids = try await HTTPTestClient.publish(server.port, "/events?topic=a", body: "x")
            let events = try await client.waitForDataEvents(1)
            #expect(events.map(\.lastEventID) == ids.map(String.init))
            #expect(!String(decoding: client.connection.received, as: UTF8.self).contains("\r\n4"), "no chunk framing")
            await client.close()
        }
        try await withServer { server in
            let client = try await SSEClient.open(port: server.port, path: "/events?topic=a", version: "HTTP/1.0")
            let head = try await client.head()
            #expect(head.header("transfer-encoding") == nil)
            #expect(head.header("connection")?.lowercased() == "close")
            _ = try await client.hello()
            await client.close()
        }
    }

    @Test("Keep-alive comments come after --keepalive seconds of silence, and not while events flow")
    func keepAlive() async throws {
        try await withServer({ $0.keepAlive = 0.4 }) { server in
            let client = try await SSEClient.open(port: server.port, path: "/events?topic=a")
            _ = try await client.hello()
            try await client.waitFor("two keep-alive comments", timeout: .seconds(5)) { messages in
                messages.filter { if case .comment = $0 { return true } else { return false } }.count >= 2
            }
            await client.close()
        }
        // A stream that gets an event every 100 ms is never silent for --keepalive (2 s here:
        // a wide margin, because under a loaded test run a delivery can lag its publish). The
        // test measures the gaps it caused and allows a comment only for a gap of 1 s or more.
        try await withServer({ $0.keepAlive = 2 }) { server in
            let busy = try await SSEClient.open(port: server.port, path: "/events?topic=b")
            _ = try await busy.hello()
            var last = ContinuousClock.now
            var silences = 0
            for index in 0..<25 {
                _ = try await HTTPTestClient.publish(server.port, "/events?topic=b", body: "tick \(index)")
                let now = ContinuousClock.now
                if now - last >= .seconds(1) { silences += 1 }
                last = now
                // Kept: this is the 100 ms rhythm of the busy stream under test, not a wait
                // for the server; there is nothing to observe in its place.
                try await Task.sleep(for: .milliseconds(100))
            }
            _ = try await busy.waitForDataEvents(25)
            let comments = busy.messages.filter { if case .comment = $0 { return true } else { return false } }
            #expect(comments.count <= silences, "keep-alives on a busy stream: \(comments.count), silences of 1 s or more: \(silences)")
            await busy.close()
        }
    }

    @Test("Retained events: the latest per topic, in id order, for new subscribers of matching topics")
    func retained() async throws {
        try await withServer { server in
            _ = try await HTTPTestClient.publish(server.port, "/events?topic=quotes/A&retain=1", body: "A1")
            let b = try await HTTPTestClient.publish(server.port, "/events?topic=quotes/B&retain=1", body: "B1")
            let a2 = try await HTTPTestClient.publish(server.port, "/events?topic=quotes/A&retain=1", body: "A2")
            _ = try await HTTPTestClient.publish(server.port, "/events?topic=quotes/A", body: "not retained")
            _ = try await HTTPTestClient.publish(server.port, "/events?topic=news&retain=true", body: "N1")

            let client = try await SSEClient.open(port: server.port, path: "/events?topic=quotes/*")
            let events = try await client.waitForDataEvents(2)
            #expect(events.map(\.data) == ["B1", "A2"])
            #expect(events.map(\.lastEventID) == [String(b[0]), String(a2[0])])
            // A live, unretained marker comes next: nothing else was sent before it.
            let marker = try await HTTPTestClient.publish(server.port, "/events?topic=quotes/marker", body: "marker")[0]
            let untilMarker = try await client.waitForDataEvents(through: marker)
            #expect(untilMarker.dropLast().count == 2)
            #expect(untilMarker.map(\.data) == ["B1", "A2", "marker"])

            let other = try await SSEClient.open(port: server.port, path: "/events?topic=sports")
            _ = try await other.hello()
            let otherMarker = try await HTTPTestClient.publish(server.port, "/events?topic=sports", body: "marker")[0]
            let otherUntilMarker = try await other.waitForDataEvents(through: otherMarker)
            #expect(otherUntilMarker.dropLast().isEmpty)
            #expect(otherUntilMarker.map(\.lastEventID) == [String(otherMarker)])
            await client.close()
            await other.close()
        }
    }

    @Test("Subscribers get exactly their topics: exact, prefix (including the prefix itself), *")
    func matching() async throws {
        try await withServer { server in
            let exact = try await SSEClient.open(port: server.port, path: "/events?topic=quotes/AAPL")
            let prefix = try await SSEClient.open(port: server.port, path: "/events?topic=quotes/*")
            let all = try await SSEClient.open(port: server.port, path: "/events?topic=*")
            let both = try await SSEClient.open(port: server.port, path: "/events?topic=x&topic=y")
            for client in [exact, prefix, all, both] { _ = try await client.hello() }
            let topics = ["quotes/AAPL", "quotes/", "quotesX", "quotes", "news", "quotes/AAPL/extra"]
            var idByTopic: [String: Int64] = [:]
            for topic in topics {
                idByTopic[topic] = try await HTTPTestClient.publish(server.port, "/events?topic=\(topic)", body: topic)[0]
            }
            let multi = try await HTTPTestClient.publish(server.port, "/events?topic=x&topic=y", body: "xy")[0]

            let allEvents = try await all.waitForDataEvents(topics.count + 1)
            #expect(allEvents.map(\.data) == topics + ["xy"])
            let prefixEvents = try await prefix.waitForDataEvents(3)
            #expect(prefixEvents.map(\.data) == ["quotes/AAPL", "quotes/", "quotes/AAPL/extra"])
            let exactEvents = try await exact.waitForDataEvents(1)
            #expect(exactEvents.map(\.data) == ["quotes/AAPL"])
            let bothEvents = try await both.waitForDataEvents(1)
            #expect(bothEvents.map(\.lastEventID) == [String(multi)], "an event on two subscribed topics arrives once")
            // A marker that all four match: each gets it next, and nothing else before it.
            let marker = try await HTTPTestClient.publish(server.port, "/events?topic=quotes/AAPL&topic=x", body: "marker")[0]
            let prefixUntilMarker = try await prefix.waitForDataEvents(through: marker)
            #expect(prefixUntilMarker.dropLast().count == 3)
            #expect(prefixUntilMarker.map(\.data) == ["quotes/AAPL", "quotes/", "quotes/AAPL/extra", "marker"])
            let exactUntilMarker = try await exact.waitForDataEvents(through: marker)
            #expect(exactUntilMarker.dropLast().count == 1)
            #expect(exactUntilMarker.map(\.data) == ["quotes/AAPL", "marker"])
            let bothUntilMarker = try await both.waitForDataEvents(through: marker)
            #expect(bothUntilMarker.dropLast().count == 1)
            #expect(bothUntilMarker.map(\.lastEventID) == [String(multi), String(marker)])
            #expect(try await all.waitForDataEvents(through: marker).map(\.data) == topics + ["xy", "marker"])
            for client in [exact, prefix, all, both] { await client.close() }
        }
    }

    @Test("--max-connections: 503 with Retry-After, and room again once a stream closes")
    func connectionLimit() async throws {
        try await withServer({ $0.maxConnections = 2 }) { server in
            let first = try await SSEClient.open(port: server.port, path: "/events?topic=a")
            let second = try await SSEClient.open(port: server.port, path: "/events?topic=a")
            _ = try await first.hello()
            _ = try await second.hello()
            let refused = try await HTTPTestClient.get(server.port, "/events?topic=a", headers: [("Accept", "text/event-stream")])
            #expect(refused.status == 503)
            #expect(refused.header("retry-after") != nil)
            #expect(refused.header("content-type") == "application/problem+json")
            await first.close()
            var admitted = false
            for _ in 0..<100 where !admitted {
                let third = try await SSEClient.open(port: server.port, path: "/events?topic=a")
                if try await third.head().status == 200 {
                    admitted = true
                    await third.close()
                } else {
                    await third.close()
                    try await Task.sleep(for: .milliseconds(20))
                }
            }
            #expect(admitted)
            await second.close()
        }
    }
}
