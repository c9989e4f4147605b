import HTTPTypes
import NIOCore

extension Responders {
    /// `GET /metrics`: refreshes the gauges that are cheaper to compute on demand and renders
    /// the Prometheus text.
    func metrics(_ request: EndpointRequest) -> EventLoopFuture<EndpointReply> {
        let hub = server.hub
        let metrics = server.metrics
        let render = { @Sendable () -> EndpointReply in
            metrics.streamsOpen.set(Int64(hub.openStreams.load(ordering: .relaxed)))
            metrics.historyEvents.set(Int64(hub.historySize))
            let text = metrics.render()
            var buffer = request.allocator.buffer(capacity: text.count)
            buffer.writeBytes(text)
            return .answer(EndpointAnswer(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"], body: buffer))
        }
        // Counting distinct clients visits every shard's streams: at most once a second,
        // however often /metrics is asked (it needs no authorisation).
        guard metrics.claimClientCount(now: .now()) else {
            return request.eventLoop.makeSucceededFuture(render())
        }
        let futures = hub.shards.map { shard in shard.eventLoop.submit { shard.tokens() } }
        return EventLoopFuture.whenAllComplete(futures, on: request.eventLoop).map { results in
            let tokens = results.compactMap { try? $0.get() }
            metrics.clientsConnected.set(Int64(tokens.reduce(into: Set<String>()) { $0.formUnion($1) }.count))
            return render()
        }
    }
}
