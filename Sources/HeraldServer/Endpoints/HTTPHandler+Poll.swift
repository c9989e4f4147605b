import HeraldCore
import NIOCore
import NIOHTTP1

extension HTTPHandler {
    /// `GET /poll` (SPEC §4): the long-polling fallback for clients without EventSource.
    /// Same topic, client and resume rules as `/events`, any `Accept`; answers with the
    /// events after the resume position as soon as there are some, or empty at `timeout`.
    func longPoll(context: ChannelHandlerContext, request: HTTPRequestHead) throws {
        let subscription = try parseSubscription(request)
        var timeoutSeconds = 25
        for (name, value) in try queryItems(request) where name == "timeout" {
            guard let seconds = HTTPNumber.parse(value, maximum: 60) else {
                throw Problem(.badRequest, "timeout must be a whole number of seconds from 0 to 60, not '\(value.prefix(20))'")
            }
            timeoutSeconds = seconds
        }
        try acquireConnectionSlot()
        let hub = server.hub
        let cors = server.corsHeaders(origin: request.headers.first(name: "origin"), scope: .open)
        var answered = false
        let waiter = hub.shard(for: context.eventLoop).poll(
            .init(filter: subscription.filter, lastEventID: subscription.lastEventID, timeout: .seconds(Int64(timeoutSeconds)))
        ) { [weak self] events, lastEventID, reset in
            answered = true
            hub.openStreams.wrappingDecrement(ordering: .relaxed)
            guard let self else { return }
            self.pollWaiter = nil
            let json = Self.pollJSON(events, lastEventID: lastEventID, reset: reset, filter: subscription.filter)
            self.respondJSON(context: context, request: request, status: .ok, json: json,
                             headers: cors + [("Cache-Control", "no-store")])
        }
        if !answered { pollWaiter = waiter }
    }

    /// Drops a poll that is still waiting when its connection closes.
    func cancelPoll(context: ChannelHandlerContext) {
        guard let waiter = pollWaiter else { return }
        pollWaiter = nil
        guard !waiter.isDone else { return }
        server.hub.shard(for: context.eventLoop).cancel(waiter)
        server.hub.openStreams.wrappingDecrement(ordering: .relaxed)
    }

    static func pollJSON(_ events: [StoredEvent], lastEventID: Int64, reset: Bool, filter: TopicFilter) -> String {
        let items: [JSONValue] = events.map { event in
            // The topic it reached this subscriber by (the first that matches), null for a
            // direct message.
            let topic = event.client == nil ? (event.topics.first(where: { filter.matches(topic: $0) }) ?? event.topics.first) : nil
            return .object([
                ("id", .string(String(event.id))), ("type", .stringOrNull(event.type)),
                ("data", .string(event.data)), ("topic", .stringOrNull(topic)),
            ])
        }
        return JSONValue.object([
            ("events", .array(items)), ("lastEventId", .string(String(lastEventID))), ("reset", .bool(reset)),
        ]).compactText
    }
}
