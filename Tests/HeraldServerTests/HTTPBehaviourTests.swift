import HeraldCore
import Testing

@Suite("HTTP behaviour: CORS, methods, limits, timeouts, keep-alive, pipelining", .timeLimit(.minutes(2)))
struct HTTPBehaviourTests {
    @Test("Preflight allows the SSE request headers; '*' applies to subscribing, not to publishing")
    func cors() async throws {
        try await withServer({ $0.corsOrigins = ["*", "https://admin.example"] }) { server in
            let preflight = try await HTTPTestClient.request(
                port: server.port, method: "OPTIONS", path: "/events",
                headers: [("Origin", "https://site.example"), ("Access-Control-Request-Method", "GET"),
                          ("Access-Control-Request-Headers", "last-event-id")])
            #expect(preflight.status == 204)
            #expect(preflight.header("access-control-allow-origin") == "*")
            let allowed = preflight.header("access-control-allow-headers") ?? ""
            for name in ["Last-Event-ID", "Cache-Control", "Authorization", "Content-Type", "Idempotency-Key", "X-Requested-With"] {
                #expect(allowed.contains(name))
            }
            let publishPreflight = try await HTTPTestClient.request(
                port: server.port, method: "OPTIONS", path: "/events",
                headers: [("Origin", "https://site.example"), ("Access-Control-Request-Method", "POST")])
            #expect(publishPreflight.header("access-control-allow-origin") == nil)
            let adminPreflight = try await HTTPTestClient.request(
                port: server.port, method: "OPTIONS", path: "/clients",
                headers: [("Origin", "https://admin.example"), ("Access-Control-Request-Method", "GET")])
            #expect(adminPreflight.header("access-control-allow-origin") == "https://admin.example")

            let stream = try await SSEClient.open(
                port: server.port, path: "/events?topic=a",
                headers: [("Accept", "text/event-stream"), ("Origin", "https://site.example")])
            #expect(try await stream.head().header("access-control-allow-origin") == "*")
            await stream.close()
            // Keyless publishing refuses an origin that is not listed explicitly (SPEC §16).
            let publish = try await HTTPTestClient.post(server.port, "/events?topic=a", body: "x", headers: [("Origin", "https://site.example")])
            #expect(publish.status == 403)
            #expect(publish.header("access-control-allow-origin") == nil)
            let adminPublish = try await HTTPTestClient.post(server.port, "/events?topic=a", body: "x", headers: [("Origin", "https://admin.example")])
            #expect(adminPublish.header("access-control-allow-origin") == "https://admin.example")
        }
    }

    @Test("Wrong methods get 405 with Allow; unknown API paths 404; every error is problem+json")
    func methodsAndPaths() async throws {
        try await withServer { server in
            let cases: [(String, String, Int, String?)] = [
                ("PUT", "/events", 405, "GET, POST, DELETE, OPTIONS"),
                ("DELETE", "/events", 400, nil),
                ("POST", "/clients", 405, "GET, OPTIONS"),
                ("PUT", "/clients/some_token", 405, "GET, DELETE, OPTIONS"),
                ("GET", "/clients/some_token/events", 405, "POST, OPTIONS"),
                ("POST", "/health", 405, "GET, HEAD, OPTIONS"),
                ("GET", "/clients/a_token_1/other", 404, nil),
                ("GET", "/events/extra", 404, nil),
                ("GET", "/no-such-file.txt", 404, nil),
            ]
            for (method, path, status, allow) in cases {
                let response = try await HTTPTestClient.request(port: server.port, method: method, path: path)
                #expect(response.status == status, "\(method) \(path)")
                #expect(response.header("content-type") == "application/problem+json", "\(method) \(path)")
                if let allow { #expect(response.header("allow") == allow) }
            }
        }
    }

    @Test("/health and /metrics with the required metric names")
    func operations() async throws {
        try await withServer { server in
            let health = try await HTTPTestClient.get(server.port, "/health")
            #expect(health.status == 200)
            #expect(health.json == .object([("status", .string("ok"))]))
            let client = try await SSEClient.open(port: server.port, path: "/events?topic=m&client=metrics_client")
            _ = try await client.hello()
            _ = try await HTTPTestClient.publish(server.port, "/events?topic=m", body: "x")
            _ = try await client.waitForDataEvents(1)
            let metrics = try await HTTPTestClient.get(server.port, "/metrics")
            #expect(metrics.status == 200)
            #expect(metrics.header("content-type")?.hasPrefix("text/plain") == true)
            let text = metrics.text
            func value(_ name: String) -> Double? {
                for line in text.split(separator: "\n") where line.hasPrefix(name + " ") {
                    return Double(line.split(separator: " ")[1])
                }
                return nil
            }
            for name in ["herald_streams_open", "herald_clients_connected", "herald_events_published_total",
                         "herald_events_delivered_total", "herald_bytes_sent_total", "herald_history_events",
                         "herald_slow_consumer_disconnects_total", "herald_replays_total", "herald_resets_total"] {
                #expect(value(name) != nil, "\(name) missing")
            }
            #expect(value("herald_streams_open") == 1)
            #expect(value("herald_clients_connected") == 1)
            #expect(value("herald_events_published_total") == 1)
            #expect(value("herald_events_delivered_total") == 1)
            #expect((value("herald_bytes_sent_total") ?? 0) > 0)
            #expect(value("herald_history_events") == 1)
            await client.close()
        }
    }

    @Test("Request headers over 16 KiB get 431")
    func headerLimit() async throws {
        try await withServer { server in
            let big = String(repeating: "v", count: 17 * 1024)
            let response = try await HTTPTestClient.get(server.port, "/health", headers: [("X-Big", big)])
            #expect(response.status == 431)
            #expect(response.header("content-type") == "application/problem+json")
            let fine = try await HTTPTestClient.get(server.port, "/health", headers: [("X-Fine", String(repeating: "v", count: 8 * 1024))])
            #expect(fine.status == 200)
        }
    }

    @Test("A request head not complete in time gets 408 and a close, while others are served")
    func headTimeout() async throws {
        try await withServer({ $0.requestHeadTimeout = .milliseconds(300) }) { server in
            let slow = try await RawConnection.connect(port: server.port, sending: Array("GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n".utf8))
            let idle = try await RawConnection.connect(port: server.port)
            #expect(try await HTTPTestClient.get(server.port, "/health").status == 200)
            let bytes = try await slow.waitForClose(timeout: .seconds(5))
            #expect(String(decoding: bytes, as: UTF8.self).hasPrefix("HTTP/1.1 408"))
            try await idle.waitForClose(timeout: .seconds(5))
        }
    }

    @Test("A malformed request gets 400 and a close; other connections and streams are unaffected")
    func malformed() async throws {
        try await withServer { server in
            let stream = try await SSEClient.open(port: server.port, path: "/events?topic=a")
            _ = try await stream.hello()
            for garbage in ["GARBAGE\r\n\r\n", "GET / HTTP/9.9\r\n\r\n", "GET /health HTTP/1.1\r\nBad Header\r\n\r\n", "\u{0}\u{1}\u{2}\r\n\r\n"] {
                let connection = try await RawConnection.connect(port: server.port)
                try await connection.send(garbage)
                let bytes = try await connection.waitForClose()
                let text = String(decoding: bytes, as: UTF8.self)
                #expect(text.hasPrefix("HTTP/1.1 400") || text.hasPrefix("HTTP/1.0 400"), "\(garbage.debugDescription): \(text.prefix(40))")
                #expect(text.contains("application/problem+json"))
            }
            let ids = try await HTTPTestClient.publish(server.port, "/events?topic=a", body: "still fine")
            #expect(try await stream.waitForDataEvents(1).map(\.lastEventID) == [String(ids[0])])
            await stream.close()
        }
    }

    @Test("Keep-alive and pipelining: several requests on one connection are answered in order")
    func pipelining() async throws {
        try await withServer { server in
            let connection = try await RawConnection.connect(port: server.port)
            let requests = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                + "POST /events?topic=p HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\n\r\nabc"
                + "GET /nope HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                + "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            try await connection.send(requests)
            let bytes = try await connection.waitForClose()
            var rest = bytes
            var statuses: [Int] = []
            while let (response, used) = HTTPResponseParser.parse(rest, closed: true) {
                statuses.append(response.status)
                rest = Array(rest[used...])
                if rest.isEmpty { break }
            }
            #expect(statuses == [200, 200, 404, 200])
        }
    }

    @Test("Expect: 100-continue gets an interim 100 before the body is sent")
    func expectContinue() async throws {
        try await withServer { server in
            let connection = try await RawConnection.connect(port: server.port)
            try await connection.send("POST /events?topic=e HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            try await connection.waitUntil("100 Continue") { bytes, _ in
                String(decoding: bytes, as: UTF8.self).contains("100 Continue")
            }
            try await connection.send("hello")
            try await connection.waitUntil("the 200") { bytes, _ in String(decoding: bytes, as: UTF8.self).contains("\"ids\"") }
            await connection.close()
        }
    }
}

@Suite("Hostile clients: slow heads and bodies, endless chunks, huge headers", .timeLimit(.minutes(2)))
struct HostileClientTests {
    @Test("Slowloris: connections dribbling a head or a body are cut off while normal clients are served")
    func slowloris() async throws {
        try await withServer({
            $0.requestHeadTimeout = .milliseconds(500)
            $0.requestBodyTimeout = .milliseconds(800)
        }) { server in
            var slow: [RawConnection] = []
            for index in 0..<20 {
                let start = index % 2 == 0
                    ? "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    : "POST /events?topic=a HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nab"
                slow.append(try await RawConnection.connect(port: server.port, sending: Array(start.utf8)))
            }
            // A byte now and then does not keep them alive.
            for _ in 0..<3 {
                for connection in slow where !connection.isClosed { try? await connection.send("x") }
                #expect(try await HTTPTestClient.get(server.port, "/health").status == 200)
                // Kept: the pause between trickled bytes is the attack's rhythm (the trickle
                // has to span the timeouts), not a wait for the server.
                try await Task.sleep(for: .milliseconds(200))
            }
            for connection in slow {
                let bytes = try await connection.waitForClose(timeout: .seconds(5))
                #expect(String(decoding: bytes, as: UTF8.self).hasPrefix("HTTP/1.1 408"))
            }
            let stream = try await SSEClient.open(port: server.port, path: "/events?topic=a")
            _ = try await stream.hello()
            // Nothing from the cut-off bodies was published.
            let ids = try await HTTPTestClient.publish(server.port, "/events?topic=a", body: "real")
            #expect(try await stream.waitForDataEvents(1).map(\.lastEventID) == [String(ids[0])])
            await stream.close()
        }
    }

    @Test("Garbage after a request does not cost that request its answer (found by the fuzz test)")
    func garbageAfterRequest() async throws {
        try await withServer { server in
            for (request, first) in [
                ("HEAD / HTTP/1.0\r\n\r\n1\r\nHost: 127.0.0.1\r\n\r\n", "HTTP/1.0 200"),
                ("GET /index.html HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n\u{1}garbage\r\n\r\n", "HTTP/1.1 200"),
                // A slower (asynchronous) answer, then more garbage than one read: closing at
                // once would reset the connection and the client would lose both answers.
                ("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGARBAGE" + String(repeating: "A", count: 20_000), "HTTP/1.1 200"),
            ] {
                let connection = try await RawConnection.connect(port: server.port)
                try await connection.send(request)
                let text = String(decoding: try await connection.waitForClose(), as: UTF8.self)
                #expect(text.hasPrefix(first), "\(request.debugDescription) -> \(text.prefix(80).debugDescription)")
                if first.hasPrefix("HTTP/1.1") { #expect(text.contains("HTTP/1.1 400 Bad Request")) }
            }
        }
    }

    @Test("A request target over 8 KiB gets 414 at once, even when its body never comes (found by the fuzz test)")
    func longTarget() async throws {
        try await withServer { server in
            let long = "/events?topic=" + String(repeating: "a", count: 9000)
            #expect(try await HTTPTestClient.get(server.port, long).status == 414)
            let connection = try await RawConnection.connect(port: server.port)
            try await connection.send("POST \(long) HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: 37\r\n\r\nabc")
            // Well before any head or body timeout: the answer does not wait for the body.
            let bytes = try await connection.waitForClose(timeout: .seconds(5))
            #expect(String(decoding: bytes, as: UTF8.self).hasPrefix("HTTP/1.1 414"))
        }
    }

    @Test("A never-ending chunked body is cut off at --max-body-bytes with 413")
    func endlessChunks() async throws {
        try await withServer({ $0.maxBodyBytes = 64 * 1024 }) { server in
            let connection = try await RawConnection.connect(port: server.port)
            try await connection.send("POST /events?topic=a HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n")
            let chunk = "400\r\n" + String(repeating: "z", count: 1024) + "\r\n"
            for _ in 0..<200 where !connection.isClosed {
                try? await connection.send(chunk)
            }
            let bytes = try await connection.waitForClose()
            #expect(String(decoding: bytes, as: UTF8.self).hasPrefix("HTTP/1.1 413"))
            #expect(try await HTTPTestClient.get(server.port, "/health").status == 200)
        }
    }

    @Test("Many header lines adding up past 16 KiB get 431, one huge line too")
    func headerFlood() async throws {
        try await withServer { server in
            let many = (0..<600).map { ("X-Header-\($0)", String(repeating: "h", count: 40)) }
            let response = try await HTTPTestClient.get(server.port, "/health", headers: many)
            #expect(response.status == 431)
            let huge = try await HTTPTestClient.get(server.port, "/health", headers: [("Cookie", String(repeating: "c", count: 64 * 1024))])
            #expect(huge.status == 431)
        }
    }
}
