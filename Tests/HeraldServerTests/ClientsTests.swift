import HeraldCore
import Testing

@Suite("/clients: the connected-client list", .timeLimit(.minutes(2)))
struct ClientsTests {
    @Test("Lists clients with merged connections, topics, last delivered id; leaves when the last stream closes")
    func listing() async throws {
        try await withServer { server in
            let empty = try await HTTPTestClient.get(server.port, "/clients")
            #expect(empty.status == 200)
            #expect(empty.json?["count"] == .number("0"))

            let one = try await SSEClient.open(port: server.port, path: "/events?topic=a&client=alice_token")
            let two = try await SSEClient.open(port: server.port, path: "/events?topic=b&topic=a&client=alice_token")
            let bob = try await SSEClient.open(port: server.port, path: "/events?topic=c&client=bob_token_")
            for client in [one, two, bob] { _ = try await client.hello() }
            let id = try await HTTPTestClient.publish(server.port, "/events?topic=b", body: "x")
            _ = try await two.waitForDataEvents(1)

            let list = try await HTTPTestClient.get(server.port, "/clients")
            #expect(list.status == 200)
            #expect(list.header("content-type") == "application/json")
            #expect(list.json?["count"] == .number("2"))
            let alice = try await HTTPTestClient.get(server.port, "/clients/alice_token")
            #expect(alice.status == 200)
            let json = try #require(alice.json)
            #expect(json["client"] == .string("alice_token"))
            #expect(json["connections"] == .number("2"))
            if case .array(let topics)? = json["topics"] {
                #expect(Set(topics.map(\.compactText)) == ["\"a\"", "\"b\""])
            } else {
                Issue.record("no topics")
            }
            #expect(json["lastEventId"] == .string(String(id[0])))
            #expect(json["queuedBytes"] != nil)
            if case .string(let connectedAt)? = json["connectedAt"] {
                #expect(connectedAt.hasSuffix("Z") && connectedAt.contains("T"))
            } else {
                Issue.record("no connectedAt")
            }
            let bobJSON = try await HTTPTestClient.get(server.port, "/clients/bob_token_").json
            #expect(bobJSON?["lastEventId"] == .null)

            await one.close()
            await two.close()
            var gone = false
            for _ in 0..<200 where !gone {
                gone = try await HTTPTestClient.get(server.port, "/clients/alice_token").status == 404
                if !gone { try await Task.sleep(for: .milliseconds(10)) }
            }
            #expect(gone)
            #expect(try await HTTPTestClient.get(server.port, "/clients/not-a-token!").status == 400)
            await bob.close()
        }
    }

    @Test("DELETE closes the client's streams (204, else 404); it may reconnect and resume")
    func delete() async throws {
        try await withServer { server in
            let client = try await SSEClient.open(port: server.port, path: "/events?topic=a&client=victim_token")
            _ = try await client.hello()
            let ids = try await HTTPTestClient.publish(server.port, "/events?topic=a", body: "before")
            _ = try await client.waitForDataEvents(1)
            let deleted = try await HTTPTestClient.request(port: server.port, method: "DELETE", path: "/clients/victim_token")
            #expect(deleted.status == 204)
            try await client.connection.waitForClose()
            let chunkedEnd = String(decoding: client.connection.received, as: UTF8.self).hasSuffix("0\r\n\r\n")
            #expect(chunkedEnd, "the chunked body is ended properly")
            let again = try await HTTPTestClient.request(port: server.port, method: "DELETE", path: "/clients/victim_token")
            #expect(again.status == 404)
            let missed = try await HTTPTestClient.publish(server.port, "/events?topic=a", body: "missed")
            let back = try await SSEClient.open(
                port: server.port, path: "/events?topic=a&client=victim_token",
                headers: [("Accept", "text/event-stream"), ("Last-Event-ID", String(ids[0]))])
            #expect(try await back.waitForDataEvents(1).map(\.lastEventID) == [String(missed[0])])
            await back.close()
        }
    }
}
