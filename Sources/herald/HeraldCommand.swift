import ArgumentParser
import HeraldServer
import Logging
import NIOCore
import ServiceLifecycle

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `herald`: flags and `HERALD_*` environment variables -> ``HeraldConfiguration`` ->
/// a `ServiceGroup` that runs the server until SIGINT or SIGTERM. Nothing else lives here.
@main
struct HeraldCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "herald",
        abstract: "A Server-Sent Events server: publish with POST, subscribe with EventSource or curl.",
        discussion: """
        Every option can also be set by an environment variable: HERALD_ plus the option in upper \
        snake case (HERALD_PORT, HERALD_RETRY_MS, ...). Repeatable options take a comma-separated list \
        there (HERALD_PUBLISH_KEY=k1,k2); flags take 1/true/yes/on. A command-line option wins over its variable.

        Serving is the default ('herald serve ...' is the same). The same program is a client: 'herald sub --help', \
        'herald pub --help'; and 'herald token --help' mints subscriber tokens.
        """,
        version: HeraldServer.version
    )

    @Option(help: "Address to listen on.")
    var host = "127.0.0.1"

    @Option(help: "Port to listen on (0 picks a free one; the bound address is printed).")
    var port = 8080

    @Option(name: .customLong("public"), help: "Folder of static files served under /.")
    var publicDirectory = "./public"

    @Option(help: "Events kept in the history for replay (the ring with the memory store, the file with sqlite).")
    var history = 10_000

    @Option(name: .customLong("history-max-age"), help: "Seconds after which an event leaves the history (default: kept until --history pushes it out).")
    var historyMaxAge: Double?

    @Option(help: "With --store sqlite: how many of the newest events are also kept in memory (default 100000, at most --history).")
    var cache = 100_000

    @Option(help: "Seconds of silence before a stream gets a ':' keep-alive comment.")
    var keepalive: Double = 15

    @Option(name: .customLong("retry-ms"), help: "The retry: hint sent to clients, in milliseconds.")
    var retryMilliseconds = 3000

    @Option(name: .customLong("publish-key"), help: "Bearer key accepted for publishing and /clients (repeatable). Without any, only loopback peers may publish.")
    var publishKeys: [String] = []

    @Option(name: .customLong("subscriber-key"), help: "HS256 key (at least 32 bytes) that signs subscriber tokens (repeatable, for rotation). With any, subscribing needs a token granting the topics (SPEC §14).")
    var subscriberKeys: [String] = []

    @Option(name: .customLong("subscriber-audience"), help: "With --subscriber-key: a token's 'aud' must contain this.")
    var subscriberAudience: String?

    @Option(name: .customLong("public-topic"), help: "With --subscriber-key: a topic pattern anyone may subscribe to without a token (repeatable).")
    var publicTopics: [String] = []

    @Option(name: .customLong("tls-cert"), help: "PEM certificate (the chain may follow it): with --tls-key the port serves HTTPS only (TLS 1.2/1.3). SIGHUP reloads both files.")
    var tlsCertificate: String?

    @Option(name: .customLong("tls-key"), help: "PEM private key of --tls-cert.")
    var tlsKey: String?

    @Option(name: .customLong("h2-max-streams"), help: "Concurrent HTTP/2 streams (event streams or requests) per connection.")
    var h2MaxStreams = 100

    @Option(name: .customLong("cors-origin"), help: "Allowed cross-origin origin (repeatable; default '*' for the subscribe endpoints).")
    var corsOrigins: [String] = []

    @Option(name: .customLong("max-connections"), help: "Maximum open streams; more get 503 with Retry-After (default: the open-file limit minus 256).")
    var maxConnections: Int?

    @Option(name: .customLong("max-retained"), help: "Topics that may hold a retained event; past it the oldest retained event is dropped.")
    var maxRetained = 100_000

    @Option(name: .customLong("max-event-bytes"), help: "Largest event data in bytes.")
    var maxEventBytes = 65_536

    @Option(name: .customLong("max-body-bytes"), help: "Largest publish body in bytes.")
    var maxBodyBytes = 1_048_576

    @Option(name: .customLong("max-queued-bytes"), help: "Unsent bytes per stream before it is disconnected as a slow consumer.")
    var maxQueuedBytes = 1_048_576

    @Flag(name: .customLong("no-chunked"), help: "Send streams close-delimited instead of chunked.")
    var noChunked = false

    @Flag(help: "Start the built-in stock-quote feed.")
    var demo = false

    @Option(name: .customLong("stream-writes"), help: .hidden)
    var streamWrites = "direct"

    @Option(name: .customLong("publish-path"), help: .hidden)
    var publishPath = "fast"

    @Option(help: "Event store: 'memory' (the default), 'sqlite:PATH' (durable: survives restart and kill -9) or 'postgres://USER:PASSWORD@HOST:PORT/DB' (cluster mode: every node on the same database shares one history).")
    var store = "memory"

    @Flag(name: .customLong("cluster-unsafe-ids"), help: .hidden)
    var clusterUnsafeIDs = false

    @Option(help: "Event-loop threads (one fan-out shard each); default: one per core.")
    var threads: Int?

    @Option(name: .customLong("shutdown-grace"), help: "Seconds over which streams are closed on shutdown.")
    var shutdownGrace: Double = 3

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel = "info"

    func validate() throws {
        _ = try makeConfiguration()
    }

    /// Flags -> configuration, validated; every refusal is a usage error naming the flag.
    func makeConfiguration() throws -> HeraldConfiguration {
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("--log-level '\(logLevel)' is not a level") }
        do {
            var configuration = HeraldConfiguration()
            configuration.host = host
            configuration.port = port
            configuration.publicDirectory = publicDirectory
            configuration.historyCapacity = history
            configuration.historyMaxAge = try historyMaxAge.map {
                try HeraldConfiguration.duration(seconds: $0, flag: "--history-max-age", range: 0.001...(100 * 365 * 86_400))
            }
            configuration.cacheCapacity = cache
            configuration.store = try HeraldConfiguration.Store(url: store)
            configuration.clusterUnsafeIDs = clusterUnsafeIDs
            configuration.keepAlive = keepalive
            _ = try HeraldConfiguration.duration(seconds: keepalive, flag: "--keepalive", range: 0.001...86_400)
            configuration.retryMilliseconds = retryMilliseconds
            configuration.publishKeys = publishKeys
            configuration.tlsCertificatePath = tlsCertificate
            configuration.tlsKeyPath = tlsKey
            configuration.h2MaxStreams = h2MaxStreams
            configuration.subscriberKeys = subscriberKeys
            configuration.subscriberAudience = subscriberAudience
            configuration.publicTopics = publicTopics
            configuration.corsOrigins = corsOrigins.isEmpty ? ["*"] : corsOrigins
            configuration.maxConnections = maxConnections
            configuration.maxRetained = maxRetained
            configuration.maxEventBytes = maxEventBytes
            configuration.maxBodyBytes = maxBodyBytes
            configuration.maxQueuedBytes = maxQueuedBytes
            configuration.noChunked = noChunked
            configuration.demo = demo
            switch streamWrites {
            case "direct": configuration.streamsThroughPipeline = false
            case "pipeline": configuration.streamsThroughPipeline = true
            default: throw ValidationError("--stream-writes must be 'direct' or 'pipeline'")
            }
            switch publishPath {
            case "fast": configuration.publishFastPath = true
            case "general": configuration.publishFastPath = false
            default: throw ValidationError("--publish-path must be 'fast' or 'general'")
            }
            if let threads { configuration.eventLoopThreads = threads }
            configuration.shutdownGrace = try HeraldConfiguration.duration(seconds: shutdownGrace, flag: "--shutdown-grace", range: 0...60)
            try configuration.validate()
            return configuration
        } catch let error as ConfigurationError {
            throw ValidationError(error.description)
        }
    }

    func run() async throws {
        // One socket per stream: use every file descriptor the hard limit allows.
        ProcessLimits.raiseOpenFiles()
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        var logger = Logger(label: "herald")
        logger.logLevel = level

        var configuration = try makeConfiguration()
        configuration.logger = logger
        configuration.announceListening = true

        let server = HeraldServer(configuration: configuration)
        let group = ServiceGroup(configuration: .init(
            services: [.init(service: server)],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger))
        try await group.run()
    }

    /// Parses the command line with `HERALD_*` variables filled in for options it lacks.
    static func main() async {
        var arguments = Array(CommandLine.arguments.dropFirst())
        switch arguments.first {
        case "token":
            TokenCommand.main(Array(arguments.dropFirst()))
            return
        case "sub":
            await SubCommand.main(Array(arguments.dropFirst()))
            return
        case "pub":
            await PubCommand.main(Array(arguments.dropFirst()))
            return
        case "serve":
            arguments.removeFirst()
        default:
            break
        }
        do {
            let merged = try EnvironmentDefaults.merge(arguments: arguments, environment: EnvironmentDefaults.processEnvironment())
            var command = try parseAsRoot(merged)
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }
}
