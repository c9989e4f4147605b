import HTTPTypes
import HeraldCore
import NIOCore

extension Responders {
    /// `POST /events` and `POST /clients/{token}/events` (SPEC §2, §3). Authorisation was
    /// decided from the head, before the body was read.
    func publish(_ request: EndpointRequest, route: Route, directTo token: String?) throws -> EventLoopFuture<EndpointReply> {
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
        let server = self.server
        return server.hub.publish(drafts, client: token, retain: retain, idempotencyKey: idempotencyKey, on: request.eventLoop)
            .map { outcome -> EndpointReply in
                var headers = HTTPFields()
                headers.append(server.corsHeaders(origin: request.origin, scope: .restricted))
                if outcome.repeated { headers[.idempotentReplayed] = "true" }
                let ids = JSONValue.object([("ids", .array(outcome.ids.map { .string(String($0)) }))])
                return .answer(.json(ids, headers: headers, allocator: request.allocator))
            }
            .flatMapErrorThrowing { error in
                // Not stored, so not published: nobody saw it, and the publisher may retry.
                // The cause is logged; the answer carries no internal error text.
                // The store logs the cause (once per outage for a cluster's database).
                server.logger.debug("publish not stored", metadata: ["error": "\(error)"])
                return .answer(self.problem(
                    Problem(.serviceUnavailable, "the event store could not take the events, so nothing was published; retry",
                            headers: [("Retry-After", "1")]), request, route: route))
            }
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
