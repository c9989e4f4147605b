#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL
import NIOTLS

/// The server's TLS identity (SPEC §13): the certificate chain and key from PEM files, as one
/// `NIOSSLContext` shared by every new connection. ``reload()`` (on `SIGHUP`) reads the files
/// again: connections accepted afterwards use the new context; open ones keep theirs, so no
/// stream is dropped. A file that cannot be read or parsed is an error naming the file; on a
/// reload it is logged and the old context stays.
final class TLSContextHolder: Sendable {
    let certificatePath: String
    let keyPath: String
    private let current: NIOLockedValueBox<NIOSSLContext>

    init(certificatePath: String, keyPath: String) throws(TLSFileError) {
        self.certificatePath = certificatePath
        self.keyPath = keyPath
        self.current = NIOLockedValueBox(try Self.load(certificatePath: certificatePath, keyPath: keyPath))
    }

    /// The context for a connection being accepted now.
    var context: NIOSSLContext { current.withLockedValue { $0 } }

    /// Reads both files again and switches to them; on failure keeps the old ones.
    func reload(logger: Logger) {
        do {
            let fresh = try Self.load(certificatePath: certificatePath, keyPath: keyPath)
            current.withLockedValue { $0 = fresh }
            logger.notice("TLS certificate reloaded", metadata: ["herald.tls.certificate": "\(certificatePath)"])
        } catch {
            logger.error("TLS reload failed; still serving the previous certificate", metadata: ["error": "\(error)"])
        }
    }

    /// TLS 1.2 and 1.3 only, ALPN `h2` and `http/1.1`.
    static func load(certificatePath: String, keyPath: String) throws(TLSFileError) -> NIOSSLContext {
        for (path, what) in [(certificatePath, "certificate"), (keyPath, "private key")] where access(path, R_OK) != 0 {
            throw TLSFileError(path: path, what: what, cause: String(cString: strerror(errno)))
        }
        let chain: [NIOSSLCertificate]
        do {
            chain = try NIOSSLCertificate.fromPEMFile(certificatePath)
        } catch {
            throw TLSFileError(path: certificatePath, what: "certificate", cause: "not a PEM certificate (\(error))")
        }
        guard !chain.isEmpty else { throw TLSFileError(path: certificatePath, what: "certificate", cause: "no PEM certificate in it") }
        let key: NIOSSLPrivateKey
        do {
            key = try NIOSSLPrivateKey(file: keyPath, format: .pem)
        } catch {
            throw TLSFileError(path: keyPath, what: "private key", cause: "not a PEM private key (\(error))")
        }
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        configuration.minimumTLSVersion = .tlsv12
        configuration.applicationProtocols = ["h2", "http/1.1"]
        do {
            return try NIOSSLContext(configuration: configuration)
        } catch {
            throw TLSFileError(path: keyPath, what: "private key (does it match \(certificatePath)?)", cause: "\(error)")
        }
    }
}

/// A TLS file that could not be used.
public struct TLSFileError: Error, CustomStringConvertible {
    public var path: String
    public var what: String
    public var cause: String
    public var description: String { "cannot use \(path) as the TLS \(what): \(cause)" }
}

/// Closes a TLS connection whose handshake has not completed within `timeout` (the request
/// head timeout, SPEC §13): NIOSSL holds `channelActive` back until the handshake is done, so
/// the HTTP layer's own head timer never starts for a client that stays silent or stalls
/// mid-handshake. Removes itself once the handshake completes.
final class TLSHandshakeTimeout: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    private let timeout: TimeAmount
    private var timer: Scheduled<Void>?

    init(timeout: TimeAmount) {
        self.timeout = timeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        timer = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) {
            context.close(promise: nil)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        context.fireUserInboundEventTriggered(event)
        if let event = event as? TLSUserEvent, case .handshakeCompleted = event {
            timer?.cancel()
            timer = nil
            context.pipeline.syncOperations.removeHandler(self, promise: nil)
        }
    }
}
