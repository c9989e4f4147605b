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
    /// Origins allowed cross-origin; `*` applies to the subscribe endpoints only.
    public var corsOrigins: [String] = ["*"]
    /// Maximum open streams (plus waiting polls); nil for no limit.
    public var maxConnections: Int?
    public var maxEventBytes = 65_536
    public var maxBodyBytes = 1_048_576
    /// Unsent bytes a live stream may have queued before it is disconnected.
    public var maxQueuedBytes = 1_048_576
    /// Send streams close-delimited instead of chunked.
    public var noChunked = false
    /// Start the built-in stock-quote feed.
    public var demo = false
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
}

extension TimeAmount {
    /// Whole seconds, as the CLI takes them.
    public typealias Seconds = Double
}
