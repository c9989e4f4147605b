import HeraldCore
import Logging
import NIOCore

/// Everything a Herald server is configured with. The CLI maps flags and `HERALD_*`
/// environment variables onto it; tests build it directly with `port: 0`.
public struct HeraldConfiguration: Sendable {
    /// Where events are kept (SPEC §9).
    public enum Store: Sendable, Equatable {
        /// The ring only: fast, gone on restart.
        case memory
        /// A SQLite file: every acknowledged event is durable; survives restart and crash.
        case sqlite(path: String)
        /// A PostgreSQL database shared by every node of a cluster (SPEC §12).
        case postgres(PostgresLocation)

        /// The store a `--store` URL names: `memory` or `sqlite:PATH`. The scheme is read here
        /// and nowhere else; ``makeEventStore(for:startingAfter:loop:)`` makes the store.
        public init(url: String) throws(ConfigurationError) {
            if url == "memory" {
                self = .memory
            } else if url.hasPrefix("sqlite:") {
                let path = String(url.dropFirst("sqlite:".count))
                guard !path.isEmpty else {
                    throw ConfigurationError("--store sqlite:PATH needs a file path, e.g. sqlite:/var/lib/herald/events.db")
                }
                self = .sqlite(path: path)
            } else if url.hasPrefix("postgres://") || url.hasPrefix("postgresql://") {
                self = .postgres(try PostgresLocation(url: url))
            } else {
                throw ConfigurationError(
                    "--store '\(url.prefix(100))' is not a store; use 'memory', 'sqlite:PATH' or 'postgres://USER:PASSWORD@HOST:PORT/DB'")
            }
        }
    }

    public var host = "127.0.0.1"
    /// 0 picks an ephemeral port; the bound one is reported by ``HeraldServer/localPort``.
    public var port = 8080
    /// Folder of static files (`--public`).
    public var publicDirectory = "./public"
    /// History capacity in events (the ring with the memory store, the file with sqlite).
    public var historyCapacity = 10_000
    /// Events older than this leave the history (nil: kept until the count limit).
    public var historyMaxAge: TimeAmount?
    /// With a durable store: how many of the newest events are also kept in memory, where
    /// live delivery and most replays read them.
    public var cacheCapacity = 100_000
    /// Seconds of silence after which a stream gets a `:` keep-alive comment.
    public var keepAlive: TimeAmount.Seconds = 15
    /// The `retry:` hint sent at stream start, in milliseconds.
    public var retryMilliseconds = 3000
    /// Bearer keys accepted for publishing; empty means loopback-only publishing.
    public var publishKeys: [String] = []
    /// HS256 keys that sign subscriber tokens (SPEC §14); empty: anyone may subscribe.
    /// Several keys allow rotation: a token signed by any of them is accepted.
    public var subscriberKeys: [String] = []
    /// When set, a subscriber token's `aud` must contain it.
    public var subscriberAudience: String?
    /// Topic patterns anyone may subscribe to without a token when subscriber keys are set.
    public var publicTopics: [String] = []
    /// PEM certificate chain and private key (SPEC §13): with both, the port serves HTTPS only.
    public var tlsCertificatePath: String?
    public var tlsKeyPath: String?
    /// Concurrent HTTP/2 streams per connection (`--h2-max-streams`, SPEC §13).
    public var h2MaxStreams = 100
    /// Origins allowed cross-origin; `*` applies to the subscribe endpoints only.
    public var corsOrigins: [String] = ["*"]
    /// Maximum open streams (plus waiting polls); nil for the default, the process's
    /// open-file limit minus ``fileDescriptorReserve`` (see ``effectiveMaxConnections``).
    public var maxConnections: Int?
    /// Topics that may have a retained event at once; past it the oldest retained event goes.
    public var maxRetained = 100_000
    public var maxEventBytes = 65_536
    public var maxBodyBytes = 1_048_576
    /// Unsent bytes a live stream may have queued before it is disconnected.
    public var maxQueuedBytes = 1_048_576
    /// Send streams close-delimited instead of chunked.
    public var noChunked = false
    /// Start the built-in stock-quote feed.
    public var demo = false
    /// Cleartext HTTP/1.1 streams write through their pipeline like TLS and HTTP/2 streams do,
    /// instead of straight to the socket: for tests of that path and for measuring what the
    /// direct path saves (the hidden `--stream-writes pipeline`).
    public var streamsThroughPipeline = false
    /// Plain HTTP/1.1 publishes are read and answered by ``PublishFastPath`` (with the memory
    /// store); false sends every request through the general path, for tests comparing the
    /// two and for measuring what the fast path saves (the hidden `--publish-path general`).
    public var publishFastPath = true
    /// Test only (`--cluster-unsafe-ids`, hidden): a `postgres://` store takes ids from a plain
    /// sequence before commit and holds each transaction open a random few milliseconds: the
    /// classic backplane bug, so that the cluster tests can prove their order check catches it.
    public var clusterUnsafeIDs = false
    public var store: Store = .memory
    /// Threads serving connections (one fan-out shard each); defaults to the core count.
    public var eventLoopThreads = System.coreCount
    /// How long graceful shutdown spreads stream closes over.
    public var shutdownGrace: TimeAmount = .seconds(3)
    /// How long a client may take to send a complete request head.
    public var requestHeadTimeout: TimeAmount = .seconds(10)
    /// How long a client may take to send a request body, once its head is in (a body sent
    /// a byte at a time cannot hold a connection longer than this).
    public var requestBodyTimeout: TimeAmount = .seconds(30)
    /// Largest request header section accepted (larger: 431).
    public var maxHeaderBytes = 16 * 1024
    public var logger = Logger(label: "herald")
    /// Print `listening on http://HOST:PORT` on stdout once bound (the CLI does).
    public var announceListening = false

    public init() {}

    /// Descriptors kept free for publishers, `/health`, `/metrics`, files and the store when
    /// streams fill the server (SPEC §16).
    public static let fileDescriptorReserve = 256

    /// The stream limit in force: `maxConnections`, or the open-file limit minus the reserve.
    public var effectiveMaxConnections: Int {
        if let maxConnections { return maxConnections }
        return max(1, ProcessLimits.openFiles() - Self.fileDescriptorReserve)
    }

    /// Checks every value; the CLI and embedding code get the same errors. Each names the
    /// flag it is about.
    public func validate() throws(ConfigurationError) {
        func check(_ condition: Bool, _ message: @autoclosure () -> String) throws(ConfigurationError) {
            if !condition { throw ConfigurationError(message()) }
        }
        try check((0...65_535).contains(port), "--port must be 0...65535")
        try check((1...Self.maxHistory).contains(historyCapacity), "--history must be 1...\(Self.maxHistory)")
        try check((1...Self.maxHistory).contains(cacheCapacity), "--cache must be 1...\(Self.maxHistory)")
        try check(keepAlive.isFinite && keepAlive > 0 && keepAlive <= 86_400, "--keepalive must be more than 0 and at most 86400 seconds")
        try check((0...86_400_000).contains(retryMilliseconds), "--retry-ms must be 0...86400000")
        try check((1...(1 << 30)).contains(maxEventBytes), "--max-event-bytes must be 1...\(1 << 30)")
        try check((1...(1 << 30)).contains(maxBodyBytes), "--max-body-bytes must be 1...\(1 << 30)")
        try check((1...(1 << 30)).contains(maxQueuedBytes), "--max-queued-bytes must be 1...\(1 << 30)")
        try check((1...Self.maxHistory).contains(maxRetained), "--max-retained must be 1...\(Self.maxHistory)")
        if let maxConnections { try check(maxConnections >= 1, "--max-connections must be at least 1") }
        try check((1...256).contains(eventLoopThreads), "--threads must be 1...256")
        if let historyMaxAge { try check(historyMaxAge > .zero, "--history-max-age must be more than 0 seconds") }
        for key in publishKeys {
            try check(!key.isEmpty && !key.contains(" "), "--publish-key must be non-empty and contain no spaces")
        }
        if case .sqlite(let path) = store { try check(!path.isEmpty, "--store sqlite:PATH needs a file path") }
        for key in subscriberKeys {
            // RFC 7518 §3.2: an HS256 key must be at least as long as the hash (256 bits).
            try check(key.utf8.count >= 32, "--subscriber-key must be at least 32 bytes (RFC 7518 §3.2 asks HS256 keys for 256 bits); generate one with: openssl rand -base64 32")
        }
        if let subscriberAudience { try check(!subscriberAudience.isEmpty, "--subscriber-audience must not be empty") }
        try check((1...10_000).contains(h2MaxStreams), "--h2-max-streams must be 1...10000")
        try check((tlsCertificatePath == nil) == (tlsKeyPath == nil), "--tls-cert and --tls-key go together: give both (PEM files) or neither")
        for pattern in publicTopics {
            do {
                try TopicRules.validate(topic: pattern, forSubscription: true)
            } catch {
                throw ConfigurationError("--public-topic: \(error.detail)")
            }
        }
    }

    /// Whether subscribers need a token (SPEC §14).
    public var authorizesSubscribers: Bool { !subscriberKeys.isEmpty }

    /// The largest history, cache or retained count accepted (memory is the real limit).
    public static let maxHistory = 100_000_000

    /// Converts a number of seconds from a flag to a `TimeAmount`, refusing what is not a
    /// finite number in `range` (a `Double` like 1e300 or inf would trap on conversion).
    public static func duration(seconds: Double, flag: String, range: ClosedRange<Double>) throws(ConfigurationError) -> TimeAmount {
        guard seconds.isFinite, range.contains(seconds) else {
            throw ConfigurationError("\(flag) must be a number of seconds from \(range.lowerBound) to \(range.upperBound), not \(seconds)")
        }
        return .nanoseconds(Int64((seconds * 1_000_000_000).rounded()))
    }
}

/// A configuration value that cannot be used; the message names the flag.
public struct ConfigurationError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

extension TimeAmount {
    /// Whole seconds, as the CLI takes them.
    public typealias Seconds = Double
}
