import HeraldCore
import NIOCore
import NIOHTTP1

extension HTTPHandler {
    /// `POST /events` and `POST /clients/{token}/events` (SPEC §2, §3). Authorisation was
    /// checked when the head arrived.
    func publish(context: ChannelHandlerContext, request: HTTPRequestHead, directTo token: String?) throws {
        let query = try queryItems(request)
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
        if let key = request.headers.first(name: "idempotency-key") {
            guard !key.isEmpty, key.utf8.count <= 256, key.unicodeScalars.allSatisfy({ $0.value >= 0x21 && $0.value <= 0x7E || $0 == " " }) else {
                throw Problem(.badRequest, "Idempotency-Key must be 1 to 256 printable ASCII characters")
            }
            idempotencyKey = key
        }
        let parser = PublishParser(queryTopics: topics, queryType: type, isDirect: token != nil, maxEventBytes: configuration.maxEventBytes)
        let bodyBytes = body.map { Array($0.readableBytesView) } ?? []
        let drafts: [EventDraft]
        do {
            drafts = try parser.parse(body: bodyBytes, contentType: request.headers.first(name: "content-type"))
        } catch {
            throw Problem.from(error)
        }
        server.metrics.publishRequests.increment()
        let origin = request.headers.first(name: "origin")
        server.hub.publish(drafts, client: token, retain: retain, idempotencyKey: idempotencyKey, on: context.eventLoop)
            .assumeIsolated().whenComplete { result in
                switch result {
                case .success(let outcome):
                    let json = JSONValue.object([("ids", .array(outcome.ids.map { .string(String($0)) }))]).compactText
                    var headers = self.server.corsHeaders(origin: origin, scope: .restricted)
                    if outcome.repeated { headers.append(("Idempotent-Replayed", "true")) }
                    self.respondJSON(context: context, request: request, status: .ok, json: json, headers: headers)
                case .failure(let error):
                    // Not durable, so not published: nobody saw it, and the publisher may retry.
                    // The cause is logged; the answer does not carry internal error text.
                    self.server.logger.error("publish not stored", metadata: ["error": "\(error)"])
                    self.sendProblem(
                        Problem(.serviceUnavailable, "the event store could not take the events, so nothing was published; retry",
                                headers: [("Retry-After", "1")]),
                        context: context, request: request)
                }
            }
    }
}

extension HTTPHandler {
    /// `DELETE /events?topic=T` (SPEC §16): clears T's retained event; `204`, or `404` when
    /// it has none. Authorised like publishing (checked when the head arrived).
    func clearRetained(context: ChannelHandlerContext, request: HTTPRequestHead) throws {
        var topic: String?
        for (name, value) in try queryItems(request) where name == "topic" {
            if topic != nil { throw Problem(.badRequest, "give one 'topic' whose retained event to clear, not several") }
            do { try TopicRules.validate(topic: value, forSubscription: false) } catch { throw Problem(.badRequest, "topic: \(error.detail)") }
            topic = value
        }
        guard let topic else {
            throw Problem(.badRequest, "name the topic whose retained event to clear: DELETE /events?topic=NAME")
        }
        let origin = request.headers.first(name: "origin")
        server.hub.clearRetained(topic: topic, on: context.eventLoop).assumeIsolated().whenComplete { result in
            switch result {
            case .success(true):
                self.respond(context: context, request: request, status: .noContent,
                             headers: self.server.corsHeaders(origin: origin, scope: .restricted), body: nil)
            case .success(false):
                self.sendProblem(Problem(.notFound, "topic '\(topic.prefix(200))' has no retained event"), context: context, request: request)
            case .failure(let error):
                self.server.logger.error("clearing a retained event failed", metadata: ["error": "\(error)"])
                self.sendProblem(Problem(.serviceUnavailable, "the store could not clear the retained event; retry",
                                         headers: [("Retry-After", "1")]), context: context, request: request)
            }
        }
    }
}
