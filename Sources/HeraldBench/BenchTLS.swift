import NIOSSL

/// The client TLS context of `--tls`: TLS 1.2/1.3, ALPN `http/1.1` (herald-bench speaks
/// HTTP/1.1 inside), and no certificate verification — the benchmark runs on loopback
/// against a throwaway self-signed certificate.
enum BenchTLS {
    static func makeContext() throws -> NIOSSLContext {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv12
        configuration.certificateVerification = .none
        configuration.applicationProtocols = ["http/1.1"]
        return try NIOSSLContext(configuration: configuration)
    }
}
