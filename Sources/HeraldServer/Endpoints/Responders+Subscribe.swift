import HTTPTypes
import HeraldCore
import NIOCore

extension Responders {
    /// The subscription parameters shared by `/events` and `/poll`.
    struct Subscription {
        var topics: [String]
        var token: String?
        var lastEventID: String?
        var paddingBytes: Int?
        var filter: TopicFilter
        /// `access_token` in the query (SPEC §14: for EventSource, which cannot send headers).
        var accessToken: String?
    }

    /// Parses and validates topics, client token, resume id (header first, then the query
    /// spellings) and padding; throws a 400 problem naming the fault.
    func parseSubscription(_ request: EndpointRequest) throws -> Subscription {
        var topics: [String] = []
        var token: String?
        var queryLastEventID: String?
        var paddingBytes: Int?
        var accessToken: String?
        for (name, value) in try request.queryItems() {
            switch name {
            case "access_token":
                if accessToken == nil { accessToken = value }
            case "topic":
                do { try TopicRules.validate(topic: value, forSubscription: true) } catch { throw Problem(.badRequest, "topic: \(error.detail)") }
                if !topics.contains(where: { $0.bytesEqual(value) }) { topics.append(value) }
            case "client":
                if token != nil { throw Problem(.badRequest, "give one 'client' token, not several") }
                try Self.validate(token: value)
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
        var lastEventID = queryLastEventID
        if let header = request.header(.lastEventID), !header.isEmpty {
            lastEventID = header
        }
        return Subscription(topics: topics, token: token, lastEventID: lastEventID, paddingBytes: paddingBytes,
                            filter: TopicFilter(patterns: topics, clientToken: token), accessToken: accessToken)
    }

    /// SPEC §14: checks the subscriber's token against its topics and client token (a
    /// ``Problem`` 401/403 when refused). The token's `sub` becomes the client token when the
    /// request names none. Returns when the token expires (nil: no token, or open mode).
    func authorizeSubscriber(_ request: EndpointRequest, _ subscription: inout Subscription) throws -> Double? {
        let token = Self.subscriberToken(request, queryToken: subscription.accessToken)
        let access = server.authorizer.subscriber(
            token: token, topics: subscription.topics, client: subscription.token, now: WallClock.secondsSince1970())
        switch access {
        case .failure(let problem):
            throw problem
        case .success(let access):
            if subscription.token == nil, let derived = access.clientToken {
                subscription.token = derived
                subscription.filter = TopicFilter(patterns: subscription.topics, clientToken: derived)
            }
            // Checked after authorisation rather than when parsing: a token's `sub` can be
            // the client token.
            if subscription.topics.isEmpty && subscription.token == nil {
                throw Problem(.badRequest, "subscribe to at least one topic (?topic=NAME, 'prefix/*' or '*') or give a client token (?client=TOKEN)")
            }
            return access.expires
        }
    }

    /// The subscriber's token: `Authorization: Bearer`, else the cookie `herald_token`, else
    /// the query's `access_token`; the first one present is the token.
    static func subscriberToken(_ request: EndpointRequest, queryToken: String?) -> Substring? {
        if let authorization = request.header(.authorization) {
            // Present, it is the token, usable or not: a bad one is not rescued by a cookie.
            let parts = authorization.split(maxSplits: 1, omittingEmptySubsequences: true, whereSeparator: { $0 == " " || $0 == "\t" })
            guard parts.count == 2, parts[0].lowercased() == "bearer" else { return "" }
            return Substring(parts[1].trimmingSpaces())
        }
        for header in request.headers(.cookie) {
            for pair in header.split(separator: ";") {
                let trimmed = pair.trimmingSpaces()
                guard trimmed.hasPrefix("herald_token=") else { continue }
                var value = Substring(trimmed).dropFirst("herald_token=".count)
                if value.count >= 2, value.first == "\"", value.last == "\"" { value = value.dropFirst().dropLast() }
                return value
            }
        }
        return queryToken.map { Substring($0) }
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

    /// `GET /events` (SPEC §1): validates, takes a connection slot, and answers "open a
    /// stream" with its parameters and response headers; the transport opens it (and gives
    /// the slot back if it cannot).
    func subscribe(_ request: EndpointRequest) throws -> EventLoopFuture<EndpointReply> {
        guard AcceptNegotiation.acceptsEventStream(request.headers(.accept)) else {
            throw Problem(.notAcceptable,
                          "this endpoint only serves text/event-stream; send 'Accept: text/event-stream' (with curl: -N -H 'Accept: text/event-stream')")
        }
        var subscription = try parseSubscription(request)
        let expires = try authorizeSubscriber(request, &subscription)
        try acquireConnectionSlot()
        let chunked = !configuration.noChunked && !request.streamsCloseDelimited
        var headers: HTTPFields = [
            .contentType: "text/event-stream; charset=utf-8", .cacheControl: "no-store, no-transform", .xAccelBuffering: "no",
        ]
        headers.append(server.corsHeaders(origin: request.origin, scope: .open))
        let stream = Shard.StreamRequest(
            token: subscription.token ?? Self.randomToken(), topics: subscription.topics, filter: subscription.filter,
            lastEventID: subscription.lastEventID, paddingBytes: subscription.paddingBytes, chunked: chunked,
            retryMilliseconds: configuration.retryMilliseconds, direct: true, expires: expires)
        return request.eventLoop.makeSucceededFuture(.stream(stream, headers: headers))
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
