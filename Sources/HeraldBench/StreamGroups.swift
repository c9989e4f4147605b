import Foundation
import Histogram
import NIOCore
import NIOPosix
import NIOSSL

/// Counters summed over a set of streams.
struct Totals: Codable, Sendable {
    var deliveries = 0
    var established = 0
    var failed = 0
    var lastDeliveryNanos: UInt64 = 0

    mutating func add(_ other: Totals) {
        deliveries += other.deliveries
        established += other.established
        failed += other.failed
        lastDeliveryNanos = max(lastDeliveryNanos, other.lastDeliveryNanos)
    }
}

/// Missed and duplicated events, and the latency histogram (as value/count pairs, so that
/// histograms from several processes merge exactly).
struct Accounting: Codable, Sendable {
    var expected = 0
    var missed = 0
    var streamsWithMissed = 0
    var duplicated = 0
    var latencyBuckets: [[UInt64]] = []

    mutating func add(_ other: Accounting) {
        expected += other.expected
        missed += other.missed
        streamsWithMissed += other.streamsWithMissed
        duplicated += other.duplicated
        latencyBuckets += other.latencyBuckets
    }

    func histogram() -> Histogram<UInt64> {
        var histogram = Histogram<UInt64>(highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: .three)
        for bucket in latencyBuckets where bucket.count == 2 {
            _ = histogram.record(bucket[0], count: bucket[1])
        }
        return histogram
    }
}

/// A set of subscriber streams the benchmark drives: in this process, or in a worker process.
protocol StreamGroup: Sendable {
    func open(resume: Bool) async throws
    func totals() async throws -> Totals
    func accounting(acknowledged: [Int]) async throws -> Accounting
    func closeAll() async throws
    func resetCounters() async throws
    func shutdown() async
}

/// What a stream group needs to know to open its streams.
struct StreamPlan: Codable, Sendable {
    var host: String
    var port: Int
    /// Ports the streams are spread over (stream i on ports[i mod count]); empty: `port`.
    var ports: [Int] = []
    var subscribeTemplate: String
    var topics: Int
    var topicNames: [String]
    /// The stream indices this group owns.
    var first: Int
    var stride: Int
    var total: Int
    var sourceAddresses: Int
    var concurrency: Int
    var threads: Int
    /// Speak TLS (HTTP/1.1 inside, no certificate verification: loopback benchmarks only).
    var tls: Bool = false
}

/// Streams held by this process.
final class LocalStreams: StreamGroup, @unchecked Sendable {
    // `records` and `loopStats` are fixed at init; each record and stats object is then only
    // touched on its own event loop.
    let plan: StreamPlan
    let group: MultiThreadedEventLoopGroup
    let loopStats: [(any EventLoop, LoopStats)]
    let records: [StreamRecord]
    let tlsContext: NIOSSLContext?

    init(plan: StreamPlan) {
        self.plan = plan
        self.tlsContext = plan.tls ? try? BenchTLS.makeContext() : nil
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: plan.threads)
        var stats: [(any EventLoop, LoopStats)] = []
        for loop in group.makeIterator() { stats.append((loop, LoopStats())) }
        self.loopStats = stats
        self.records = stride(from: plan.first, to: plan.total, by: plan.stride).map {
            StreamRecord(index: $0, topic: $0 % plan.topics)
        }
    }

    private func home(_ record: StreamRecord) -> (any EventLoop, LoopStats) {
        loopStats[record.index % loopStats.count]
    }

    func open(resume: Bool) async throws {
        var inFlight: [EventLoopFuture<any Channel>] = []
        for record in records {
            let (loop, stats) = home(record)
            let port = plan.ports.isEmpty ? plan.port : plan.ports[record.index % plan.ports.count]
            let path = plan.subscribeTemplate.replacingOccurrences(of: "{topic}", with: plan.topicNames[record.topic])
            var request = "GET \(path) HTTP/1.1\r\nHost: \(plan.host):\(port)\r\nAccept: text/event-stream\r\n"
            if resume {
                let lastID = try await loop.submit { record.lastID }.get()
                if !lastID.isEmpty { request += "Last-Event-ID: \(String(decoding: lastID, as: UTF8.self))\r\n" }
            }
            request += "\r\n"
            let buffer = ByteBuffer(string: request)
            let tlsContext = self.tlsContext
            var bootstrap = ClientBootstrap(group: loop)
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        if let tlsContext {
                            try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: tlsContext, serverHostname: nil))
                        }
                        try channel.pipeline.syncOperations.addHandler(SubscriberHandler(record: record, stats: stats, request: buffer))
                    }
                }
            if plan.sourceAddresses > 1 {
                bootstrap = bootstrap.bind(to: try SocketAddress(ipAddress: "127.0.0.\(1 + record.index % plan.sourceAddresses)", port: 0))
            }
            let future = bootstrap.connect(host: plan.host, port: port)
            future.whenFailure { _ in loop.execute { stats.failed += 1 } }
            inFlight.append(future)
            if inFlight.count >= plan.concurrency {
                _ = try? await inFlight.removeFirst().get()
            }
        }
        for future in inFlight { _ = try? await future.get() }
    }

    func totals() async throws -> Totals {
        var total = Totals()
        for (loop, stats) in loopStats {
            total.add(try await loop.submit {
                Totals(deliveries: stats.deliveries, established: stats.established, failed: stats.failed,
                       lastDeliveryNanos: stats.lastDeliveryNanos)
            }.get())
        }
        return total
    }

    func accounting(acknowledged: [Int]) async throws -> Accounting {
        var byTopic = [[Int]](repeating: [], count: plan.topics)
        for seq in acknowledged { byTopic[seq % plan.topics].append(seq) }
        let expectedByTopic = byTopic
        var result = Accounting()
        for (loop, stats) in loopStats {
            let mine = records.filter { home($0).0 === loop }
            result.add(try await loop.submit { () -> Accounting in
                var part = Accounting()
                for record in mine where record.established || record.received > 0 {
                    let wanted = expectedByTopic[record.topic]
                    part.expected += wanted.count
                    let miss = wanted.reduce(0) { $0 + (record.has($1) ? 0 : 1) }
                    part.missed += miss
                    if miss > 0 { part.streamsWithMissed += 1 }
                    part.duplicated += record.duplicates
                }
                for value in stats.latencyMicros.recordedValues() {
                    part.latencyBuckets.append([value.value, UInt64(value.count)])
                }
                return part
            }.get())
        }
        return result
    }

    func closeAll() async throws {
        var futures: [EventLoopFuture<Void>] = []
        for record in records {
            let loop = home(record).0
            futures.append(loop.flatSubmit {
                guard let channel = record.channel else { return loop.makeSucceededVoidFuture() }
                record.established = false
                return channel.close().recover { _ in }
            })
        }
        for future in futures { try? await future.get() }
    }

    func resetCounters() async throws {
        for (loop, stats) in loopStats {
            try await loop.submit {
                stats.established = 0
                stats.failed = 0
            }.get()
        }
    }

    func shutdown() async {
        try? await group.shutdownGracefully()
    }
}

/// Streams held by a worker process (`herald-bench --role worker`), driven over its
/// standard input and output, one JSON line per answer. A process holds at most about
/// 19 000 sockets here, so more streams need more processes.
final class RemoteStreams: StreamGroup, @unchecked Sendable {
    // `process` and the pipes are set once; requests are made one at a time by the driver.
    private let process: Process
    private let input: FileHandle
    private let output: FileHandle
    private var pending = Data()

    init(executable: String, plan: StreamPlan) throws {
        process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        let planJSON = String(decoding: try JSONEncoder().encode(plan), as: UTF8.self)
        process.arguments = ["--role", "worker", "--plan", planJSON]
        let stdin = Pipe()
        let stdout = Pipe()
        process.standardInput = stdin
        process.standardOutput = stdout
        process.standardError = FileHandle.standardError
        try process.run()
        input = stdin.fileHandleForWriting
        output = stdout.fileHandleForReading
    }

    private func call(_ command: String) async throws -> Data {
        input.write(Data((command + "\n").utf8))
        // Read one line (blocking reads, off the cooperative pool's hot path: the driver
        // waits for each answer anyway).
        while true {
            if let newline = pending.firstIndex(of: 0x0A) {
                let line = pending[pending.startIndex..<newline]
                pending = Data(pending[(newline + 1)...])
                return Data(line)
            }
            let chunk = output.availableData
            if chunk.isEmpty { throw WorkerError(message: "worker exited during '\(command.prefix(20))'") }
            pending.append(chunk)
        }
    }

    func open(resume: Bool) async throws { _ = try await call(resume ? "resume" : "open") }

    func totals() async throws -> Totals { try JSONDecoder().decode(Totals.self, from: try await call("totals")) }

    func accounting(acknowledged: [Int]) async throws -> Accounting {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("herald-bench-acks-\(UUID().uuidString).json")
        try JSONEncoder().encode(acknowledged).write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }
        return try JSONDecoder().decode(Accounting.self, from: try await call("accounting \(file.path)"))
    }

    func closeAll() async throws { _ = try await call("close") }

    func resetCounters() async throws { _ = try await call("reset") }

    func shutdown() async {
        _ = try? await call("exit")
        process.waitUntilExit()
    }
}

struct WorkerError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

/// The worker side of ``RemoteStreams``: reads commands from standard input until `exit`.
enum Worker {
    static func run(plan: StreamPlan) async throws {
        let streams = LocalStreams(plan: plan)
        func answer<T: Encodable>(_ value: T) throws {
            FileHandle.standardOutput.write(try JSONEncoder().encode(value) + Data("\n".utf8))
        }
        while let line = readLine() {
            let parts = line.split(separator: " ", maxSplits: 1).map(String.init)
            switch parts.first ?? "" {
            case "open": try await streams.open(resume: false); try answer(["ok": true])
            case "resume": try await streams.open(resume: true); try answer(["ok": true])
            case "totals": try answer(try await streams.totals())
            case "accounting":
                let acknowledged = try JSONDecoder().decode([Int].self, from: Data(contentsOf: URL(fileURLWithPath: parts[1])))
                try answer(try await streams.accounting(acknowledged: acknowledged))
            case "close": try await streams.closeAll(); try answer(["ok": true])
            case "reset": try await streams.resetCounters(); try answer(["ok": true])
            case "exit":
                try answer(["ok": true])
                await streams.shutdown()
                return
            default:
                try answer(["error": "unknown command \(line)"])
            }
        }
        await streams.shutdown()
    }
}
