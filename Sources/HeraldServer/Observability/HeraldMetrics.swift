import NIOConcurrencyHelpers
import NIOCore
import Prometheus

/// The metric handles, created once per server on its own Prometheus registry (so several
/// servers in one test process do not share counters, and no global bootstrap is needed).
///
/// Hot paths add to counters once per delivery batch, not once per stream.
final class HeraldMetrics: Sendable {
    let registry: PrometheusCollectorRegistry
    let streamsOpen: Gauge
    let clientsConnected: Gauge
    let eventsPublished: Counter
    let eventsDelivered: Counter
    let bytesSent: Counter
    let historyEvents: Gauge
    let slowConsumerDisconnects: Counter
    let replays: Counter
    let resets: Counter
    let publishRequests: Counter
    /// Publish requests read and answered by the HTTP/1.1 fast path (``PublishFastPath``).
    let fastPathRequests: Counter
    let rejectedRequests: Counter
    /// When distinct clients were last counted (see ``claimClientCount(now:)``).
    private let clientsCountedAt = NIOLockedValueBox<NIODeadline?>(nil)

    /// Whether a `/metrics` request at `now` should count distinct clients afresh: at most
    /// once a second, because counting visits every stream of every shard.
    func claimClientCount(now: NIODeadline) -> Bool {
        clientsCountedAt.withLockedValue { last in
            if let last, now - last < .seconds(1) { return false }
            last = now
            return true
        }
    }

    init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        streamsOpen = registry.makeGauge(descriptor: .init(namespace: "herald", metricName: "streams_open", unitName: "", helpText: "Event streams currently open."))
        clientsConnected = registry.makeGauge(descriptor: .init(namespace: "herald", metricName: "clients_connected", unitName: "", helpText: "Distinct client tokens with at least one open stream."))
        eventsPublished = registry.makeCounter(descriptor: .init(namespace: "herald", metricName: "events_published", unitName: "total", helpText: "Events accepted into the history."))
        eventsDelivered = registry.makeCounter(descriptor: .init(namespace: "herald", metricName: "events_delivered", unitName: "total", helpText: "Event deliveries to streams (live and replayed)."))
        bytesSent = registry.makeCounter(descriptor: .init(namespace: "herald", metricName: "bytes_sent", unitName: "total", helpText: "Event bytes written to streams."))
        historyEvents = registry.makeGauge(descriptor: .init(namespace: "herald", metricName: "history_events", unitName: "", helpText: "Events held in the history ring."))
        slowConsumerDisconnects = registry.makeCounter(descriptor: .init(namespace: "herald", metricName: "slow_consumer_disconnects", unitName: "total", helpText: "Streams closed because their unsent output exceeded --max-queued-bytes."))
        replays = registry.makeCounter(descriptor: .init(namespace: "herald", metricName: "replays", unitName: "total", helpText: "Streams resumed from a Last-Event-ID."))
        resets = registry.makeCounter(descriptor: .init(namespace: "herald", metricName: "resets", unitName: "total", helpText: "herald.reset events sent (unknown or truncated Last-Event-ID)."))
        publishRequests = registry.makeCounter(descriptor: .init(namespace: "herald", metricName: "publish_requests", unitName: "total", helpText: "Publish requests answered with 200."))
        fastPathRequests = registry.makeCounter(descriptor: .init(namespace: "herald", metricName: "publish_fast_path_requests", unitName: "total", helpText: "Publish requests read and answered by the HTTP/1.1 fast path (a subset of all requests)."))
        rejectedRequests = registry.makeCounter(descriptor: .init(namespace: "herald", metricName: "http_errors", unitName: "total", helpText: "Requests answered with a 4xx or 5xx status."))
    }

    /// The Prometheus text exposition.
    func render() -> [UInt8] {
        var bytes: [UInt8] = []
        registry.emit(into: &bytes)
        return bytes
    }
}
