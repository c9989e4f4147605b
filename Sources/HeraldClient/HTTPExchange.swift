import NIOCore
import NIOHTTP1
import NIOPosix

/// Where a Herald server is: `http://HOST[:PORT]` plus an optional path prefix (when it sits
/// behind a proxy under a path).
public struct ServerAddress: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int
    /// A path prefix without the trailing `/` (empty at the root).
    public var basePath: String

    public init(_ url: String) throws(HeraldClientError) {
        guard url.hasPrefix("http://") else {
            if url.hasPrefix("https://") {
                throw .badURL("\(url): https is not supported by this client yet; use http:// (or a local TLS proxy)")
            }
            throw .badURL("\(url): the URL must start with http://")
        }
        var rest = Substring(url.dropFirst("http://".count))
        var path = Substring()
        if let slash = rest.firstIndex(of: "/") {
            path = rest[slash...]
            rest = rest[..<slash]
        }
        var hostPart = rest
        var port = 80
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { throw .badURL("\(url): an unclosed '[' in the host") }
            hostPart = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            if after.hasPrefix(":") {
                guard let number = Int(after.dropFirst()), (1...65_535).contains(number) else { throw .badURL("\(url): a bad port") }
                port = number
            }
        } else if let colon = rest.lastIndex(of: ":") {
            hostPart = rest[..<colon]
            guard let number = Int(rest[rest.index(after: colon)...]), (1...65_535).contains(number) else {
                throw .badURL("\(url): a bad port")
            }
            port = number
        }
        guard !hostPart.isEmpty else { throw .badURL("\(url): no host") }
        self.host = String(hostPart)
        self.port = port
        var base = String(path)
        while base.hasSuffix("/") { base.removeLast() }
        self.basePath = base
    }

    public var description: String {
        let shown = host.contains(":") ? "[\(host)]" : host
        return "http://\(shown):\(port)\(basePath)"
    }

    /// The `Host` header value.
    var authority: String {
        let shown = host.contains(":") ? "[\(host)]" : host
        return port == 80 ? shown : "\(shown):\(port)"
    }
}

/// What went wrong, in words a terminal user can act on.
public enum HeraldClientError: Error, Equatable, Sendable, CustomStringConvertible {
    case badURL(String)
    /// The server could not be reached or the connection broke.
    case connection(String)
    /// The server answered with an error: its status and the problem detail.
    case refused(status: Int, detail: String)
    /// The answer was not what Herald sends.
    case protocolError(String)

    public var description: String {
        switch self {
        case .badURL(let text), .connection(let text), .protocolError(let text): return text
        case .refused(let status, let detail): return "\(status): \(detail)"
        }
    }
}

/// One HTTP/1.1 request over a connection of its own, the answer read as it arrives.
struct HTTPExchange {
    let address: ServerAddress
    let group: any EventLoopGroup

    /// Sends the request, then calls `onHead` with the response head and `onBody` with each
    /// body part until the answer ends (or `onBody` returns false to stop reading).
    func run(
        method: HTTPMethod, path: String, headers: [(String, String)], body: [UInt8]?,
        onHead: (HTTPResponseHead) throws -> Void, onBody: (ByteBuffer) throws -> Bool
    ) async throws {
        let channel: NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>
        do {
            channel = try await ClientBootstrap(group: group)
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .connectTimeout(.seconds(10))
                .connect(host: address.host, port: address.port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(wrappingChannelSynchronously: channel)
                    }
                }
        } catch {
            throw HeraldClientError.connection("cannot connect to \(address): \(error)")
        }
        try await channel.executeThenClose { inbound, outbound in
            var head = HTTPRequestHead(version: .http1_1, method: method, uri: address.basePath + path)
            head.headers.add(name: "Host", value: address.authority)
            head.headers.add(name: "User-Agent", value: "herald-client")
            for (name, value) in headers { head.headers.add(name: name, value: value) }
            if let body {
                head.headers.add(name: "Content-Length", value: String(body.count))
            }
            try await outbound.write(.head(head))
            if let body, !body.isEmpty {
                try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: body))))
            }
            try await outbound.write(.end(nil))
            var sawHead = false
            for try await part in inbound {
                switch part {
                case .head(let response):
                    sawHead = true
                    try onHead(response)
                case .body(let buffer):
                    if try !onBody(buffer) { return }
                case .end:
                    return
                }
            }
            if !sawHead { throw HeraldClientError.connection("\(address) closed the connection without answering") }
        }
    }

    /// A complete request and answer: status, headers and the whole body (at most `limit`).
    func fetch(method: HTTPMethod, path: String, headers: [(String, String)], body: [UInt8]?, limit: Int = 16 << 20)
        async throws -> (status: Int, headers: HTTPHeaders, body: [UInt8])
    {
        var status = 0
        var responseHeaders = HTTPHeaders()
        var collected: [UInt8] = []
        try await run(method: method, path: path, headers: headers, body: body, onHead: { head in
            status = Int(head.status.code)
            responseHeaders = head.headers
        }, onBody: { buffer in
            collected += buffer.readableBytesView
            if collected.count > limit { throw HeraldClientError.protocolError("the answer is larger than \(limit) bytes") }
            return true
        })
        return (status, responseHeaders, collected)
    }
}
