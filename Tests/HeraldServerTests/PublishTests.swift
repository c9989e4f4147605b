import Foundation
import HeraldCore
import Testing

@Suite("POST /events: body formats, validation, atomicity, idempotency, auth", .timeLimit(.minutes(2)))
struct PublishTests {
    @Test("A raw body is the data byte for byte; line breaks become data: lines, never other fields")
    func rawBodyAndInjection() async throws {
        try await withServer { server in
            let client = try await SSEClient.open(port: server.port, path: "/events?topic=t")
            _ = try await client.hello()
            let bodies = [
                "plain", "", "trailing newline\n", "two\nlines", "cr\ronly", "crlf\r\nline",
                "a\r\nevent: evil\rid: 999\nretry: 1\n\ndata: x", "unicode ✓ 🚀", ":not a comment",
            ]
            var ids: [Int64] = []
            for body in bodies {
                ids += try await HTTPTestClient.publish(server.port, "/events?topic=t", body: body, contentType: nil)
            }
            let events = try await client.waitForDataEvents(bodies.count)
            let normalised = bodies.map { $0.replacingOccurrences(of: "\r\n", with: "\n").replacingOccurrences(of: "\r", with: "\n") }
            #expect(events.map(\.data) == normalised)
            #expect(events.allSatisfy { $0.type == "message" })
            #expect(events.map(\.lastEventID) == ids.map(String.init))
            #expect(!client.messages.contains(.retry(1)))
            await client.close()
        }
    }

    @Test("Field injection: CR, LF, CRLF and NUL in data, type or topic, in every body format, never add a field")
    func fieldInjection() async throws {
        try await withServer { server in
            let client = try await SSEClient.open(port: server.port, path: "/events?topic=*")
            _ = try await client.hello()
            var expected: [(id: Int64, type: String, data: String)] = []
            for (name, breaker) in [("cr", "\r"), ("lf", "\n"), ("crlf", "\r\n"), ("nul", "\u{0}")] {
                let evil = "x\(breaker)event: evil\(breaker)id: 1\(breaker)\(breaker)data: injected"
                let jsonEvil = JSON.quoted(evil)
                let formEvil = evil.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
                // In data: accepted, and arrives as data only.
                let normalised = evil.replacingOccurrences(of: "\r\n", with: "\n").replacingOccurrences(of: "\r", with: "\n")
                for (body, contentType) in [
                    (evil, "text/plain"),
                    ("data=\(formEvil)", "application/x-www-form-urlencoded"),
                    ("{\"data\":\(jsonEvil)}\n", "application/x-ndjson"),
                ] {
                    let ids = try await HTTPTestClient.publish(server.port, "/events?topic=inj/\(name)", body: body, contentType: contentType)
                    expected.append((ids[0], "message", normalised))
                }
                // In a type or a topic: refused, whichever way it is sent.
                let encoded = breaker.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
                for (path, body, contentType) in [
                    ("/events?topic=inj&type=a\(encoded)b", "x", "text/plain"),
                    ("/events?topic=inj\(encoded)b", "x", "text/plain"),
                    ("/events?topic=inj", "data=x&type=a\(encoded)b", "application/x-www-form-urlencoded"),
                    ("/events", "data=x&topic=a\(encoded)b", "application/x-www-form-urlencoded"),
                    ("/events?topic=inj", "{\"data\":\"x\",\"type\":\(JSON.quoted("a\(breaker)b"))}", "application/x-ndjson"),
                    ("/events", "{\"data\":\"x\",\"topic\":\(JSON.quoted("a\(breaker)b"))}", "application/x-ndjson"),
                    ("/events?topic=inj", "event: a\(breaker)b\ndata: x\n\n", "text/event-stream"),
                    ("/events", "topic: a\(breaker)b\ndata: x\n\n", "text/event-stream"),
                ] {
                    let response = try await HTTPTestClient.post(server.port, path, body: body, contentType: contentType)
                    if breaker == "\u{0}" || !contentType.hasSuffix("event-stream") {
                        #expect(response.status == 400, "\(name): \(path) \(body.debugDescription) -> \(response.status)")
                    } else {
                        // In an SSE body a line break ends the field: "a" is the whole type or
                        // topic and "b" an unknown field, ignored. Still no injected field.
                        #expect(response.status == 200)
                    }
                }
            }
            let sentinel = try await HTTPTestClient.publish(server.port, "/events?topic=inj/end", body: "end")[0]
            let messages = try await client.waitFor("the sentinel") { messages in
                SSEClient.dataEvents(in: messages).contains { $0.lastEventID == String(sentinel) }
            }
            let received = SSEClient.dataEvents(in: messages)
            for (id, type, data) in expected {
                let event = received.first { $0.lastEventID == String(id) }
                #expect(event?.type == type && event?.data == data, "event \(id): \(String(describing: event))")
            }
            // No event carries a type or id that was not published.
            #expect(received.allSatisfy { $0.type == "message" || $0.type == "a" }, "\(Set(received.map(\.type)))")
            #expect(!received.contains { $0.type == "evil" || $0.lastEventID == "1" || $0.data == "injected" })
            #expect(!messages.contains { if case .event(let e) = $0 { return e.type == "evil" } else { return false } })
            await client.close()
        }
    }

    @Test("Form bodies: topic, type and data fields; no data field is a 400 that explains raw text")
    func formBodies() async throws {
        try await withServer { server in
            let client = try await SSEClient.open(port: server.port, path: "/events?topic=f1&topic=f2")
            _ = try await client.hello()
            let ids = try await HTTPTestClient.publish(
                server.port, "/events", body: "topic=f1&topic=f2&type=greeting&data=hello+world%21",
                contentType: "application/x-www-form-urlencoded")
            let events = try await client.waitForDataEvents(1)
            #expect(events.first?.data == "hello world!")
            #expect(events.first?.type == "greeting")
            #expect(events.first?.lastEventID == String(ids[0]))
            let missing = try await HTTPTestClient.post(server.port, "/events?topic=f1", body: "hello", contentType: "application/x-www-form-urlencoded")
            #expect(missing.status == 400)
            guard case .string(let detail)? = missing.json?["detail"] else { Issue.record("no detail"); return }
            #expect(detail.contains("data") && detail.contains("text/plain"))
            await client.close()
        }
    }

    @Test("NDJSON batches: one id per line, topics per line, JSON data compact, null is null, blank lines skipped")
    func ndjson() async throws {
        try await withServer { server in
            let client = try await SSEClient.open(port: server.port, path: "/events?topic=n&topic=m")
            _ = try await client.hello()
            let body = """
            {"topic": "n", "type": "t1", "data": "text"}

            {"topic": ["m", "n"], "data": {"price": 1.10, "list": [1, true, null]}}
            {"data": null}
            {"topic": "other", "data": "not for us"}

            """
            let ids = try await HTTPTestClient.publish(server.port, "/events?topic=m", body: body, contentType: "application/x-ndjson")
            #expect(ids.count == 4)
            #expect(zip(ids, ids.dropFirst()).allSatisfy { $1 == $0 + 1 })
            let events = try await client.waitForDataEvents(3)
            #expect(events.map(\.data) == ["text", "{\"price\":1.10,\"list\":[1,true,null]}", "null"])
            #expect(events.map(\.type) == ["t1", "message", "message"])
            await client.close()
        }
    }

    @Test("SSE bodies: several events, topic: fields override the query, id:/retry:/unknown fields ignored")
    func eventStreamBodies() async throws {
        try await withServer { server in
            let client = try await SSEClient.open(port: server.port, path: "/events?topic=q&topic=s")
            _ = try await client.hello()
            let body = "event: first\ndata: a\ndata: b\nid: 77\nretry: 5\nfoo: bar\n\n: comment\ntopic: s\ndata: second\n\ndata: last without blank line"
            let ids = try await HTTPTestClient.publish(server.port, "/events?topic=q&type=dflt", body: body, contentType: "text/event-stream")
            #expect(ids.count == 3)
            let events = try await client.waitForDataEvents(3)
            #expect(events.map(\.data) == ["a\nb", "second", "last without blank line"])
            #expect(events.map(\.type) == ["first", "dflt", "dflt"])
            #expect(events.map(\.lastEventID) == ids.map(String.init))
            await client.close()
        }
    }

    @Test("Bad publishes get 400/413/415 problem+json naming the fault, and publish nothing")
    func rejections() async throws {
        try await withServer({ $0.maxEventBytes = 10; $0.maxBodyBytes = 2000 }) { server in
            let client = try await SSEClient.open(port: server.port, path: "/events?topic=*")
            _ = try await client.hello()
            let cases: [(String, String, String?, Int, String)] = [
                ("/events", "no topic", "text/plain", 400, "topic"),
                ("/events?topic=a*", "wild", "text/plain", 400, "*"),
                ("/events?topic=a&type=bad%0Atype", "x", "text/plain", 400, "type"),
                ("/events?topic=a&type=herald.hello", "x", "text/plain", 400, "reserved"),
                ("/events?topic=a&type=\(String(repeating: "t", count: 129))", "x", "text/plain", 400, "128"),
                ("/events?topic=a", "x", "text/plain; charset=latin1", 415, "charset"),
                ("/events?topic=a", "ünïcödé-long", "text/plain", 413, "max-event-bytes"),
                ("/events?topic=a", "{\"topic\":\"a\",\"data\":1}\n{\"topic\":\"a\"}\n", "application/x-ndjson", 400, "line 2"),
                ("/events?topic=a", "{\"topic\":\"a\",\"data\":1}\nnot json\n", "application/x-ndjson", 400, "line 2"),
                ("/events?topic=a", "data: ok\n\nevent: x\n\n", "text/event-stream", 400, "line 3"),
                ("/events?topic=a", "data: ok\n\ntopic: b*\ndata: y\n", "text/event-stream", 400, "*"),
                ("/events?topic=a", "x", "text/event-stream; charset=utf-16", 415, "UTF-8"),
                ("/events?topic=a&retain=perhaps", "x", "text/plain", 400, "retain"),
            ]
            for (path, body, type, status, mention) in cases {
                let response = try await HTTPTestClient.post(server.port, path, body: body, contentType: type)
                #expect(response.status == status, "\(path) \(body)")
                #expect(response.header("content-type") == "application/problem+json")
                if case .string(let detail)? = response.json?["detail"] {
                    #expect(detail.contains(mention), "\(detail) should mention \(mention)")
                } else {
                    Issue.record("no detail for \(path)")
                }
            }
            // Not UTF-8.
            let invalid = try await HTTPTestClient.request(
                port: server.port, method: "POST", path: "/events?topic=a",
                headers: [("Content-Type", "text/plain")], body: [0x61, 0xFF, 0xFE])
            #expect(invalid.status == 400)
            // Over --max-body-bytes, with Content-Length and chunked.
            let big = try await HTTPTestClient.post(server.port, "/events?topic=a", body: String(repeating: "b", count: 2001))
            #expect(big.status == 413)
            let connection = try await RawConnection.connect(port: server.port)
            var chunked = "POST /events?topic=a HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            for _ in 0..<3 { chunked += "3e8\r\n" + String(repeating: "c", count: 1000) + "\r\n" }
            try await connection.send(chunked)
            let bytes = try await connection.waitForClose()
            #expect(String(decoding: bytes, as: UTF8.self).hasPrefix("HTTP/1.1 413"))

            // The valid publish is the marker: had anything above been published, it would
            // have come before it.
            let ok = try await HTTPTestClient.publish(server.port, "/events?topic=a", body: "fine")
            let untilOK = try await client.waitForDataEvents(through: ok[0])
            let before = untilOK.dropLast()
            #expect(before.isEmpty, "nothing was published: \(before.map(\.data))")
            #expect(untilOK.map(\.lastEventID) == [String(ok[0])])
            await client.close()
        }
    }

    @Test("A repeated Idempotency-Key returns the first ids and publishes nothing new")
    func idempotency() async throws {
        try await withServer { server in
            let client = try await SSEClient.open(port: server.port, path: "/events?topic=i")
            _ = try await client.hello()
            let headers = [("Idempotency-Key", "order-42")]
            let first = try await HTTPTestClient.publish(server.port, "/events?topic=i", body: "one", headers: headers)
            let again = try await HTTPTestClient.publish(server.port, "/events?topic=i", body: "different body", headers: headers)
            #expect(first == again)
            let other = try await HTTPTestClient.publish(server.port, "/events?topic=i", body: "two", headers: [("Idempotency-Key", "order-43")])
            #expect(other[0] > first[0])
            let events = try await client.waitForDataEvents(2)
            // A marker without a key comes next: the repeat published nothing before it.
            let marker = try await HTTPTestClient.publish(server.port, "/events?topic=i", body: "marker")[0]
            let untilMarker = try await client.waitForDataEvents(through: marker)
            #expect(untilMarker.dropLast().map(\.data) == ["one", "two"])
            #expect(untilMarker.map(\.lastEventID) == (first + other + [marker]).map(String.init))
            #expect(events.count == 2)
            await client.close()
        }
    }

    @Test("With --publish-key, publishing and /clients need 'Authorization: Bearer <key>'")
    func publishKeys() async throws {
        try await withServer({ $0.publishKeys = ["k-one", "k-two"] }) { server in
            let none = try await HTTPTestClient.post(server.port, "/events?topic=a", body: "x")
            #expect(none.status == 401)
            #expect(none.header("www-authenticate")?.hasPrefix("Bearer") == true)
            #expect(none.header("content-type") == "application/problem+json")
            let wrong = try await HTTPTestClient.post(server.port, "/events?topic=a", body: "x", headers: [("Authorization", "Bearer nope")])
            #expect(wrong.status == 401)
            let basic = try await HTTPTestClient.post(server.port, "/events?topic=a", body: "x", headers: [("Authorization", "Basic k-one")])
            #expect(basic.status == 401)
            let ok = try await HTTPTestClient.post(server.port, "/events?topic=a", body: "x", headers: [("Authorization", "bearer k-two")])
            #expect(ok.status == 200)
            let list = try await HTTPTestClient.get(server.port, "/clients")
            #expect(list.status == 401)
            let listed = try await HTTPTestClient.get(server.port, "/clients", headers: [("Authorization", "Bearer k-one")])
            #expect(listed.status == 200)
            // Subscribing needs no key.
            let client = try await SSEClient.open(port: server.port, path: "/events?topic=a")
            #expect(try await client.head().status == 200)
            await client.close()
        }
    }

    @Test("Direct messages reach only their token's streams, live and on replay; '*' never matches them")
    func directMessages() async throws {
        try await withServer { server in
            let target = try await SSEClient.open(port: server.port, path: "/events?client=target_token_1")
            let withTopics = try await SSEClient.open(port: server.port, path: "/events?topic=news&client=target_token_1")
            let other = try await SSEClient.open(port: server.port, path: "/events?client=other_token_1")
            let star = try await SSEClient.open(port: server.port, path: "/events?topic=*")
            for client in [target, withTopics, other, star] { _ = try await client.hello() }
            let direct = try await HTTPTestClient.publish(server.port, "/clients/target_token_1/events", body: "for you")
            let news = try await HTTPTestClient.publish(server.port, "/events?topic=news", body: "news")
            #expect(try await target.waitForDataEvents(1).map(\.data) == ["for you"])
            #expect(try await withTopics.waitForDataEvents(2).map(\.data) == ["for you", "news"])
            #expect(try await star.waitForDataEvents(1).map(\.data) == ["news"])
            // Markers each must get next: a direct message for the other token, a topic event
            // for '*'. Nothing else reached them before.
            let otherMarker = try await HTTPTestClient.publish(server.port, "/clients/other_token_1/events", body: "marker")[0]
            let otherUntilMarker = try await other.waitForDataEvents(through: otherMarker)
            #expect(otherUntilMarker.dropLast().isEmpty)
            let starMarker = try await HTTPTestClient.publish(server.port, "/events?topic=marker", body: "marker")[0]
            let starUntilMarker = try await star.waitForDataEvents(through: starMarker)
            #expect(starUntilMarker.dropLast().count == 1)
            #expect(starUntilMarker.map(\.lastEventID) == [String(news[0]), String(starMarker)])

            let replayOther = try await SSEClient.open(
                port: server.port, path: "/events?client=other_token_1",
                headers: [("Accept", "text/event-stream"), ("Last-Event-ID", String(direct[0] - 1))])
            let replayTarget = try await SSEClient.open(
                port: server.port, path: "/events?client=target_token_1",
                headers: [("Accept", "text/event-stream"), ("Last-Event-ID", String(direct[0] - 1))])
            #expect(try await replayTarget.waitForDataEvents(1).map(\.lastEventID) == [String(direct[0])])
            _ = try await replayOther.hello()
            // Its own direct marker (published after the target's message) replays; nothing before it.
            let replayOtherUntilMarker = try await replayOther.waitForDataEvents(through: otherMarker)
            #expect(replayOtherUntilMarker.dropLast().isEmpty)
            #expect(replayOtherUntilMarker.map(\.lastEventID) == [String(otherMarker)])
            #expect(news[0] > direct[0])
            let invalid = try await HTTPTestClient.post(server.port, "/clients/bad/events", body: "x")
            #expect(invalid.status == 400)
            for client in [target, withTopics, other, star, replayOther, replayTarget] { await client.close() }
        }
    }
}
