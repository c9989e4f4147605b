import Logging
import NIOCore
import NIOPosix

/// What every connection handler shares: configuration, the hub, metrics, static files.
/// Immutable after start (the hub and the file cache guard their own state).
final class ServerContext: Sendable {
    let configuration: HeraldConfiguration
    let hub: Hub
    let metrics: HeraldMetrics
    let logger: Logger
    let staticFiles: StaticFiles
    let fileThreadPool: NIOThreadPool
    /// Open HTTP/2 connections (for GOAWAY on shutdown).
    let http2Connections = HTTP2Setup.Connections()
    /// Explicitly listed origins (everything but `*`).
    let explicitOrigins: Set<String>
    let allowsAnyOrigin: Bool
    /// Open streams and waiting polls allowed (SPEC §16: by default the open-file limit
    /// minus a reserve, so publishers and /health still get a descriptor).
    let maxConnections: Int
    /// Who may publish and manage clients (and, with SPEC §14, subscribe).
    let authorizer: Authorizer
    /// The TLS identity when the port serves HTTPS (`--tls-cert`, `--tls-key`).
    let tls: TLSContextHolder?

    init(configuration: HeraldConfiguration, hub: Hub, metrics: HeraldMetrics, fileThreadPool: NIOThreadPool, tls: TLSContextHolder? = nil) {
        self.configuration = configuration
        self.tls = tls
        self.hub = hub
        self.metrics = metrics
        self.logger = configuration.logger
        self.staticFiles = StaticFiles(root: configuration.publicDirectory)
        self.fileThreadPool = fileThreadPool
        self.explicitOrigins = Set(configuration.corsOrigins.filter { $0 != "*" })
        self.allowsAnyOrigin = configuration.corsOrigins.contains("*")
        self.maxConnections = configuration.effectiveMaxConnections
        // With subscriber keys, --demo's quotes stay public so the demo page still ticks.
        let publicTopics = configuration.publicTopics + (configuration.demo && configuration.authorizesSubscribers ? ["quotes/*"] : [])
        self.authorizer = Authorizer(
            publishKeys: configuration.publishKeys, explicitOrigins: explicitOrigins, subscriberKeys: configuration.subscriberKeys,
            audience: configuration.subscriberAudience, publicTopics: publicTopics)
    }

    /// The CORS response headers for a request from `origin` under `scope`.
    func corsHeaders(origin: String?, scope: CORSScope) -> [(String, String)] {
        guard let origin, scope != .none else { return [] }
        if explicitOrigins.contains(origin) {
            return [("Access-Control-Allow-Origin", origin), ("Access-Control-Allow-Credentials", "true"), ("Vary", "Origin")]
        }
        if scope == .open && allowsAnyOrigin {
            return [("Access-Control-Allow-Origin", "*")]
        }
        return []
    }
}
