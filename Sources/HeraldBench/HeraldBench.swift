import ArgumentParser
import Foundation
import Histogram
import NIOCore
import NIOPosix

/// `herald-bench`: the project's load tool. Opens N SSE streams against any SSE server,
/// publishes at a fixed rate with the send time in each event, and reports streams
/// established, deliveries/s, missed and duplicated events, publish-to-receive latency
/// percentiles, and the server's memory and CPU from /proc. JSON for scripts, a summary for
/// people.
@main
struct HeraldBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "herald-bench",
        abstract: "Load-test an SSE server: streams, fan-out rate, latency, memory per stream.",
        discussion: """
        Scenarios: idle (open streams, measure memory), fanout (publish while streams listen), \
        reconnect (drop every stream while events are published, then resume with Last-Event-ID). \
        Targets: --target herald (GET /events?topic=, POST /events?topic=) or nchan \
        (GET /sub/TOPIC, POST /pub/TOPIC), or give --sub-path/--pub-path templates with {topic}.
        """)

    @Option(help: "idle, fanout or reconnect.") var scenario = "fanout"
    @Option(help: "herald or nchan (sets the path templates and headers).") var target = "herald"
    @Option(help: "Server host (loopback only).") var host = "127.0.0.1"
    @Option(help: "Server port.") var port = 8080
    @Option(name: .customLong("sub-path"), help: "Subscribe path template; {topic} is replaced.") var subPath: String?
    @Option(name: .customLong("pub-path"), help: "Publish path template; {topic} is replaced.") var pubPath: String?
    @Option(name: .customLong("pub-header"), help: "Extra publish header 'Name: value' (repeatable).") var pubHeaders: [String] = []
    @Option(help: "Streams to open.") var streams = 1000
    @Option(help: "Topics the streams are spread over (stream i listens to topic i mod T); publishes are spread the same way.") var topics = 1
    @Option(help: "Events per second in total.") var rate: Double = 100
    @Option(help: "Seconds of publishing.") var duration: Double = 10
    @Option(help: "Bytes of event data.") var payload = 100
    @Option(name: .customLong("server-pid"), help: "PID of the server (its children are included) for memory and CPU.") var serverPID: Int32?
    @Option(name: .customLong("source-addresses"), help: "Spread connections over 127.0.0.1 ... 127.0.0.K.") var sourceAddresses = 1
    @Option(help: "Connections being opened at once.") var concurrency = 256
    @Option(help: "Client event-loop threads.") var threads = 1
    @Option(help: "Publishing connections.") var publishers = 4
    @Option(help: "Seconds to wait after the streams are up before measuring idle memory.") var settle: Double = 2
    @Option(name: .customLong("gap-events"), help: "reconnect: events published while the streams are down.") var gapEvents = 1000
    @Option(help: "Write the JSON report here as well as to stdout.") var json: String?
    @Option(help: "A label for the report.") var label = ""

    func validate() throws {
        guard host.hasPrefix("127.") || host == "::1" || host == "localhost" else {
            throw ValidationError("herald-bench only targets loopback addresses")
        }
        guard ["idle", "fanout", "reconnect"].contains(scenario) else { throw ValidationError("unknown --scenario \(scenario)") }
        guard ["herald", "nchan"].contains(target) || (subPath != nil && pubPath != nil) else {
            throw ValidationError("unknown --target \(target); give --sub-path and --pub-path")
        }
        guard streams >= 1, topics >= 1, rate > 0, duration > 0, payload >= 32, sourceAddresses >= 1, sourceAddresses <= 254 else {
            throw ValidationError("--streams, --topics, --rate, --duration must be positive; --payload at least 32")
        }
    }

    var subscribeTemplate: String { subPath ?? (target == "nchan" ? "/sub/{topic}" : "/events?topic={topic}") }
    var publishTemplate: String { pubPath ?? (target == "nchan" ? "/pub/{topic}" : "/events?topic={topic}") }
    var topicNames: [String] { (0..<topics).map { topics == 1 ? "bench" : "bench-\($0)" } }

    func run() async throws {
        let fileLimit = raiseOpenFileLimit()
        if streams + publishers + 16 > fileLimit {
            throw ValidationError("\(streams) streams need more than this process's \(fileLimit) open files; run several processes")
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        var loopStats: [(any EventLoop, LoopStats)] = []
        for loop in group.makeIterator() { loopStats.append((loop, LoopStats())) }
        let names = topicNames
        var report = Report(label: label, target: target, scenario: scenario, streams: streams, topics: topics,
                            rate: rate, duration: duration, payloadBytes: payload)
        report.serverBefore = serverPID.flatMap(ProcessStats.read)

        // 1. Open the streams.
        let records = (0..<streams).map { StreamRecord(index: $0, topic: $0 % topics) }
        let openStart = Clock.nowNanoseconds()
        try await openStreams(records, group: group, loopStats: loopStats, names: names, resume: false)
        let established = try await waitUntil(timeout: 120) {
            let totals = try await Self.totals(loopStats)
            return totals.established + totals.failed >= records.count ? totals : nil
        }
        report.established = established?.established ?? 0
        report.failed = established?.failed ?? records.count
        report.establishSeconds = Double(Clock.nowNanoseconds() - openStart) / 1e9
        log("streams: \(report.established) established, \(report.failed) failed in \(fmt(report.establishSeconds)) s")

        if scenario == "idle" {
            try await Task.sleep(for: .seconds(settle))
            report.serverAfter = serverPID.flatMap(ProcessStats.read)
            report.computeMemory()
            await closeAll(records, loopStats: loopStats)
            try output(report)
            return
        }

        // 2. Publish.
        let publisher = Publisher(
            target: .init(host: host, port: port, pathTemplate: publishTemplate, headers: parsedHeaders(pubHeaders),
                          topics: names, payloadBytes: payload),
            loop: group.next())
        try await publisher.connect(count: publishers)
        let cpuBefore = serverPID.flatMap(ProcessStats.read)
        let publishStart = Clock.nowNanoseconds()
        try await publisher.run(rate: rate, seconds: duration, firstSeq: 0)
        var nextSeq = Int(rate * duration)

        if scenario == "reconnect" {
            try await waitForDrain(loopStats)
            // Drop every stream at once, publish while they are gone, then resume them all.
            await closeAll(records, loopStats: loopStats)
            try await Task.sleep(for: .milliseconds(200))
            try await publisher.run(rate: max(rate, 1000), seconds: Double(gapEvents) / max(rate, 1000), firstSeq: nextSeq)
            nextSeq += gapEvents
            try await resetEstablished(loopStats)
            let reconnectStart = Clock.nowNanoseconds()
            try await openStreams(records, group: group, loopStats: loopStats, names: names, resume: true)
            let acknowledged = publisher.acknowledgedSeqs
            let caughtUp = try await waitUntil(timeout: 120) {
                let missing = try await Self.missing(records, loopStats: loopStats, acknowledged: acknowledged, topics: self.topics)
                return missing == 0 ? true : nil
            }
            report.catchUpSeconds = caughtUp == nil ? nil : Double(Clock.nowNanoseconds() - reconnectStart) / 1e9
            log("reconnect storm: caught up in \(report.catchUpSeconds.map { fmt($0) } ?? "never (timeout)") s")
        } else {
            try await waitForDrain(loopStats)
        }
        let publishEnd = try await Self.totals(loopStats).lastDeliveryNanos
        report.serverAfter = serverPID.flatMap(ProcessStats.read)
        if let before = cpuBefore, let after = report.serverAfter { report.serverCPUSeconds = after.cpuSeconds - before.cpuSeconds }
        let totals = try await Self.totals(loopStats)
        let acknowledged = publisher.acknowledgedSeqs
        report.published = nextSeq
        report.acknowledged = acknowledged.count
        report.publishFailures = publisher.failureCount
        report.deliveries = totals.deliveries
        let window = Double(max(publishEnd, publishStart + 1) - publishStart) / 1e9
        report.deliverySeconds = window
        report.deliveriesPerSecond = Double(totals.deliveries) / window
        let (expected, missed, streamsMissing, duplicates) = try await Self.accounting(records, loopStats: loopStats, acknowledged: acknowledged, topics: topics)
        report.expectedDeliveries = expected
        report.missed = missed
        report.streamsWithMissed = streamsMissing
        report.duplicated = duplicates
        report.latency = .init(totals.latencyMicros)
        await publisher.close()
        await closeAll(records, loopStats: loopStats)
        try output(report)
    }

    // MARK: Streams

    func openStreams(_ records: [StreamRecord], group: MultiThreadedEventLoopGroup, loopStats: [(any EventLoop, LoopStats)],
                     names: [String], resume: Bool) async throws {
        var inFlight: [EventLoopFuture<any Channel>] = []
        for record in records {
            let (loop, stats) = loopStats[record.index % loopStats.count]
            let path = subscribeTemplate.replacingOccurrences(of: "{topic}", with: names[record.topic])
            var request = "GET \(path) HTTP/1.1\r\nHost: \(host):\(port)\r\nAccept: text/event-stream\r\n"
            if resume {
                let lastID = try await loop.submit { record.lastID }.get()
                if !lastID.isEmpty { request += "Last-Event-ID: \(String(decoding: lastID, as: UTF8.self))\r\n" }
            }
            request += "\r\n"
            let buffer = ByteBuffer(string: request)
            var bootstrap = ClientBootstrap(group: loop)
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(SubscriberHandler(record: record, stats: stats, request: buffer))
                    }
                }
            if sourceAddresses > 1 {
                bootstrap = bootstrap.bind(to: try SocketAddress(ipAddress: "127.0.0.\(1 + record.index % sourceAddresses)", port: 0))
            }
            let future = bootstrap.connect(host: host, port: port)
            future.whenFailure { _ in loop.execute { stats.failed += 1 } }
            inFlight.append(future)
            if inFlight.count >= concurrency {
                _ = try? await inFlight.removeFirst().get()
            }
        }
        for future in inFlight { _ = try? await future.get() }
    }

    func closeAll(_ records: [StreamRecord], loopStats: [(any EventLoop, LoopStats)]) async {
        var futures: [EventLoopFuture<Void>] = []
        for record in records {
            let loop = loopStats[record.index % loopStats.count].0
            futures.append(loop.flatSubmit {
                guard let channel = record.channel else { return loop.makeSucceededVoidFuture() }
                record.established = false
                return channel.close().recover { _ in }
            })
        }
        for future in futures { try? await future.get() }
    }

    func resetEstablished(_ loopStats: [(any EventLoop, LoopStats)]) async throws {
        for (loop, stats) in loopStats { try await loop.submit { stats.established = 0; stats.failed = 0 }.get() }
    }

    /// Waits until no delivery arrived for a second (or 60 s in all).
    func waitForDrain(_ loopStats: [(any EventLoop, LoopStats)]) async throws {
        var last = -1
        let deadline = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < deadline {
            try await Task.sleep(for: .seconds(1))
            let now = try await Self.totals(loopStats).deliveries
            if now == last { return }
            last = now
        }
    }

    static func totals(_ loopStats: [(any EventLoop, LoopStats)]) async throws -> LoopStats.Snapshot {
        var total = LoopStats.Snapshot(
            latencyMicros: Histogram<UInt64>(highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: .three),
            deliveries: 0, established: 0, failed: 0, lastDeliveryNanos: 0)
        for (loop, stats) in loopStats {
            let snapshot = try await loop.submit { stats.snapshot }.get()
            total.latencyMicros.add(snapshot.latencyMicros)
            total.deliveries += snapshot.deliveries
            total.established += snapshot.established
            total.failed += snapshot.failed
            total.lastDeliveryNanos = max(total.lastDeliveryNanos, snapshot.lastDeliveryNanos)
        }
        return total
    }

    /// Expected, missed, streams with a miss, duplicates.
    static func accounting(_ records: [StreamRecord], loopStats: [(any EventLoop, LoopStats)], acknowledged: [Int], topics: Int)
        async throws -> (Int, Int, Int, Int) {
        var byTopic = [[Int]](repeating: [], count: topics)
        for seq in acknowledged { byTopic[seq % topics].append(seq) }
        let expectedByTopic = byTopic
        var expected = 0, missed = 0, streamsMissing = 0, duplicates = 0
        for (loop, _) in loopStats {
            let mine = records.filter { loopStats[$0.index % loopStats.count].0 === loop }
            let result = try await loop.submit { () -> (Int, Int, Int, Int) in
                var e = 0, m = 0, s = 0, d = 0
                for record in mine where record.established || record.received > 0 {
                    let wanted = expectedByTopic[record.topic]
                    e += wanted.count
                    let miss = wanted.reduce(0) { $0 + (record.has($1) ? 0 : 1) }
                    m += miss
                    if miss > 0 { s += 1 }
                    d += record.duplicates
                }
                return (e, m, s, d)
            }.get()
            expected += result.0; missed += result.1; streamsMissing += result.2; duplicates += result.3
        }
        return (expected, missed, streamsMissing, duplicates)
    }

    static func missing(_ records: [StreamRecord], loopStats: [(any EventLoop, LoopStats)], acknowledged: [Int], topics: Int) async throws -> Int {
        try await accounting(records, loopStats: loopStats, acknowledged: acknowledged, topics: topics).1
    }

    func waitUntil<T>(timeout: Double, _ check: () async throws -> T?) async throws -> T? {
        let deadline = ContinuousClock.now + .milliseconds(Int(timeout * 1000))
        while ContinuousClock.now < deadline {
            if let value = try await check() { return value }
            try await Task.sleep(for: .milliseconds(50))
        }
        return nil
    }

    func parsedHeaders(_ raw: [String]) -> [(String, String)] {
        raw.compactMap { line in
            guard let colon = line.firstIndex(of: ":") else { return nil }
            return (String(line[..<colon]), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces))
        }
    }

    func output(_ report: Report) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let data = try encoder.encode(report)
        print(String(decoding: data, as: UTF8.self))
        if let json { try data.write(to: URL(fileURLWithPath: json)) }
        log(report.summary)
    }
}

func log(_ text: String) {
    FileHandle.standardError.write(Data((text + "\n").utf8))
}

func fmt(_ value: Double, _ digits: Int = 2) -> String { String(format: "%.\(digits)f", value) }
