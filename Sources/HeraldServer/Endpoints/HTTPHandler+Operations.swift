import NIOCore
import NIOHTTP1

extension HTTPHandler {
    /// `GET /metrics`: refreshes the gauges that are cheaper to compute on demand (distinct
    /// clients need every shard's tokens) and renders the Prometheus text.
    func serveMetrics(context: ChannelHandlerContext, request: HTTPRequestHead) {
        let hub = server.hub
        let metrics = server.metrics
        let render = {
            metrics.streamsOpen.set(Int64(hub.openStreams.load(ordering: .relaxed)))
            metrics.historyEvents.set(Int64(hub.historySize))
            let text = metrics.render()
            var buffer = context.channel.allocator.buffer(capacity: text.count)
            buffer.writeBytes(text)
            self.respond(context: context, request: request, status: .ok,
                         headers: [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")], body: buffer)
        }
        // Counting distinct clients visits every shard's streams: at most once a second,
        // however often /metrics is asked (it needs no authorisation).
        guard metrics.claimClientCount(now: .now()) else {
            render()
            return
        }
        let futures = hub.shards.map { shard in shard.eventLoop.submit { shard.tokens() } }
        EventLoopFuture.whenAllSucceed(futures, on: context.eventLoop).assumeIsolated().whenComplete { result in
            let tokens = (try? result.get()) ?? []
            metrics.clientsConnected.set(Int64(tokens.reduce(into: Set<String>()) { $0.formUnion($1) }.count))
            render()
        }
    }
}
