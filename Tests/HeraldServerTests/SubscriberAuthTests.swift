@testable import HeraldServer
import HeraldCore
import Testing

/// Subscriber authorization over real sockets (SPEC §14): which requests a token opens, how
/// each refusal is answered, client tokens bound to `sub`, expiry, `/poll`, CORS.
@Suite("Subscriber authorization (JWT grants)", .timeLimit(.minutes(2)))
struct SubscriberAuthTests {
    static let key = "subscriber-key-for-tests-0123456789abcdef"
    static let oldKey = "an-older-subscriber-key-0123456789abcdef"

    static func token(sub: String? = nil, topics: [String], ttl: Double = 300, key: String = key, audience: String? = nil,
                      now: Double = WallClock.secondsSince1970()) -> String {
        SubscriberTokens.sign(key: key, subject: sub, topics: topics, ttl: ttl, audience: audience, now: now)
    }

    static func secured(_ configuration: inout HeraldConfiguration) {
        configuration.subscriberKeys = [key, oldKey]
        configuration.publicTopics = ["public/*"]
        configuration.corsOrigins = ["*", "https://app.example"]
    }

    static func bearer(_ token: String) -> [(String, String)] {
        [("Accept", "text/event-stream"), ("Authorization", "Bearer \(token)")]
    }

    static func problemDetail(_ response: HTTPResponse) -> String {
        if case .string(let detail)? = response.json?["detail"] { return detail }
        return ""
    }

    @Test("No token: 401 with WWW-Authenticate: Bearer; public topics need none")
    func missingToken() async throws {
        try await withServer(Self.secured) { server in
            let refused = try await HTTPTestClient.get(server.port, "/events?topic=private", headers: [("Accept", "text/event-stream")])
            #expect(refused.status == 401)
            #expect(refused.header("www-authenticate") == "Bearer")
            #expect(refused.header("content-type") == "application/problem+json")
            #expect(Self.problemDetail(refused).contains("private"))
            // A client token alone needs a token too (only its owner reads its direct messages).
            let client = try await HTTPTestClient.get(server.port, "/events?client=someone_01", headers: [("Accept", "text/event-stream")])
            #expect(client.status == 401)
            // Public topics: no token needed, but one restricted topic among them needs it.
            let open = try await SSEClient.open(port: server.port, path: "/events?topic=public/news")
            #expect(try await open.head().status == 200)
            await open.close()
            let mixed = try await HTTPTestClient.get(server.port, "/events?topic=public/news&topic=private",
                                                     headers: [("Accept", "text/event-stream")])
            #expect(mixed.status == 401)
            #expect(try await HTTPTestClient.get(server.port, "/health").status == 200)
        }
    }

    @Test("Bad, expired, foreign and alg-confused tokens: 401 invalid_token")
    func invalidTokens() async throws {
        try await withServer(Self.secured) { server in
            let now = WallClock.secondsSince1970()
            let good = Self.token(topics: ["*"])
            let parts = good.split(separator: ".")
            let noneAlg = Base64URL.encode(Array(#"{"alg":"none"}"#.utf8)) + "." + parts[1] + "."
            let cases: [(String, String)] = [
                ("wrong key", Self.token(topics: ["*"], key: "somebody-elses-key-0123456789abcdef")),
                ("expired beyond the leeway", Self.token(topics: ["*"], ttl: 10, now: now - 100)),
                ("alg none", noneAlg),
                ("garbage", "not.a.jwt"),
                ("tampered claims", parts[0] + "." + Base64URL.encode(Array(#"{"herald.subscribe":["*"],"exp":9999999999}"#.utf8)) + "." + parts[2]),
            ]
            for (name, token) in cases {
                let response = try await HTTPTestClient.get(server.port, "/events?topic=a", headers: Self.bearer(token))
                #expect(response.status == 401, "\(name)")
                #expect(response.header("www-authenticate") == #"Bearer error="invalid_token""#, "\(name)")
            }
            // A bad header token is not rescued by a good cookie: the first one present counts.
            let rescued = try await HTTPTestClient.get(
                server.port, "/events?topic=a",
                headers: Self.bearer("not.a.jwt") + [("Cookie", "herald_token=\(good)")])
            #expect(rescued.status == 401)
            // An Authorization header that is not a usable bearer token is still the token.
            for authorization in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer   "] {
                let unusable = try await HTTPTestClient.get(
                    server.port, "/events?topic=a",
                    headers: [("Accept", "text/event-stream"), ("Authorization", authorization), ("Cookie", "herald_token=\(good)")])
                #expect(unusable.status == 401, "\(authorization)")
            }
            // Public topics need no token: a stale one (an old cookie) does not cut a page off them.
            let publicWithBad = try await SSEClient.open(port: server.port, path: "/events?topic=public/x", headers: Self.bearer("not.a.jwt"))
            #expect(try await publicWithBad.head().status == 200)
            await publicWithBad.close()
        }
    }

    @Test("A token in the header, the cookie or the query opens exactly what it grants (403 names the topic)")
    func grants() async throws {
        try await withServer(Self.secured) { server in
            let token = Self.token(topics: ["quo*", "news/AAPL"])
            let header = try await SSEClient.open(port: server.port, path: "/events?topic=quotes/*", headers: Self.bearer(token))
            #expect(try await header.head().status == 200)
            let cookie = try await SSEClient.open(
                port: server.port, path: "/events?topic=news/AAPL",
                headers: [("Accept", "text/event-stream"), ("Cookie", "theme=dark; herald_token=\(token); x=y")])
            #expect(try await cookie.head().status == 200)
            let query = try await SSEClient.open(port: server.port, path: "/events?topic=quotes/AAPL&access_token=\(token)")
            #expect(try await query.head().status == 200)
            // Signed by the older key (rotation): accepted too.
            let rotated = try await SSEClient.open(port: server.port, path: "/events?topic=quotes/X",
                                                   headers: Self.bearer(Self.token(topics: ["quotes/*"], key: Self.oldKey)))
            #expect(try await rotated.head().status == 200)
            for client in [header, cookie, query, rotated] { _ = try await client.hello() }
            let ids = try await HTTPTestClient.publish(server.port, "/events?topic=quotes/AAPL", body: "q")
            #expect(try await query.waitForDataEvents(1).map(\.lastEventID) == [String(ids[0])])

            for (path, topic) in [("/events?topic=news/*", "news/*"), ("/events?topic=*", "*"), ("/events?topic=other", "other"),
                                  ("/events?topic=news/AAPL&topic=news/MSFT", "news/MSFT")] {
                let refused = try await HTTPTestClient.get(server.port, path, headers: Self.bearer(token))
                #expect(refused.status == 403, "\(path)")
                #expect(Self.problemDetail(refused).contains("'\(topic)'"), "\(Self.problemDetail(refused))")
                #expect(refused.header("content-type") == "application/problem+json")
            }
            for client in [header, cookie, query, rotated] { await client.close() }
        }
    }

    @Test("sub binds the client token: only its holder reads its direct messages, live or replayed")
    func clientTokens() async throws {
        try await withServer(Self.secured) { server in
            let alice = Self.token(sub: "alice_token_1", topics: [])
            let mallory = Self.token(sub: "mallory_tok_1", topics: ["*"])
            // Without `client`, the token's sub is the stream's client token.
            let stream = try await SSEClient.open(port: server.port, path: "/events", headers: Self.bearer(alice))
            #expect(try await stream.hello()["client"] == .string("alice_token_1"))
            let ids = try await HTTPTestClient.publish(server.port, "/clients/alice_token_1/events", body: "for alice")
            #expect(try await stream.waitForDataEvents(1).map(\.data) == ["for alice"])
            // Mallory's valid token does not open Alice's client token, live or with a resume id.
            let live = try await HTTPTestClient.get(server.port, "/events?client=alice_token_1", headers: Self.bearer(mallory))
            #expect(live.status == 403)
            #expect(Self.problemDetail(live).contains("alice_token_1"))
            let replay = try await HTTPTestClient.get(
                server.port, "/events?client=alice_token_1&lastEventId=\(ids[0] - 1)", headers: Self.bearer(mallory))
            #expect(replay.status == 403)
            let poll = try await HTTPTestClient.get(server.port, "/poll?client=alice_token_1&timeout=0", headers: Self.bearer(mallory))
            #expect(poll.status == 403)
            // `*` never matches direct messages: Mallory's `*` stream does not get them either.
            let star = try await SSEClient.open(port: server.port, path: "/events?topic=*", headers: Self.bearer(mallory))
            _ = try await star.hello()
            _ = try await HTTPTestClient.publish(server.port, "/clients/alice_token_1/events", body: "second")
            let marker = try await HTTPTestClient.publish(server.port, "/events?topic=t", body: "marker")
            let seen = try await star.waitForDataEvents(through: marker[0])
            #expect(seen.map(\.data) == ["marker"])
            // Alice resumes with `client` = her sub and gets what she missed.
            let back = try await SSEClient.open(
                port: server.port, path: "/events?client=alice_token_1&lastEventId=\(ids[0])", headers: Self.bearer(alice))
            #expect(try await back.waitForDataEvents(1).map(\.data) == ["second"])
            for client in [stream, star, back] { await client.close() }
        }
    }

    @Test("At exp the stream gets herald.expired and is closed; a token within the leeway at once")
    func expiry() async throws {
        try await withServer(Self.secured) { server in
            let now = WallClock.secondsSince1970()
            let short = Self.token(topics: ["a"], ttl: 1.5, now: now)
            let stream = try await SSEClient.open(port: server.port, path: "/events?topic=a", headers: Self.bearer(short))
            _ = try await stream.hello()
            let messages = try await stream.waitFor("herald.expired", timeout: .seconds(6)) { messages in
                SSEClient.dataEvents(in: messages).isEmpty && messages.contains {
                    if case .event(let event) = $0 { return event.type == "herald.expired" } else { return false }
                }
            }
            let expired = messages.compactMap { message -> ReceivedEvent? in
                if case .event(let event) = message, event.type == "herald.expired" { return event } else { return nil }
            }
            #expect(expired.first?.data == #"{"exp":\#(Int64(now + 1.5))}"#)
            try await stream.connection.waitForClose()
            #expect(WallClock.secondsSince1970() >= Double(Int64(now + 1.5)))

            // Expired 30 s ago: inside the 60 s leeway, so accepted, and expired at once.
            let late = Self.token(topics: ["a"], ttl: 10, now: now - 40)
            let lateStream = try await SSEClient.open(port: server.port, path: "/events?topic=a", headers: Self.bearer(late))
            #expect(try await lateStream.head().status == 200)
            try await lateStream.connection.waitForClose(timeout: .seconds(3))
            #expect(lateStream.events.contains { $0.type == "herald.expired" })
            // Accepted within the leeway with a resume id: no replay and no retained event
            // reach it before the notice (nothing at all: hello, herald.expired, the end).
            _ = try await HTTPTestClient.publish(server.port, "/events?topic=a&retain=1", body: "retained secret")
            let ids = try await HTTPTestClient.publish(server.port, "/events?topic=a", body: "history secret")
            let replaying = try await SSEClient.open(
                port: server.port, path: "/events?topic=a&lastEventId=\(ids[0] - 5)", headers: Self.bearer(late))
            try await replaying.connection.waitForClose(timeout: .seconds(3))
            #expect(replaying.dataEvents.isEmpty)
            #expect(replaying.events.map(\.type) == ["herald.hello", "herald.expired"])
            // Streams without a token (public topics) are not affected.
            let open = try await SSEClient.open(port: server.port, path: "/events?topic=public/a")
            _ = try await open.hello()
            try await Task.sleep(for: .milliseconds(300))
            #expect(!open.events.contains { $0.type == "herald.expired" })
            await open.close()
        }
    }

    @Test("/poll follows the same rules; listed origins get credentialed CORS")
    func pollAndCORS() async throws {
        try await withServer(Self.secured) { server in
            let token = Self.token(topics: ["p"])
            #expect(try await HTTPTestClient.get(server.port, "/poll?topic=p&timeout=0").status == 401)
            #expect(try await HTTPTestClient.get(server.port, "/poll?topic=q&timeout=0", headers: Self.bearer(token)).status == 403)
            let ids = try await HTTPTestClient.publish(server.port, "/events?topic=p", body: "polled")
            let answer = try await HTTPTestClient.get(
                server.port, "/poll?topic=p&timeout=0&lastEventId=\(ids[0] - 1)&access_token=\(token)",
                headers: [("Origin", "https://app.example")])
            #expect(answer.status == 200)
            #expect(answer.text.contains("polled"))
            #expect(answer.header("access-control-allow-origin") == "https://app.example")
            #expect(answer.header("access-control-allow-credentials") == "true")
            let stream = try await SSEClient.open(
                port: server.port, path: "/events?topic=p",
                headers: [("Accept", "text/event-stream"), ("Origin", "https://app.example"), ("Cookie", "herald_token=\(token)")])
            let head = try await stream.head()
            #expect(head.status == 200)
            #expect(head.header("access-control-allow-origin") == "https://app.example")
            #expect(head.header("access-control-allow-credentials") == "true")
            await stream.close()
        }
    }

    @Test("--subscriber-audience is enforced; --demo keeps quotes/* public; open mode is unchanged")
    func audienceDemoAndOpenMode() async throws {
        try await withServer({
            Self.secured(&$0)
            $0.subscriberAudience = "herald-test"
            $0.demo = true
        }) { server in
            let without = try await HTTPTestClient.get(server.port, "/events?topic=x", headers: Self.bearer(Self.token(topics: ["x"])))
            #expect(without.status == 401)
            let with = try await SSEClient.open(port: server.port, path: "/events?topic=x",
                                                headers: Self.bearer(Self.token(topics: ["x"], audience: "herald-test")))
            #expect(try await with.head().status == 200)
            await with.close()
            let quotes = try await SSEClient.open(port: server.port, path: "/events?topic=quotes/*")
            #expect(try await quotes.head().status == 200)
            await quotes.close()
        }
        try await withServer { server in
            let open = try await SSEClient.open(port: server.port, path: "/events?topic=anything&client=anyone_123")
            #expect(try await open.hello()["client"] == .string("anyone_123"))
            await open.close()
        }
    }

    @Test("Query tokens never reach a log line")
    func redaction() {
        #expect(Responders.loggable("/events?topic=a&access_token=eyJ.abc.def&x=1") == "/events?topic=a&access_token=REDACTED&x=1")
        #expect(Responders.loggable("/poll?access_token=a&access_token=b") == "/poll?access_token=REDACTED&access_token=REDACTED")
        #expect(!Responders.loggable("/events?access_token=" + String(repeating: "s", count: 300)).contains("sss"))
    }

    @Test("Bad subscriber flags are configuration errors naming the flag")
    func flags() {
        for configure in [
            { (c: inout HeraldConfiguration) in c.subscriberKeys = ["short"] },
            { (c: inout HeraldConfiguration) in c.subscriberKeys = [Self.key]; c.publicTopics = [""] },
            { (c: inout HeraldConfiguration) in c.subscriberKeys = [Self.key]; c.subscriberAudience = "" },
        ] {
            var configuration = HeraldConfiguration()
            configure(&configuration)
            #expect(throws: ConfigurationError.self) { try configuration.validate() }
        }
    }
}
