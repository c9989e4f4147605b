import Atomics
import Foundation
import HeraldCore
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix
import NIOSSL
import ServiceLifecycle

/// The Herald SSE server as a swift-service-lifecycle `Service`.
///
/// `run()` binds, serves until graceful shutdown is triggered (SIGINT/SIGTERM through a
/// `ServiceGroup`, or a test), then stops accepting, closes the streams spread over the grace
/// period so clients do not reconnect in one storm, and returns.
///
/// ```swift
/// var configuration = HeraldConfiguration()
/// configuration.port = 0
/// let server = HeraldServer(configuration: configuration)
/// let group = ServiceGroup(services: [server], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
/// try await group.run()
/// ```
public final class HeraldServer: Service, Sendable {
    /// This build's version (`herald --version`).
    public static let version = "0.10.0"

    public let configuration: HeraldConfiguration
    private let group: MultiThreadedEventLoopGroup
    private let listening: EventLoopPromise<SocketAddress>
    private let hub: Hub
    private let metrics: HeraldMetrics
    private let started = ManagedAtomic<Bool>(false)
    /// Where a new id sequence starts after (a memory store, or a new store file).
    private let freshStart: Int64
    /// The ring's capacity: the whole history with `memory`, a cache of the newest events
    /// with a store that keeps more.
    private let ringCapacity: Int

    public init(configuration: HeraldConfiguration) {
        self.configuration = configuration
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, configuration.eventLoopThreads))
        self.listening = group.next().makePromise(of: SocketAddress.self)
        self.metrics = HeraldMetrics()
        let start = Hub.memoryStoreStart(nowMicroseconds: WallClock.microsecondsSince1970())
        let store = makeEventStore(for: configuration, startingAfter: start, loop: group.next())
        // With a durable store the ring is a cache of its newest events.
        let ringCapacity = store.keepsHistoryBeyondCache
            ? max(1, min(configuration.historyCapacity, configuration.cacheCapacity)) : max(1, configuration.historyCapacity)
        self.ringCapacity = ringCapacity
        self.hub = Hub(store: store, capacity: ringCapacity, startingAfter: start,
                       maxRetained: configuration.maxRetained, metrics: metrics)
        self.freshStart = start
        var shards: [Shard] = []
        for loop in group.makeIterator() {
            shards.append(Shard(
                eventLoop: loop, hub: hub, startingAt: start,
                keepAlive: Self.keepAliveInterval(configuration.keepAlive),
                maxQueuedBytes: configuration.maxQueuedBytes, logger: configuration.logger))
        }
        hub.installShards(shards)
    }

    /// The keep-alive interval, clamped to what ``HeraldConfiguration/validate()`` allows
    /// (embedding code may skip validation; a conversion must never trap).
    static func keepAliveInterval(_ seconds: Double) -> TimeAmount {
        let clamped = seconds.isFinite ? min(max(0.001, seconds), 86_400) : 15
        return .nanoseconds(Int64(clamped * 1_000_000_000))
    }

    /// The address the server is bound to, once it is.
    public func listeningAddress() async throws -> SocketAddress {
        try await listening.futureResult.get()
    }

    public func run() async throws {
        precondition(!started.exchange(true, ordering: .relaxed), "a HeraldServer runs once")
        let logger = configuration.logger
        let store = hub.store
        var loadedTLS: TLSContextHolder?
        do {
            // The same checks the CLI makes, for code that builds a configuration itself.
            try configuration.validate()
            if let certificate = configuration.tlsCertificatePath, let key = configuration.tlsKeyPath {
                loadedTLS = try TLSContextHolder(certificatePath: certificate, keyPath: key)
            }
            try await openStore()
        } catch {
            listening.fail(error)
            await store.close()
            try? await group.shutdownGracefully()
            throw error
        }
        if let directory = store.cluster {
            // The cluster's client directory lists this node's clients and closes a token's
            // streams here when any node asks.
            let shards = hub.shards
            directory.attach(
                clients: { await Responders.localClients(shards, token: nil) },
                close: { token in for shard in shards { shard.eventLoop.execute { _ = shard.close(token: token) } } })
        }
        // The store's background work (a durable store's writer) runs beside the server as a
        // child task (structured: it is awaited below before the server returns).
        async let storeRun: Void = store.run()
        let retention = startRetention()
        let fileThreadPool = NIOThreadPool(numberOfThreads: 1)
        fileThreadPool.start()
        let tls = loadedTLS
        let context = ServerContext(configuration: configuration, hub: hub, metrics: metrics, fileThreadPool: fileThreadPool, tls: tls)
        // SIGHUP reloads the TLS files (SPEC §13): new connections get the new certificate.
        let reloadSignal = tls.map { holder -> any DispatchSourceSignal in
            signal(SIGHUP, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: SIGHUP, queue: .global())
            source.setEventHandler { holder.reload(logger: logger) }
            source.resume()
            return source
        }
        defer { reloadSignal?.cancel() }
        let responders = Responders(server: context)
        let channel: any Channel
        let maxQueuedBytes = max(1, configuration.maxQueuedBytes)
        let maxHeaderBytes = configuration.maxHeaderBytes
        let usesFastPath = PublishFastPath.applies(to: context)
        let fastPath: @Sendable () -> PublishFastPath? = {
            usesFastPath ? PublishFastPath(server: context, responders: responders) : nil
        }
        let headTimeout = configuration.requestHeadTimeout
        do {
            channel = try await ServerBootstrap(group: group)
                // Out of file descriptors (EMFILE/ENFILE), `accept` fails while the listener
                // stays readable: AcceptGovernor pauses accepting instead of spinning.
                .serverChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(AcceptGovernor(logger: logger))
                    }
                }
                .serverChannelOption(.backlog, value: 4096)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                // Accept up to 64 connections per wake-up (NIO's default is 4): a reconnect
                // storm of thousands of streams is drained from the backlog in far fewer loop
                // iterations.
                .serverChannelOption(.maxMessagesPerRead, value: 64)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelOption(.maxMessagesPerRead, value: 4)
                // NIO keeps each connection's last receive buffer for reuse, for as long as
                // the connection lives. A 2 KiB default would be most of an idle stream's
                // memory; request heads fit in 512 bytes, and the allocator grows for bodies.
                .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 512, maximum: 65_536))
                // The watermark at which a connection counts as not writable: BackPressureHandler
                // (in HTTP1Handlers) stops reading from it, HTTPHandler holds its next request,
                // a stream is closed as a slow consumer (SPEC §16).
                .childChannelOption(.writeBufferWaterMark, value: .init(low: maxQueuedBytes / 2, high: maxQueuedBytes))
                .childChannelInitializer { channel in
                    if let tls {
                        // HTTPS only: TLS first in the pipeline (a client that never finishes
                        // its handshake is cut at the request-head timeout), then ALPN picks
                        // HTTP/2 or HTTP/1.1.
                        do {
                            try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls.context))
                            try channel.pipeline.syncOperations.addHandler(TLSHandshakeTimeout(timeout: headTimeout))
                        } catch {
                            return channel.eventLoop.makeFailedFuture(error)
                        }
                        return channel.configureHTTP2SecureUpgrade(
                            h2ChannelConfigurator: { channel in
                                channel.eventLoop.makeCompletedFuture {
                                    try HTTP2Setup.configure(channel, server: context, responders: responders, secure: true)
                                }
                            },
                            http1ChannelConfigurator: { channel in
                                channel.eventLoop.makeCompletedFuture {
                                    let handlers = try HTTP1Handlers.install(on: channel, maxHeaderBytes: maxHeaderBytes, fastPath: fastPath())
                                    try channel.pipeline.syncOperations.addHandler(
                                        HTTPHandler(server: context, responders: responders, handlers: handlers))
                                }
                            })
                    }
                    return channel.eventLoop.makeCompletedFuture {
                        // Cleartext: HTTP/1.1, or HTTP/2 when the connection opens with its
                        // preface (h2c with prior knowledge); the sniffer decides and installs.
                        try channel.pipeline.syncOperations.addHandler(HTTP2PrefaceSniffer(timeout: headTimeout) { sniffer, me, http2 in
                            if http2 {
                                try HTTP2Setup.configure(sniffer.channel, server: context, responders: responders, secure: false,
                                                         position: .after(me))
                            } else {
                                let handlers = try HTTP1Handlers.install(on: sniffer.channel, maxHeaderBytes: maxHeaderBytes, fastPath: fastPath())
                                try sniffer.pipeline.syncOperations.addHandler(
                                    HTTPHandler(server: context, responders: responders, handlers: handlers))
                            }
                        })
                    }
                }
                .bind(host: configuration.host, port: configuration.port)
                .get()
        } catch {
            let error = StartError.cannotListen(host: configuration.host, port: configuration.port, cause: error)
            listening.fail(error)
            retention?.cancel()
            await store.close()
            await storeRun
            try? await fileThreadPool.shutdownGracefully()
            try? await group.shutdownGracefully()
            throw error
        }

        let address = channel.localAddress!
        Self.checkPublicFolder(configuration, logger: logger)
        let url = Self.url(for: address, secure: tls != nil)
        logger.info("listening", metadata: ["herald.url": "\(url)", "herald.history": "\(configuration.historyCapacity)"])
        if configuration.announceListening {
            // Under a supervisor stdout is a pipe, so flush at once.
            FileHandle.standardOutput.write(Data("listening on \(url)\n".utf8))
        }
        listening.succeed(address)
        let demo = configuration.demo ? DemoFeed(hub: hub, loop: group.next(), logger: logger) : nil
        demo?.start()

        await withGracefulShutdownHandler {
            try? await channel.closeFuture.get()
        } onGracefulShutdown: {
            logger.info("shutting down: no new connections, closing streams")
            channel.close(promise: nil)
        }
        // Stop accepting (also when cancelled rather than shut down gracefully).
        try? await channel.close()
        demo?.stop()
        await closeStreams(logger: logger, context: context)
        retention?.cancel()
        // Publishes still being written are committed (and answered) before the store closes.
        await store.close()
        await storeRun
        try? await fileThreadPool.shutdownGracefully()
        try? await group.shutdownGracefully()
        logger.info("stopped")
    }

    /// Opens the store and continues its history: the ring, the retained events and the
    /// idempotency keys from its snapshot, the shards from its newest id.
    private func openStore() async throws {
        let store = hub.store
        let cache = ringCapacity
        let snapshot: StoreSnapshot
        do {
            snapshot = try await store.open(sink: hub, cacheCapacity: cache, freshStart: freshStart)
        } catch {
            throw StoreError("cannot open the store \(store.description): \(error)")
        }
        guard store.keepsHistoryBeyondCache else { return }
        let newest = hub.restore(snapshot, cacheCapacity: cache)
        for shard in hub.shards {
            try await shard.eventLoop.submit { shard.reposition(to: newest) }.get()
        }
        configuration.logger.info("store opened", metadata: [
            "herald.store": "\(store.description)", "herald.events": "\(snapshot.eventCount)", "herald.newest": "\(newest)",
        ])
    }

    /// Once a second: a durable store prunes by count and age; the memory store's ring by
    /// age (it is bounded by count already).
    private func startRetention() -> RepeatedTask? {
        let maxAge = configuration.historyMaxAge
        let store = hub.store
        if !store.keepsHistoryBeyondCache && maxAge == nil { return nil }
        let hub = self.hub
        return group.next().scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { _ in
            if store.keepsHistoryBeyondCache {
                store.scheduleRetention()
            } else if let maxAge {
                hub.pruneRing(olderThan: WallClock.millisecondsSince1970() - maxAge.nanoseconds / 1_000_000)
            }
        }
    }

    /// Closes every stream at a random moment within the grace period, then waits for them
    /// to be gone (a little longer than the grace period at most).
    private func closeStreams(logger: Logger, context: ServerContext) async {
        context.http2Connections.goAway()
        let grace = configuration.shutdownGrace
        for shard in hub.shards {
            shard.eventLoop.execute {
                shard.closeAll(spreadOver: grace, retryMilliseconds: self.configuration.retryMilliseconds)
            }
        }
        let deadline = NIODeadline.now() + grace + .seconds(1)
        while hub.openStreams.load(ordering: .relaxed) > 0 && NIODeadline.now() < deadline {
            try? await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Warns at start when `--public` has no `index.html`: started from another directory,
    /// `/` would answer 404 with no hint why.
    static func checkPublicFolder(_ configuration: HeraldConfiguration, logger: Logger) {
        let index = URL(fileURLWithPath: configuration.publicDirectory).appendingPathComponent("index.html").path
        guard !FileManager.default.fileExists(atPath: index) else { return }
        let folder = URL(fileURLWithPath: configuration.publicDirectory).standardizedFileURL.path
        logger.warning("no index.html in the --public folder \(folder): / answers 404 (run herald from the repository, or pass --public DIR)")
    }

    static func url(for address: SocketAddress, secure: Bool = false) -> String {
        let host = address.ipAddress ?? "localhost"
        let port = address.port ?? 0
        let scheme = secure ? "https" : "http"
        if case .v6 = address { return "\(scheme)://[\(host)]:\(port)" }
        return "\(scheme)://\(host):\(port)"
    }
}

/// Why the server could not start, said so that the person starting it knows what to do.
public enum StartError: Error, CustomStringConvertible {
    case cannotListen(host: String, port: Int, cause: any Error)

    public var description: String {
        switch self {
        case .cannotListen(let host, let port, let cause):
            if let io = cause as? IOError, io.errnoCode == EADDRINUSE {
                return "cannot listen on \(host):\(port): the address is already in use (another herald or program has the port); choose another with --port"
            }
            if let io = cause as? IOError {
                return "cannot listen on \(host):\(port): \(String(cString: strerror(io.errnoCode)))"
            }
            return "cannot listen on \(host):\(port): \(cause)"
        }
    }
}
