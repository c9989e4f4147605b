import HeraldCore
import NIOCore
import NIOHTTP1

extension HTTPHandler {
    /// The subscription parameters shared by `/events` and `/poll`.
    struct Subscription {
        var topics: [String]
        var token: String?
        var lastEventID: String?
        var paddingBytes: Int?
        var filter: TopicFilter
    }

    /// Parses and validates topics, client token, resume id (header first, then the query
    /// spellings) and padding; throws a 400 problem naming the fault.
    func parseSubscription(_ request: HTTPRequestHead) throws -> Subscription {
        var topics: [String] = []
        var token: String?
        var queryLastEventID: String?
        var paddingBytes: Int?
        for (name, value) in try queryItems(request) {
            switch name {
            case "topic":
                do { try TopicRules.validate(topic: value, forSubscription: true) } catch { throw Problem(.badRequest, "topic: \(error.detail)") }
                if !topics.contains(where: { $0.bytesEqual(value) }) { topics.append(value) }
            case "client":
                if token != nil { throw Problem(.badRequest, "give one 'client' token, not several") }
                try validateToken(value)
                token = value
            case "lastEventId", "last_event_id", "evs_last_event_id":
                if queryLastEventID == nil && !value.isEmpty { queryLastEventID = value }
            case "padding":
                switch value.lowercased() {
                case "1", "true": paddingBytes = max(paddingBytes ?? 0, 2048)
                case "0", "false", "": break
                default: throw Problem(.badRequest, "padding must be 1/true or 0/false, not '\(value.prefix(20))'")
                }
            case "evs_preamble":
                let asked = HTTPNumber.parse(value).map { min($0, 65_536) } ?? 2048
                paddingBytes = max(paddingBytes ?? 0, 2048, min(asked, 65_536))
            default:
                continue
            }
        }
        if topics.count > TopicRules.maxTopicsPerRequest {
            throw Problem(.badRequest, "\(topics.count) topics; at most \(TopicRules.maxTopicsPerRequest) per subscription")
        }
        if topics.isEmpty && token == nil {
            throw Problem(.badRequest, "subscribe to at least one topic (?topic=NAME, 'prefix/*' or '*') or give a client token (?client=TOKEN)")
        }
        var lastEventID = queryLastEventID
        if let header = request.headers.first(name: "last-event-id"), !header.isEmpty {
            lastEventID = header
        }
        return Subscription(topics: topics, token: token, lastEventID: lastEventID, paddingBytes: paddingBytes,
                            filter: TopicFilter(patterns: topics, clientToken: token))
    }

    /// Counts one more open stream or waiting poll against `--max-connections` (503 when full).
    func acquireConnectionSlot() throws {
        let hub = server.hub
        let limit = server.maxConnections
        if hub.openStreams.wrappingIncrementThenLoad(ordering: .relaxed) > limit {
            hub.openStreams.wrappingDecrement(ordering: .relaxed)
            throw Problem(.serviceUnavailable, "the server holds its maximum of \(limit) streams; retry later",
                          headers: [("Retry-After", "5")])
        }
    }

    /// `GET /events` (SPEC §1): validate, then turn the connection into a stream.
    func subscribe(context: ChannelHandlerContext, request: HTTPRequestHead) throws {
        guard AcceptNegotiation.acceptsEventStream(request.headers[canonicalForm: "accept"].map(String.init)) else {
            throw Problem(.notAcceptable,
                          "this endpoint only serves text/event-stream; send 'Accept: text/event-stream' (with curl: -N -H 'Accept: text/event-stream')")
        }
        let subscription = try parseSubscription(request)
        try acquireConnectionSlot()
        let hub = server.hub

        let chunked = !configuration.noChunked && !(request.version.major == 1 && request.version.minor == 0)
        let clientToken = subscription.token ?? Self.randomToken()
        var headers = HTTPHeaders([
            ("Content-Type", "text/event-stream; charset=utf-8"), ("Cache-Control", "no-store, no-transform"),
            ("X-Accel-Buffering", "no"),
        ])
        headers.add(name: chunked ? "Transfer-Encoding" : "Connection", value: chunked ? "chunked" : "close")
        for (name, value) in server.corsHeaders(origin: request.headers.first(name: "origin"), scope: .open) {
            headers.add(name: name, value: value)
        }
        let streamRequest = Shard.StreamRequest(
            token: clientToken, topics: subscription.topics, filter: subscription.filter,
            lastEventID: subscription.lastEventID, paddingBytes: subscription.paddingBytes, chunked: chunked,
            retryMilliseconds: configuration.retryMilliseconds, direct: true)
        state = .streaming
        // The head goes through the HTTP encoder; the stream's own bytes then follow it
        // straight to the socket (they are framed by Herald, see StoredEvent).
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
        let start: () -> Void
        do {
            start = try hub.shard(for: context.eventLoop).open(streamRequest, httpContext: context)
        } catch {
            hub.openStreams.wrappingDecrement(ordering: .relaxed)
            server.logger.debug("could not open stream", metadata: ["error": "\(error)"])
            context.close(promise: nil)
            return
        }
        start()
        // The HTTP handlers are not needed any more; remove them after this read has unwound.
        let pipeline = context.pipeline
        let handlers = self.handlers
        context.eventLoop.assumeIsolated().execute {
            handlers.remove(from: pipeline, with: self)
        }
    }

    /// A random 128-bit token, hex encoded (valid under the client token rules).
    static func randomToken() -> String {
        var generator = SystemRandomNumberGenerator()
        let high = generator.next() as UInt64
        let low = generator.next() as UInt64
        func hex(_ value: UInt64) -> String {
            let text = String(value, radix: 16)
            return String(repeating: "0", count: 16 - text.count) + text
        }
        return hex(high) + hex(low)
    }
}
