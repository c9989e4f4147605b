import HeraldCore
import NIOCore
import NIOHTTP1
import NIOPosix

/// A client for a Herald server (SPEC §1, §2, §14, §15): subscribe to topics and keep the
/// stream going (it reconnects by itself and resumes with the last id it received, honouring
/// the server's `retry:`), and publish in any of the body formats. Used by `herald sub` and
/// `herald pub`; it depends on HeraldCore (the SSE decoder, JSON) and SwiftNIO only, not on
/// the server.
///
/// ```swift
/// let client = try HeraldClient(url: "http://127.0.0.1:8080")
/// let ids = try await client.publish("hello", to: ["news"])
/// for try await message in client.subscribe(topics: ["news"]) {
///     if case .event(let event) = message { print(event.id, event.data) }
/// }
/// ```
public struct HeraldClient: Sendable {
    public let address: ServerAddress
    /// A subscriber token (SPEC §14), sent as `Authorization: Bearer` when subscribing.
    public var token: String?
    /// A publish key (`--publish-key`), sent as `Authorization: Bearer` when publishing.
    public var publishKey: String?
    let group: any EventLoopGroup

    public init(url: String, token: String? = nil, publishKey: String? = nil,
                group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) throws(HeraldClientError) {
        self.address = try ServerAddress(url)
        self.token = token
        self.publishKey = publishKey
        self.group = group
    }

    var exchange: HTTPExchange { HTTPExchange(address: address, group: group) }

    // MARK: Publishing

    /// Publishes `data` (raw, byte for byte) to `topics`, or as a direct message to `client`.
    /// Returns the ids the server gave.
    public func publish(_ data: String, to topics: [String], client: String? = nil, type: String? = nil, retain: Bool = false,
                        idempotencyKey: String? = nil) async throws -> [Int64] {
        try await publish(body: Array(data.utf8), contentType: "text/plain; charset=utf-8", topics: topics, client: client,
                          type: type, retain: retain, idempotencyKey: idempotencyKey)
    }

    /// Publishes a batch, atomically: one event per line of NDJSON (`{"data": ..., "topic":
    /// ..., "type": ...}`); lines that name no topic go to `topics`.
    public func publishNDJSON(_ lines: [String], topics: [String], type: String? = nil, retain: Bool = false,
                              idempotencyKey: String? = nil) async throws -> [Int64] {
        var body: [UInt8] = []
        for line in lines {
            body += line.utf8
            body.append(UInt8(ascii: "\n"))
        }
        return try await publish(body: body, contentType: "application/x-ndjson", topics: topics, client: nil, type: type,
                                 retain: retain, idempotencyKey: idempotencyKey)
    }

    /// Publishes a body of any format Herald reads (`text/plain`, `application/x-ndjson`,
    /// `text/event-stream`, a form).
    public func publish(body: [UInt8], contentType: String, topics: [String], client: String?, type: String?, retain: Bool,
                        idempotencyKey: String?) async throws -> [Int64] {
        var query: [(String, String)] = topics.map { ("topic", $0) }
        if let type { query.append(("type", type)) }
        if retain { query.append(("retain", "1")) }
        let path = (client.map { "/clients/\(Self.escape($0))/events" } ?? "/events") + Self.queryString(query)
        var headers = [("Content-Type", contentType), ("Accept", "application/json")]
        if let publishKey { headers.append(("Authorization", "Bearer \(publishKey)")) }
        if let idempotencyKey { headers.append(("Idempotency-Key", idempotencyKey)) }
        let answer = try await exchange.fetch(method: .POST, path: path, headers: headers, body: body)
        guard answer.status == 200 else { throw Self.refusal(answer.status, answer.body) }
        guard let json = try? JSON.parse(bytes: answer.body), case .array(let items)? = json["ids"] else {
            throw HeraldClientError.protocolError("the server's answer has no ids: \(String(decoding: answer.body.prefix(200), as: UTF8.self))")
        }
        return try items.map { item in
            guard case .string(let text) = item, let id = Int64(text) else { throw HeraldClientError.protocolError("an id is not a number") }
            return id
        }
    }

    // MARK: Subscribing

    /// An event as the subscriber sees it.
    public struct Event: Sendable, Equatable {
        public var id: String
        /// nil for an untyped event (`message`).
        public var type: String?
        public var data: String
    }

    /// What a subscription yields: events, and what the server says about the stream.
    public enum Message: Sendable, Equatable {
        case event(Event)
        /// `herald.hello`: the stream is open (again), with this client token.
        case opened(client: String, resumed: Bool)
        /// `herald.reset`: events after `lastEventID` are no longer in the history; the stream
        /// goes on from the newest id (the client should reload its state).
        case reset(reason: String, lastEventID: String)
        /// `herald.expired`: the subscriber token expired; the stream was closed. With the
        /// same token the next attempt is refused (401), which ends the subscription.
        case expired(exp: String)
        /// The connection was lost; the client reconnects after `delay` seconds.
        case reconnecting(after: Double, reason: String)
    }

    /// Subscribes and keeps subscribing: a dropped stream is reopened with the last id
    /// received (`Last-Event-ID`), after the server's `retry:` hint, or with a backoff (0.5 s
    /// doubling to 30 s) while the server cannot be reached or answers an error. The sequence
    /// ends with an error only when the server refuses the subscriber (401, 403); cancel the
    /// task that iterates it to stop.
    public func subscribe(topics: [String], client: String? = nil, lastEventID: String? = nil) -> AsyncThrowingStream<Message, any Error> {
        AsyncThrowingStream { continuation in
            let task = Task {
                do {
                    try await self.runSubscription(topics: topics, client: client, lastEventID: lastEventID, continuation)
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    private func runSubscription(topics: [String], client: String?, lastEventID: String?,
                                 _ continuation: AsyncThrowingStream<Message, any Error>.Continuation) async throws {
        var query: [(String, String)] = topics.map { ("topic", $0) }
        if let client { query.append(("client", client)) }
        let path = "/events" + Self.queryString(query)
        var lastID = lastEventID
        var retrySeconds = 3.0
        var failures = 0
        while !Task.isCancelled {
            var headers = [("Accept", "text/event-stream"), ("Cache-Control", "no-cache")]
            if let lastID, !lastID.isEmpty { headers.append(("Last-Event-ID", lastID)) }
            if let token { headers.append(("Authorization", "Bearer \(token)")) }
            var status = 0
            var errorBody: [UInt8] = []
            var decoder = SSEDecoder()
            var reason = "the server closed the stream"
            do {
                try await exchange.run(method: .GET, path: path, headers: headers, body: nil, onHead: { head in
                    status = Int(head.status.code)
                }, onBody: { buffer in
                    guard status == 200 else {
                        if errorBody.count < 65_536 { errorBody += buffer.readableBytesView }
                        return true
                    }
                    for message in decoder.decode(buffer.readableBytesView) {
                        switch message {
                        case .retry(let milliseconds):
                            retrySeconds = min(max(Double(milliseconds) / 1000, 0), 600)
                        case .comment:
                            continue
                        case .event(let event):
                            if event.hadIDField { lastID = event.lastEventID }
                            continuation.yield(Self.message(for: event))
                        }
                    }
                    return !Task.isCancelled
                })
            } catch let error as HeraldClientError {
                reason = error.description
            } catch {
                reason = "\(error)"
            }
            if Task.isCancelled { return }
            let delay: Double
            switch status {
            case 200:
                failures = 0
                delay = retrySeconds
            case 401, 403:
                // SPEC §15: only these end a subscription (anything else may pass: a proxy's
                // 404 during a deploy, a 503 while the server is full).
                throw Self.refusal(status, errorBody)
            default:
                if status != 0 { reason = Self.refusal(status, errorBody).description }
                failures += 1
                delay = max(status == 0 ? 0 : retrySeconds, min(30, 0.25 * Double(1 << min(failures, 7))))
            }
            continuation.yield(.reconnecting(after: delay, reason: reason))
            try? await Task.sleep(nanoseconds: UInt64(delay * 1_000_000_000))
        }
    }

    static func message(for event: ReceivedEvent) -> Message {
        let json = { try? JSON.parse(event.data) }
        switch event.type {
        case "herald.hello":
            guard let object = json(), case .string(let client)? = object["client"] else { break }
            return .opened(client: client, resumed: object["resumed"] == .bool(true))
        case "herald.reset":
            let object = json()
            var reason = "", lastEventID = ""
            if case .string(let text)? = object?["reason"] { reason = text }
            if case .string(let text)? = object?["lastEventId"] { lastEventID = text }
            return .reset(reason: reason, lastEventID: lastEventID)
        case "herald.expired":
            if case .number(let exp)? = json()?["exp"] { return .expired(exp: exp) }
            return .expired(exp: "")
        default:
            break
        }
        return .event(Event(id: event.lastEventID, type: event.type == "message" ? nil : event.type, data: event.data))
    }

    // MARK: Helpers

    /// An error answer as a ``HeraldClientError/refused(status:detail:)`` with the problem's detail.
    static func refusal(_ status: Int, _ body: [UInt8]) -> HeraldClientError {
        if let json = try? JSON.parse(bytes: body), case .string(let detail)? = json["detail"] {
            return .refused(status: status, detail: detail)
        }
        let text = String(decoding: body.prefix(300), as: UTF8.self)
        return .refused(status: status, detail: text.isEmpty ? "HTTP \(status)" : text)
    }

    static func queryString(_ items: [(String, String)]) -> String {
        guard !items.isEmpty else { return "" }
        return "?" + items.map { "\(escape($0.0))=\(escape($0.1))" }.joined(separator: "&")
    }

    /// Percent-encodes everything but the unreserved characters (RFC 3986).
    static func escape(_ text: String) -> String {
        var out = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                let hex = Array("0123456789ABCDEF")
                out.append("%")
                out.append(hex[Int(byte >> 4)])
                out.append(hex[Int(byte & 15)])
            }
        }
        return out
    }
}
