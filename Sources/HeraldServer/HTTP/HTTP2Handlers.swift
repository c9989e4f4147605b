import HTTPTypes
import HeraldCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHPACK
import NIOHTTP1
import NIOHTTP2

/// HTTP/2 (SPEC §13): over TLS when ALPN picks `h2`, and on the cleartext port with prior
/// knowledge (the connection starts with the HTTP/2 preface). Every request is one HTTP/2
/// stream with its own ``HTTP2StreamHandler``, which feeds the same ``Responders`` as
/// HTTP/1.1; an event stream is one HTTP/2 stream, written through its stream channel.
enum HTTP2Setup {
    /// Makes `channel` speak HTTP/2: NIO's connection handler and multiplexer, at most
    /// `--h2-max-streams` concurrent streams, each stream's unsent output bounded by
    /// `--max-queued-bytes` (past it the stream is not writable, and a live event stream is
    /// reset as a slow consumer without stalling its siblings).
    static func configure(_ channel: any Channel, server: ServerContext, responders: Responders, secure: Bool,
                          position: ChannelPipeline.Position = .last) throws {
        let configuration = server.configuration
        var connection = NIOHTTP2Handler.ConnectionConfiguration()
        connection.initialSettings = [
            HTTP2Setting(parameter: .maxConcurrentStreams, value: configuration.h2MaxStreams),
            HTTP2Setting(parameter: .maxHeaderListSize, value: configuration.maxHeaderBytes),
            HTTP2Setting(parameter: .maxFrameSize, value: 1 << 14),
        ]
        var stream = NIOHTTP2Handler.StreamConfiguration()
        stream.outboundBufferSizeHighWatermark = max(1, configuration.maxQueuedBytes)
        stream.outboundBufferSizeLowWatermark = max(1, configuration.maxQueuedBytes / 2)
        let peerIsLoopback = PeerAddress.isLoopback(channel.remoteAddress)
        let idle = IdleConnectionGuard(channel: channel, timeout: configuration.requestHeadTimeout)
        _ = try channel.pipeline.syncOperations.configureHTTP2Pipeline(
            mode: .server, connectionConfiguration: connection, streamConfiguration: stream, streamDelegate: idle,
            position: position
        ) { streamChannel in
            streamChannel.eventLoop.makeCompletedFuture {
                try streamChannel.pipeline.syncOperations.addHandler(
                    HTTP2StreamHandler(server: server, responders: responders, secure: secure, peerIsLoopback: peerIsLoopback))
            }
        }
        try channel.pipeline.syncOperations.addHandler(ErrorLogger(logger: server.logger))
        // Known to the server until it closes, for the GOAWAY of a graceful shutdown.
        server.http2Connections.add(channel)
    }

    /// Logs what ends an HTTP/2 connection (protocol errors from the peer), at debug level.
    final class ErrorLogger: ChannelInboundHandler, Sendable {
        typealias InboundIn = Any
        let logger: Logger
        init(logger: Logger) { self.logger = logger }
        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            logger.debug("HTTP/2 connection error", metadata: ["error": "\(error)"])
            context.fireErrorCaught(error)
        }
    }

    /// Closes an HTTP/2 connection that has had no open stream for the request-head timeout,
    /// as an idle HTTP/1.1 keep-alive connection is closed: holding a connection open without
    /// asking for anything costs the server a descriptor, so it is not free for a client.
    final class IdleConnectionGuard: NIOHTTP2StreamDelegate, @unchecked Sendable {
        // @unchecked Sendable: every callback runs on the connection's event loop.
        private let channel: any Channel
        private let timeout: TimeAmount
        private var open = 0
        private var timer: Scheduled<Void>?

        init(channel: any Channel, timeout: TimeAmount) {
            self.channel = channel
            self.timeout = timeout
            arm()
        }

        private func arm() {
            let channel = self.channel
            timer = channel.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
        }

        func streamCreated(_ id: HTTP2StreamID, channel: any Channel) {
            open += 1
            timer?.cancel()
            timer = nil
        }

        func streamClosed(_ id: HTTP2StreamID, channel: any Channel) {
            open -= 1
            if open == 0 { arm() }
        }
    }

    /// The open HTTP/2 connections, for the GOAWAY of a graceful shutdown (SPEC §13).
    final class Connections: Sendable {
        private let channels = NIOLockedValueBox<[ObjectIdentifier: any Channel]>([:])

        func add(_ channel: any Channel) {
            let key = ObjectIdentifier(channel)
            channels.withLockedValue { $0[key] = channel }
            channel.closeFuture.whenComplete { _ in self.channels.withLockedValue { _ = $0.removeValue(forKey: key) } }
        }

        /// GOAWAY on every connection: no new streams; the open ones are then closed by the
        /// shards over the grace period.
        func goAway() {
            for channel in channels.withLockedValue({ Array($0.values) }) {
                let frame = HTTP2Frame(streamID: .rootStream, payload: .goAway(lastStreamID: .maxID, errorCode: .noError, opaqueData: nil))
                channel.writeAndFlush(frame, promise: nil)
            }
        }
    }

    /// Header fields that HTTP/2 forbids (RFC 9113 §8.2.2): never copied into a response.
    static let connectionSpecific: Set<String> = ["connection", "transfer-encoding", "keep-alive", "upgrade", "proxy-connection"]
}

/// One HTTP/2 request: its HEADERS and DATA frames in, the reply out as frames. The HTTP/2
/// counterpart of ``HTTPHandler``: the head decides what it can alone (SPEC §16: refusals,
/// bodies only for publishing), the endpoint answers, and an event stream takes the HTTP/2
/// stream over.
final class HTTP2StreamHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    private let server: ServerContext
    private let responders: Responders
    private let secure: Bool
    private let peerIsLoopback: Bool

    private var request: HTTPRequest?
    private var route = Route.unknownAPI
    private var credentials: RequestCredentials?
    private var takesBody = false
    private var body: ByteBuffer?
    /// The request is being answered (or was): later frames are ignored.
    private var answered = false
    private var scope: RequestScope?

    init(server: ServerContext, responders: Responders, secure: Bool, peerIsLoopback: Bool) {
        self.server = server
        self.responders = responders
        self.secure = secure
        self.peerIsLoopback = peerIsLoopback
    }

    func channelInactive(context: ChannelHandlerContext) {
        // A reset by the client frees the request at once (a waiting poll stops waiting).
        scope?.cancel()
        scope = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !answered else { return }
        switch unwrapInboundIn(data) {
        case .headers(let headers):
            if request == nil {
                head(headers.headers, context: context)
                if !answered && (headers.endStream || !takesBody) { dispatch(context: context) }
            } else if headers.endStream {
                dispatch(context: context) // trailers end the request
            }
        case .data(let frame):
            guard request != nil, takesBody, case .byteBuffer(var chunk) = frame.data else { return }
            let total = (body?.readableBytes ?? 0) + chunk.readableBytes
            if total > server.configuration.maxBodyBytes {
                answered = true
                body = nil
                sendProblem(Problem(.payloadTooLarge, "the body is over \(server.configuration.maxBodyBytes) bytes (--max-body-bytes)"),
                            context: context)
                return
            }
            if body == nil { body = chunk } else { body!.writeBuffer(&chunk) }
            if frame.endStream { dispatch(context: context) }
        default:
            break
        }
    }

    /// What the head alone decides (SPEC §16), as on HTTP/1.1.
    private func head(_ headers: HPACKHeaders, context: ChannelHandlerContext) {
        let method = headers.first(name: ":method").flatMap { HTTPRequest.Method($0) } ?? .get
        let target = headers.first(name: ":path") ?? "/"
        let authority = headers.first(name: ":authority") ?? headers.first(name: "host")
        var fields = HTTPFields()
        for (name, value, _) in headers where !name.hasPrefix(":") {
            if let fieldName = HTTPField.Name(name) { fields.append(HTTPField(name: fieldName, value: value)) }
        }
        request = HTTPRequest(method: method, scheme: secure ? "https" : "http", authority: authority, path: target, headerFields: fields)
        let path = target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? target
        route = Route(path: path)
        let credentials = RequestCredentials(
            authorization: headers.first(name: "authorization"), hosts: authority.map { [$0] } ?? [],
            origin: headers.first(name: "origin"), fetchSite: headers.first(name: "sec-fetch-site"), peerIsLoopback: peerIsLoopback)
        self.credentials = credentials
        takesBody = route.takesBody(method)
        var refusal: Problem?
        if target.utf8.count > 8192 {
            refusal = Problem(.uriTooLong, "the request target is longer than 8192 bytes")
        } else if let problem = responders.refusalAtHead(method: method, route: route, credentials: credentials) {
            refusal = problem
        } else if takesBody, let length = headers.first(name: "content-length").flatMap({ HTTPNumber.parse($0) }),
                  length > server.configuration.maxBodyBytes {
            refusal = Problem(.payloadTooLarge, "the body is \(length) bytes; --max-body-bytes allows \(server.configuration.maxBodyBytes)")
        }
        if let refusal {
            answered = true
            sendProblem(refusal, context: context)
        }
    }

    private func dispatch(context: ChannelHandlerContext) {
        guard !answered, let request, let credentials else { return }
        answered = true
        let endpointRequest = EndpointRequest(
            head: request, body: body, credentials: credentials, streamsCloseDelimited: false,
            eventLoop: context.eventLoop, allocator: context.channel.allocator)
        body = nil
        let scope = RequestScope()
        self.scope = scope
        responders.respond(to: endpointRequest, route: route, scope: scope).assumeIsolated().whenComplete { result in
            scope.finish()
            if self.scope === scope { self.scope = nil }
            guard context.channel.isActive else { return }
            switch result {
            case .failure:
                self.sendProblem(Problem(.internalServerError, "the server failed to answer this request; the cause is in its log"),
                                 context: context)
            case .success(.answer(let answer)):
                self.send(status: answer.status.code, headers: HTTPHandler.pairs(answer.headers),
                          body: request.method == .head ? nil : answer.body, context: context)
            case .success(.file(let entry, let headers)):
                self.sendFile(entry, headers: HTTPHandler.pairs(headers), head: request.method == .head, context: context)
            case .success(.stream(let stream, let headers)):
                self.openStream(stream, headers: HTTPHandler.pairs(headers), context: context)
            }
        }
    }

    // MARK: Writing

    private func responseHeaders(status: Int, _ headers: [(String, String)], contentLength: Int?) -> HPACKHeaders {
        var out = HPACKHeaders([(":status", String(status))])
        for (name, value) in headers where !HTTP2Setup.connectionSpecific.contains(name.lowercased()) {
            out.add(name: name.lowercased(), value: value)
        }
        if let contentLength, !out.contains(name: "content-length") { out.add(name: "content-length", value: String(contentLength)) }
        return out
    }

    private func send(status: Int, headers: [(String, String)], body: ByteBuffer?, context: ChannelHandlerContext) {
        let length = body?.readableBytes ?? 0
        let end = body == nil || length == 0
        context.write(wrapOutboundOut(.headers(.init(headers: responseHeaders(status: status, headers, contentLength: length),
                                                     endStream: end))), promise: nil)
        if let body, !end {
            context.write(wrapOutboundOut(.data(.init(data: .byteBuffer(body), endStream: true))), promise: nil)
        }
        context.flush()
    }

    private func sendProblem(_ problem: Problem, context: ChannelHandlerContext) {
        server.metrics.rejectedRequests.increment()
        var headers: [(String, String)] = [("content-type", "application/problem+json")] + problem.headers
        if let request {
            headers += server.corsHeaders(origin: request.headerFields[.origin], scope: route.corsScope(request.method == .options ? .get : request.method))
        }
        var buffer = context.channel.allocator.buffer(capacity: 128)
        buffer.writeString(problem.json)
        send(status: Int(problem.status.code), headers: headers, body: request?.method == .head ? nil : buffer, context: context)
    }

    /// A static file: held ones at once, large ones from disk in 64 KiB slices, each read
    /// once the stream took the last (HTTP/2 flow control paces it like a slow socket).
    private func sendFile(_ entry: StaticFiles.Entry, headers: [(String, String)], head: Bool, context: ChannelHandlerContext) {
        if let held = entry.body {
            send(status: 200, headers: headers, body: head ? nil : held, context: context)
            return
        }
        let pool = server.fileThreadPool
        let allocator = context.channel.allocator
        pool.runIfActive(eventLoop: context.eventLoop) { () throws -> FileSlices in
            try FileSlices(path: entry.path)
        }.assumeIsolated().whenComplete { result in
            guard case .success(let file) = result else {
                self.sendProblem(Problem(.notFound, "no such file"), context: context)
                return
            }
            let empty = head || entry.size == 0
            context.writeAndFlush(self.wrapOutboundOut(.headers(.init(
                headers: self.responseHeaders(status: 200, headers, contentLength: entry.size), endStream: empty))), promise: nil)
            if empty {
                pool.submit { _ in file.close() }
                return
            }
            file.send(
                from: 0, size: entry.size, pool: pool, context: context, allocator: allocator,
                write: { slice, last in
                    context.writeAndFlush(self.wrapOutboundOut(.data(.init(data: .byteBuffer(slice), endStream: last))))
                },
                finished: {},
                failed: { context.close(promise: nil) }) // RST_STREAM: the promised length cannot be met
        }
    }


    /// Turns this HTTP/2 stream into an event stream: HEADERS now, then the shard writes the
    /// events as DATA frames through the stream channel (no chunked framing: HTTP/2 frames
    /// the bytes itself).
    private func openStream(_ request: Shard.StreamRequest, headers: [(String, String)], context: ChannelHandlerContext) {
        var stream = request
        stream.direct = false
        stream.chunked = false
        stream.http2 = true
        let hub = server.hub
        context.writeAndFlush(wrapOutboundOut(.headers(.init(headers: responseHeaders(status: 200, headers, contentLength: nil)))),
                              promise: nil)
        let start: () -> Void
        do {
            start = try hub.shard(for: context.eventLoop).open(stream, httpContext: context)
        } catch {
            hub.openStreams.wrappingDecrement(ordering: .relaxed)
            context.close(promise: nil)
            return
        }
        // This handler is done; the stream handler (added after it) takes the channel.
        let pipeline = context.pipeline
        context.eventLoop.assumeIsolated().execute {
            pipeline.syncOperations.removeHandler(self, promise: nil)
            start()
        }
    }
}

/// The first handler of a cleartext connection: looks at its first bytes once. The HTTP/2
/// preface (`PRI * HTTP/2.0...`, h2c with prior knowledge, SPEC §13) makes it an HTTP/2
/// connection; anything else an HTTP/1.x one. The handlers of the protocol are installed
/// behind it only then (removing HTTP/1.1's decoder again would be deferred, and HTTP/2's
/// frames would reach it meanwhile), the bytes handed on, and the sniffer removed. A
/// connection that says nothing is closed after the request-head timeout.
final class HTTP2PrefaceSniffer: ChannelInboundHandler, RemovableChannelHandler, @unchecked Sendable {
    // @unchecked Sendable: confined to its connection's event loop (NIO wants a Sendable
    // handler to place others after it).
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    static let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)

    private var pending: ByteBuffer?
    private let timeout: TimeAmount
    private var timer: Scheduled<Void>?
    private let install: (ChannelHandlerContext, HTTP2PrefaceSniffer, _ http2: Bool) throws -> Void

    /// - Parameter install: adds the chosen protocol's handlers after the sniffer.
    init(timeout: TimeAmount, install: @escaping (ChannelHandlerContext, HTTP2PrefaceSniffer, _ http2: Bool) throws -> Void) {
        self.timeout = timeout
        self.install = install
    }

    func handlerAdded(context: ChannelHandlerContext) {
        timer = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) {
            // Silent (or stalled inside the preface): answered as HTTP/1.1 would answer a
            // request head that never came, 408, then closed.
            let problem = Problem(.requestTimeout, "no request arrived within \(self.timeout.nanoseconds / 1_000_000_000) s")
            let body = problem.json
            var text = "HTTP/1.1 408 Request Timeout\r\nContent-Type: application/problem+json\r\n"
            text += "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n" + body
            context.writeAndFlush(NIOAny(context.channel.allocator.buffer(string: text))).assumeIsolated().whenComplete { _ in
                HTTPHandler.lingeringClose(context)
            }
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var chunk = unwrapInboundIn(data)
        if pending == nil { pending = chunk } else { pending!.writeBuffer(&chunk) }
        let seen = pending!.readableBytesView.prefix(Self.preface.count)
        let http2: Bool
        if !seen.elementsEqual(Self.preface.prefix(seen.count)) {
            http2 = false
        } else if seen.count == Self.preface.count {
            http2 = true
        } else {
            return // a prefix of the preface so far
        }
        timer?.cancel()
        timer = nil
        do {
            try install(context, self, http2)
        } catch {
            context.close(promise: nil)
            return
        }
        let bytes = pending
        pending = nil
        if let bytes { context.fireChannelRead(wrapInboundOut(bytes)) }
        context.pipeline.syncOperations.removeHandler(self, promise: nil)
    }
}
