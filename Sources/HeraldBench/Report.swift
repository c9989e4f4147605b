import Foundation
import Histogram

/// The benchmark's findings, as JSON (for bench.sh) and as a summary.
struct Report: Codable {
    struct Latency: Codable {
        var p50: UInt64, p90: UInt64, p99: UInt64, p999: UInt64, max: UInt64, count: UInt64

        init(_ histogram: Histogram<UInt64>) {
            p50 = histogram.valueAtPercentile(50)
            p90 = histogram.valueAtPercentile(90)
            p99 = histogram.valueAtPercentile(99)
            p999 = histogram.valueAtPercentile(99.9)
            max = histogram.max
            count = histogram.totalCount
        }
    }

    var label: String
    var target: String
    var scenario: String
    var streams: Int
    var topics: Int
    var rate: Double
    var duration: Double
    var payloadBytes: Int
    var processes = 1
    /// Ports the streams were spread over, and the port published to (cluster cases).
    var ports: [Int] = []
    var pubPort = 0
    var established = 0
    var failed = 0
    var establishSeconds = 0.0
    var published = 0
    var acknowledged = 0
    var publishFailures = 0
    var deliveries = 0
    var deliverySeconds = 0.0
    var deliveriesPerSecond = 0.0
    var expectedDeliveries = 0
    var missed = 0
    var streamsWithMissed = 0
    var duplicated = 0
    /// Publish-to-receive latency in microseconds.
    var latency: Latency?
    var catchUpSeconds: Double?
    var serverBefore: ProcessStats?
    var serverAfter: ProcessStats?
    var serverCPUSeconds: Double?
    /// Server memory growth per open stream (PSS when available, else RSS), in bytes.
    var memoryPerStreamBytes: Double?
    /// Total server RSS (every node) divided by the open streams, in bytes.
    var rssPerStreamBytes: Double?
    /// capacity: the servers' memory with every stream open, before the publish.
    var serverIdle: ProcessStats?

    init(label: String, target: String, scenario: String, streams: Int, topics: Int, rate: Double, duration: Double, payloadBytes: Int) {
        self.label = label
        self.target = target
        self.scenario = scenario
        self.streams = streams
        self.topics = topics
        self.rate = rate
        self.duration = duration
        self.payloadBytes = payloadBytes
    }

    mutating func computeMemory() {
        guard let before = serverBefore, let after = serverAfter, established > 0 else { return }
        let usePSS = before.pssKiB > 0 && after.pssKiB > 0
        let delta = usePSS ? after.pssKiB - before.pssKiB : after.rssKiB - before.rssKiB
        memoryPerStreamBytes = Double(delta) * 1024 / Double(established)
        rssPerStreamBytes = Double(after.rssKiB) * 1024 / Double(established)
    }

    var summary: String {
        var lines = ["[\(target)] \(scenario): \(established)/\(streams) streams up in \(fmt(establishSeconds)) s, \(failed) failed"]
        if let memoryPerStreamBytes, let after = serverAfter {
            lines.append("  server memory: \(after.pssKiB) KiB PSS, \(after.rssKiB) KiB RSS; \(fmt(memoryPerStreamBytes, 0)) bytes per stream (growth), \(fmt(rssPerStreamBytes ?? 0, 0)) RSS/stream")
        }
        if scenario != "idle" && published > 0 {
            lines.append("  published \(published) (\(acknowledged) acknowledged), \(deliveries) deliveries in \(fmt(deliverySeconds)) s = \(fmt(deliveriesPerSecond, 0))/s")
            lines.append("  missed \(missed) of \(expectedDeliveries) (\(streamsWithMissed) streams), duplicated \(duplicated)")
            if let latency {
                lines.append("  latency µs: p50 \(latency.p50)  p90 \(latency.p90)  p99 \(latency.p99)  p99.9 \(latency.p999)  max \(latency.max)")
            }
            if let serverCPUSeconds { lines.append("  server CPU: \(fmt(serverCPUSeconds)) s") }
            if let catchUpSeconds { lines.append("  reconnect catch-up: \(fmt(catchUpSeconds)) s") }
        }
        return lines.joined(separator: "\n")
    }
}
