import HTTPTypes
import HeraldCore
import NIOCore

extension Responders {
    /// `GET /poll` (SPEC §4): the long-polling fallback for clients without EventSource.
    /// Same topic, client and resume rules as `/events`, any `Accept`; answers with the
    /// events after the resume position as soon as there are some, or empty at `timeout`.
    /// A poll whose client goes away (``RequestScope/cancel()``) stops waiting at once.
    func longPoll(_ request: EndpointRequest, scope: RequestScope) throws -> EventLoopFuture<EndpointReply> {
        var subscription = try parseSubscription(request)
        // A poll is answered within 60 s, so an expiry during it is not enforced (the next
        // poll is checked again).
        _ = try authorizeSubscriber(request, &subscription)
        var timeoutSeconds = 25
        for (name, value) in try request.queryItems() where name == "timeout" {
            guard let seconds = HTTPNumber.parse(value, maximum: 60) else {
                throw Problem(.badRequest, "timeout must be a whole number of seconds from 0 to 60, not '\(value.prefix(20))'")
            }
            timeoutSeconds = seconds
        }
        try acquireConnectionSlot()
        let hub = server.hub
        var headers = HTTPFields()
        headers.append(server.corsHeaders(origin: request.origin, scope: .open))
        headers[.cacheControl] = "no-store"
        let promise = request.eventLoop.makePromise(of: EndpointReply.self)
        let shard = hub.shard(for: request.eventLoop)
        let waiter = shard.poll(
            .init(filter: subscription.filter, lastEventID: subscription.lastEventID, timeout: .seconds(Int64(timeoutSeconds)))
        ) { events, lastEventID, reset in
            hub.openStreams.wrappingDecrement(ordering: .relaxed)
            let json = Self.pollJSON(events, lastEventID: lastEventID, reset: reset, filter: subscription.filter)
            promise.succeed(.answer(.json(json, headers: headers, allocator: request.allocator)))
        }
        scope.whenCancelled {
            guard !waiter.isDone else { return }
            shard.cancel(waiter)
            hub.openStreams.wrappingDecrement(ordering: .relaxed)
            promise.fail(ChannelError.ioOnClosedChannel)
        }
        return promise.futureResult
    }

    static func pollJSON(_ events: [StoredEvent], lastEventID: Int64, reset: Bool, filter: TopicFilter) -> JSONValue {
        let items: [JSONValue] = events.map { event in
            // The topic it reached this subscriber by (the first that matches), null for a
            // direct message.
            let topic = event.client == nil ? (event.topics.first(where: { filter.matches(topic: $0) }) ?? event.topics.first) : nil
            return .object([
                ("id", .string(String(event.id))), ("type", .stringOrNull(event.type)),
                ("data", .string(event.data)), ("topic", .stringOrNull(topic)),
            ])
        }
        return .object([("events", .array(items)), ("lastEventId", .string(String(lastEventID))), ("reset", .bool(reset))])
    }
}
