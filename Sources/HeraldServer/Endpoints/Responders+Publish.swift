import HTTPTypes
import HeraldCore
import NIOCore

extension Responders {
    /// `POST /events` and `POST /clients/{token}/events` (SPEC §2, §3). Authorisation was
    /// decided from the head, before the body was read.
    func publish(_ request: EndpointRequest, route: Route) throws -> EventLoopFuture<EndpointReply> {
        let token = try Self.directToken(of: route)
        let plan = try planPublish(request, directTo: token)
        let server = self.server
        return server.hub.publish(plan.drafts, client: token, retain: plan.retain, idempotencyKey: plan.idempotencyKey, on: request.eventLoop)
            .map { outcome -> EndpointReply in .answer(self.published(outcome, request)) }
            .flatMapErrorThrowing { error in
                // Not stored, so not published: nobody saw it, and the publisher may retry.
                // The cause is logged; the answer carries no internal error text.
                // The store logs the cause (once per outage for a cluster's database).
                server.logger.debug("publish not stored", metadata: ["error": "\(error)"])
                return .answer(self.notStored(request, route: route))
            }
    }

    /// The client token a publish route sends to (checked), or nil for `POST /events`. Both
    /// paths read the route through it.
    static func directToken(of route: Route) throws -> String? {
        guard case .clientEvents(let token) = route else { return nil }
        try validate(token: token)
        return token
    }

    /// `503`: the store did not take the batch, so nothing was published.
    private func notStored(_ request: EndpointRequest, route: Route) -> EndpointAnswer {
        problem(Problem(.serviceUnavailable, "the event store could not take the events, so nothing was published; retry",
                        headers: [("Retry-After", "1")]), request, route: route)
    }

    /// What the publish fast path gets for a publish.
    enum InlinePublish {
        /// Not published (a bad query, body or token): the answer to send.
        case refused(EndpointAnswer)
        /// Committed and visible; ``published(_:_:)`` gives the answer.
        case committed(Hub.PublishOutcome)
    }

    /// ``publish(_:route:)`` without futures, for the publish fast path, which is installed
    /// only for a store that commits inline (``EventStore/commitsInline``) and never takes a
    /// request with an `Idempotency-Key` (``PlainPostRequest`` leaves those to the general
    /// path). The route, checks and answer are the general path's (``directToken(of:)``,
    /// ``planPublish(_:directTo:)``, ``published(_:_:)``); the answer of a committed publish
    /// is left to the caller, which first hands the events to its own loop's few subscribers.
    ///
    /// Why: at 1000 single-event publishes/s, the chain of four futures per publish was ~5 %
    /// of the server's samples (allocations, generic metadata look-ups, callbacks).
    func publishInline(_ request: EndpointRequest, route: Route) -> InlinePublish {
        do {
            let token = try Self.directToken(of: route)
            let plan = try planPublish(request, directTo: token)
            guard plan.idempotencyKey == nil,
                  let outcome = server.hub.publishInline(plan.drafts, client: token, retain: plan.retain)
            else {
                // Unreachable (see above); should it happen, nothing is published and the
                // publisher is told to retry, as after a failed commit.
                assertionFailure("the publish fast path took a request it cannot publish inline")
                return .refused(notStored(request, route: route))
            }
            return .committed(outcome)
        } catch {
            return .refused(answer(for: error, request, route: route))
        }
    }

    /// The `200` answer of a committed publish: its ids, as JSON (`{"ids":["<id>",...]}`).
    func published(_ outcome: Hub.PublishOutcome, _ request: EndpointRequest) -> EndpointAnswer {
        var headers = HTTPFields()
        headers.append(server.corsHeaders(origin: request.origin, scope: .restricted))
        if outcome.repeated { headers[.idempotentReplayed] = "true" }
        headers[.contentType] = "application/json"
        return EndpointAnswer(status: .ok, headers: headers, body: Self.idsDocument(outcome.ids, allocator: request.allocator))
    }

    /// `{"ids":["1","2"]}` and a newline, what `EndpointAnswer.json` makes of the same
    /// `JSONValue`, written straight from the digits: every publish answers with one, and
    /// building it through `JSONValue` and `String` was 4 % of a low-rate publish's samples.
    static func idsDocument(_ ids: [Int64], allocator: ByteBufferAllocator) -> ByteBuffer {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(11 + ids.count * 23)
        bytes.append(contentsOf: #"{"ids":["#.utf8)
        for (index, id) in ids.enumerated() {
            if index > 0 { bytes.append(UInt8(ascii: ",")) }
            bytes.append(UInt8(ascii: "\""))
            SSEEncoder.appendDecimal(id, to: &bytes)
            bytes.append(UInt8(ascii: "\""))
        }
        bytes.append(contentsOf: "]}\n".utf8)
        return allocator.buffer(bytes: bytes)
    }

    struct PublishPlan {
        var drafts: [EventDraft]
        var retain: Bool
        var idempotencyKey: String?
    }

    /// A publish's query, headers and body read and checked: what to publish, or the
    /// `Problem` that refuses it. Counts the request in `herald_publish_requests_total`.
    private func planPublish(_ request: EndpointRequest, directTo token: String?) throws -> PublishPlan {
        let query = try request.queryItems()
        var topics: [String] = []
        var type: String?
        var retain = false
        for (name, value) in query {
            switch name {
            case "topic":
                if token != nil { continue }
                do { try TopicRules.validate(topic: value, forSubscription: false) } catch { throw Problem(.badRequest, "query parameter 'topic': \(error.detail)") }
                if !topics.contains(where: { $0.bytesEqual(value) }) { topics.append(value) }
            case "type":
                if type != nil { throw Problem(.badRequest, "query parameter 'type' is given twice") }
                type = value
            case "retain":
                switch value.lowercased() {
                case "1", "true": retain = true
                case "0", "false", "": retain = false
                default: throw Problem(.badRequest, "retain must be 1/true or 0/false, not '\(value.prefix(20))'")
                }
            default:
                continue
            }
        }
        if topics.count > TopicRules.maxTopicsPerRequest {
            throw Problem(.badRequest, "\(topics.count) topics; at most \(TopicRules.maxTopicsPerRequest) per request")
        }
        var idempotencyKey: String?
        if let key = request.header(.idempotencyKey) {
            guard !key.isEmpty, key.utf8.count <= 256, key.unicodeScalars.allSatisfy({ $0.value >= 0x21 && $0.value <= 0x7E || $0 == " " }) else {
                throw Problem(.badRequest, "Idempotency-Key must be 1 to 256 printable ASCII characters")
            }
            idempotencyKey = key
        }
        let parser = PublishParser(queryTopics: topics, queryType: type, isDirect: token != nil, maxEventBytes: configuration.maxEventBytes)
        let bodyBytes = request.body.map { Array($0.readableBytesView) } ?? []
        let drafts: [EventDraft]
        do {
            drafts = try parser.parse(body: bodyBytes, contentType: request.header(.contentType))
        } catch {
            throw Problem.from(error)
        }
        server.metrics.publishRequests.increment()
        return PublishPlan(drafts: drafts, retain: retain, idempotencyKey: idempotencyKey)
    }

    /// `DELETE /events?topic=T` (SPEC §16): clears T's retained event; `204`, or `404` when it
    /// has none. Authorised like publishing (decided from the head).
    func clearRetained(_ request: EndpointRequest, route: Route) throws -> EventLoopFuture<EndpointReply> {
        var topic: String?
        for (name, value) in try request.queryItems() where name == "topic" {
            if topic != nil { throw Problem(.badRequest, "give one 'topic' whose retained event to clear, not several") }
            do { try TopicRules.validate(topic: value, forSubscription: false) } catch { throw Problem(.badRequest, "topic: \(error.detail)") }
            topic = value
        }
        guard let topic else {
            throw Problem(.badRequest, "name the topic whose retained event to clear: DELETE /events?topic=NAME")
        }
        let server = self.server
        return server.hub.clearRetained(topic: topic, on: request.eventLoop)
            .map { cleared -> EndpointReply in
                guard cleared else {
                    return .answer(self.problem(Problem(.notFound, "topic '\(topic.prefix(200))' has no retained event"), request, route: route))
                }
                var headers = HTTPFields()
                headers.append(server.corsHeaders(origin: request.origin, scope: .restricted))
                return .answer(EndpointAnswer(status: .noContent, headers: headers, body: nil))
            }
            .flatMapErrorThrowing { error in
                server.logger.error("clearing a retained event failed", metadata: ["error": "\(error)"])
                return .answer(self.problem(Problem(.serviceUnavailable, "the store could not clear the retained event; retry",
                                                    headers: [("Retry-After", "1")]), request, route: route))
            }
    }
}
