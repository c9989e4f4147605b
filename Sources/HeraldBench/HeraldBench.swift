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
        reconnect (drop every stream while events are published, then resume with Last-Event-ID), \
        capacity (idle, then fanout on the same streams: memory and delivery to all of them). \
        Targets: --target herald (GET /events?topic=, POST /events?topic=) or nchan \
        (GET /sub/TOPIC, POST /pub/TOPIC), or give --sub-path/--pub-path templates with {topic}.
        """)

    @Option(help: "idle, fanout, reconnect or capacity.") var scenario = "fanout"
    @Option(help: "herald or nchan (sets the path templates and headers).") var target = "herald"
    @Option(help: "Server host (loopback only).") var host = "127.0.0.1"
    @Option(help: "Server port.") var port = 8080
    @Option(name: .customLong("ports"), help: "Comma-separated server ports the streams are spread over (stream i on port i mod K), for a cluster of nodes; default: --port.")
    var portList: String?
    @Option(name: .customLong("pub-port"), help: "Port the publisher posts to (another cluster node than the streams'); default: --port.")
    var pubPort: Int?
    @Option(name: .customLong("sub-path"), help: "Subscribe path template; {topic} is replaced.") var subPath: String?
    @Option(name: .customLong("pub-path"), help: "Publish path template; {topic} is replaced.") var pubPath: String?
    @Option(name: .customLong("pub-header"), help: "Extra publish header 'Name: value' (repeatable).") var pubHeaders: [String] = []
    @Option(help: "Streams to open.") var streams = 1000
    @Option(help: "Topics the streams are spread over (stream i listens to topic i mod T); publishes are spread the same way.") var topics = 1
    @Option(help: "Events per second in total.") var rate: Double = 100
    @Option(help: "Seconds of publishing.") var duration: Double = 10
    @Option(help: "Bytes of event data.") var payload = 100
    @Option(name: .customLong("server-pid"), help: "PID of the server (its children are included) for memory and CPU; repeatable, summed (cluster nodes).")
    var serverPIDs: [Int32] = []
    @Option(name: .customLong("source-addresses"), help: "Spread connections over 127.0.0.1 ... 127.0.0.K.") var sourceAddresses = 1
    @Option(help: "Connections being opened at once.") var concurrency = 256
    @Option(help: "Client event-loop threads.") var threads = 1
    @Option(help: "Publishing connections.") var publishers = 4
    @Option(help: "Seconds to wait after the streams are up before measuring idle memory.") var settle: Double = 2
    @Option(name: .customLong("gap-events"), help: "reconnect: events published while the streams are down.") var gapEvents = 1000
    @Flag(help: "Connect over TLS (HTTP/1.1 via ALPN; the certificate is not verified: loopback benchmarks only).") var tls = false
    @Option(help: "Write the JSON report here as well as to stdout.") var json: String?
    @Option(help: "A label for the report.") var label = ""

    func validate() throws {
        guard host.hasPrefix("127.") || host == "::1" || host == "localhost" else {
            throw ValidationError("herald-bench only targets loopback addresses")
        }
        guard ["idle", "fanout", "reconnect", "capacity"].contains(scenario) else { throw ValidationError("unknown --scenario \(scenario)") }
        guard ["herald", "nchan"].contains(target) || (subPath != nil && pubPath != nil) else {
            throw ValidationError("unknown --target \(target); give --sub-path and --pub-path")
        }
        guard streams >= 1, topics >= 1, rate > 0, duration > 0, payload >= 32, sourceAddresses >= 1, sourceAddresses <= 254 else {
            throw ValidationError("--streams, --topics, --rate, --duration must be positive; --payload at least 32")
        }
        guard !streamPorts.isEmpty, streamPorts.allSatisfy({ $0 > 0 && $0 < 65536 }) else {
            throw ValidationError("--ports must be a comma-separated list of ports")
        }
    }

    var subscribeTemplate: String { subPath ?? (target == "nchan" ? "/sub/{topic}" : "/events?topic={topic}") }
    var publishTemplate: String { pubPath ?? (target == "nchan" ? "/pub/{topic}" : "/events?topic={topic}") }
    var topicNames: [String] { (0..<topics).map { topics == 1 ? "bench" : "bench-\($0)" } }
    var streamPorts: [Int] {
        guard let portList else { return [port] }
        return portList.split(separator: ",").map { Int($0.trimmingCharacters(in: " ")) ?? 0 }
    }
    /// Memory and CPU of every server process given, summed.
    var serverStats: ProcessStats? {
        let all = serverPIDs.compactMap(ProcessStats.read)
        guard !all.isEmpty else { return nil }
        return all.dropFirst().reduce(all[0]) { total, next in
            ProcessStats(rssKiB: total.rssKiB + next.rssKiB, pssKiB: total.pssKiB + next.pssKiB,
                         cpuSeconds: total.cpuSeconds + next.cpuSeconds, processes: total.processes + next.processes)
        }
    }

    @Option(help: "Processes holding the streams (each holds at most about 19 000); 1 keeps them in this process.")
    var processes = 1
    @Option(help: "Internal: 'worker' runs one stream-holding process for a parent herald-bench.") var role = "main"
    @Option(name: .customLong("plan"), help: "Internal: the worker's stream plan (JSON).") var workerPlan: String?

    func run() async throws {
        let fileLimit = raiseOpenFileLimit()
        if role == "worker" {
            guard let workerPlan, let decoded = try? JSONDecoder().decode(StreamPlan.self, from: Data(workerPlan.utf8)) else {
                throw ValidationError("--role worker needs --plan")
            }
            try await Worker.run(plan: decoded)
            return
        }
        let perProcess = (streams + processes - 1) / processes
        if perProcess + publishers + 16 > fileLimit {
            throw ValidationError("\(perProcess) streams per process need more than the \(fileLimit) open files a process may have; use --processes \(streams / max(1, fileLimit - 200) + 1)")
        }
        let names = topicNames
        func plan(first: Int, stride: Int) -> StreamPlan {
            StreamPlan(host: host, port: port, ports: streamPorts, subscribeTemplate: subscribeTemplate, topics: topics, topicNames: names,
                       first: first, stride: stride, total: streams, sourceAddresses: sourceAddresses,
                       concurrency: max(1, concurrency / processes), threads: threads, tls: tls)
        }
        var groups: [any StreamGroup] = []
        if processes <= 1 {
            groups = [LocalStreams(plan: plan(first: 0, stride: 1))]
        } else {
            let executable = CommandLine.arguments[0].hasPrefix("/") ? CommandLine.arguments[0]
                : FileManager.default.currentDirectoryPath + "/" + CommandLine.arguments[0]
            for index in 0..<processes {
                groups.append(try RemoteStreams(executable: executable, plan: plan(first: index, stride: processes)))
            }
        }
        let publisherGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        var report = Report(label: label, target: target, scenario: scenario, streams: streams, topics: topics,
                            rate: rate, duration: duration, payloadBytes: payload)
        report.processes = processes
        report.ports = streamPorts
        report.pubPort = pubPort ?? port
        report.serverBefore = serverStats

        // 1. Open the streams (every group at once).
        let openStart = Clock.nowNanoseconds()
        try await Self.each(groups) { try await $0.open(resume: false) }
        let established = try await waitUntil(timeout: 120) {
            let totals = try await Self.totals(groups)
            return totals.established + totals.failed >= self.streams ? totals : nil
        }
        report.established = established?.established ?? 0
        report.failed = established?.failed ?? streams
        report.establishSeconds = Double(Clock.nowNanoseconds() - openStart) / 1e9
        log("streams: \(report.established) established, \(report.failed) failed in \(fmt(report.establishSeconds)) s")

        if scenario == "idle" {
            try await Task.sleep(for: .seconds(settle))
            report.serverAfter = serverStats
            report.computeMemory()
            try await Self.each(groups) { try await $0.closeAll() }
            for group in groups { await group.shutdown() }
            try output(report)
            return
        }

        if scenario == "capacity" {
            // Memory with every stream open and idle, then one fan-out to all of them.
            try await Task.sleep(for: .seconds(settle))
            report.serverAfter = serverStats
            report.computeMemory()
            report.serverIdle = report.serverAfter
            log(report.summary)
        }

        // 2. Publish.
        let publisher = Publisher(
            target: .init(host: host, port: pubPort ?? port, pathTemplate: publishTemplate, headers: parsedHeaders(pubHeaders),
                          topics: names, payloadBytes: payload, tls: tls ? try BenchTLS.makeContext() : nil),
            loop: publisherGroup.next())
        try await publisher.connect(count: publishers)
        let cpuBefore = serverStats
        let publishStart = Clock.nowNanoseconds()
        try await publisher.run(rate: rate, seconds: duration, firstSeq: 0)
        var nextSeq = Int(rate * duration)

        if scenario == "reconnect" {
            try await waitForDrain(groups)
            // Drop every stream at once, publish while they are gone, then resume them all.
            try await Self.each(groups) { try await $0.closeAll() }
            try await Task.sleep(for: .milliseconds(200))
            try await publisher.run(rate: max(rate, 1000), seconds: Double(gapEvents) / max(rate, 1000), firstSeq: nextSeq)
            nextSeq += gapEvents
            try await Self.each(groups) { try await $0.resetCounters() }
            let reconnectStart = Clock.nowNanoseconds()
            try await Self.each(groups) { try await $0.open(resume: true) }
            let acknowledged = publisher.acknowledgedSeqs
            let caughtUp = try await waitUntil(timeout: 120) {
                let missing = try await Self.accounting(groups, acknowledged: acknowledged).missed
                return missing == 0 ? true : nil
            }
            report.catchUpSeconds = caughtUp == nil ? nil : Double(Clock.nowNanoseconds() - reconnectStart) / 1e9
            log("reconnect storm: caught up in \(report.catchUpSeconds.map { fmt($0) } ?? "never (timeout)") s")
        } else {
            try await waitForDrain(groups)
        }
        let totals = try await Self.totals(groups)
        report.serverAfter = serverStats
        if let before = cpuBefore, let after = report.serverAfter { report.serverCPUSeconds = after.cpuSeconds - before.cpuSeconds }
        let acknowledged = publisher.acknowledgedSeqs
        report.published = nextSeq
        report.acknowledged = acknowledged.count
        report.publishFailures = publisher.failureCount
        report.deliveries = totals.deliveries
        let window = Double(max(totals.lastDeliveryNanos, publishStart + 1) - publishStart) / 1e9
        report.deliverySeconds = window
        report.deliveriesPerSecond = Double(totals.deliveries) / window
        let accounting = try await Self.accounting(groups, acknowledged: acknowledged)
        report.expectedDeliveries = accounting.expected
        report.missed = accounting.missed
        report.streamsWithMissed = accounting.streamsWithMissed
        report.duplicated = accounting.duplicated
        report.latency = .init(accounting.histogram())
        await publisher.close()
        try await Self.each(groups) { try await $0.closeAll() }
        for group in groups { await group.shutdown() }
        try output(report)
    }

    /// Runs `body` on every group concurrently.
    static func each(_ groups: [any StreamGroup], _ body: @escaping @Sendable (any StreamGroup) async throws -> Void) async throws {
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            for group in groups { tasks.addTask { try await body(group) } }
            try await tasks.waitForAll()
        }
    }

    static func totals(_ groups: [any StreamGroup]) async throws -> Totals {
        var total = Totals()
        for group in groups { total.add(try await group.totals()) }
        return total
    }

    static func accounting(_ groups: [any StreamGroup], acknowledged: [Int]) async throws -> Accounting {
        var total = Accounting()
        for group in groups { total.add(try await group.accounting(acknowledged: acknowledged)) }
        return total
    }

    /// Waits until no delivery arrived for a second (or 60 s in all).
    func waitForDrain(_ groups: [any StreamGroup]) async throws {
        var last = -1
        let deadline = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < deadline {
            try await Task.sleep(for: .seconds(1))
            let now = try await Self.totals(groups).deliveries
            if now == last { return }
            last = now
        }
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
