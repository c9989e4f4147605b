import HTTPTypes
import HeraldCore
import Logging
import NIOCore
import NIOHTTP1

/// Serves one HTTP/1.1 connection until it becomes an event stream (then it hands the
/// socket to a ``StreamConnection`` and leaves the pipeline) or closes.
///
/// It is the HTTP/1.1 transport of the version-neutral ``Responders``: it turns each request
/// into an ``EndpointRequest`` and writes the reply (an answer, a file from disk, or the head
/// of an event stream). NIO's `HTTPServerPipelineHandler` in front of it delivers one request
/// at a time, so keep-alive and pipelining need nothing here beyond answering in order. The
/// connection's lifecycle (timeouts, bodies, answers, parse errors) is decided by an
/// ``HTTPConnectionMachine``; this handler turns channel events into its events and carries
/// out the actions it returns.
final class HTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let server: ServerContext
    let responders: Responders
    var machine: HTTPConnectionMachine
    var request: HTTPRequestHead?
    var route = Route.unknownAPI
    /// Who sends the current request, read from its head.
    private var credentials: RequestCredentials?
    var body: ByteBuffer?
    var hasUnterminatedResponse = false
    /// The request being answered (a waiting long poll is cancelled through it when the
    /// connection closes).
    private var scope: RequestScope?
    /// The connection's one timer, re-armed lazily: the machine asks for a new deadline on
    /// every request (head, body, then idle keep-alive timeouts), and a later deadline than
    /// the scheduled one only moves ``timerDeadline``; the timer, when it fires early, waits
    /// again for the rest. A keep-alive publisher then costs no timer scheduling per request
    /// (measured: ~1.5 % of the server's CPU at 1000 single-event publishes/s).
    private var timer: Scheduled<Void>?
    private var timerFiresAt: NIODeadline?
    private var timerDeadline: (kind: HTTPConnectionMachine.Timer, at: NIODeadline)?
    /// Whether the peer is on the loopback interface (keyless publishing), read once per
    /// connection rather than per request.
    private var peerIsLoopbackCache: Bool?

    /// The HTTP/1.1 handlers below this one, removed when the connection becomes a stream.
    let handlers: HTTP1Handlers

    init(server: ServerContext, responders: Responders, handlers: HTTP1Handlers) {
        self.server = server
        self.responders = responders
        self.handlers = handlers
        self.machine = HTTPConnectionMachine(
            headTimeout: server.configuration.requestHeadTimeout, bodyTimeout: server.configuration.requestBodyTimeout,
            maxBodyBytes: server.configuration.maxBodyBytes)
    }

    var configuration: HeraldConfiguration { server.configuration }

    // MARK: Lifecycle and timeouts

    func channelActive(context: ChannelHandlerContext) {
        activate(context: context)
        context.fireChannelActive()
    }

    /// Added to a connection that is already active (HTTP/1.1 chosen by ALPN after the TLS
    /// handshake): the connection's life starts now.
    func handlerAdded(context: ChannelHandlerContext) {
        handlers.fastPath?.connection = (self, context)
        if context.channel.isActive { activate(context: context) }
    }

    private var activated = false

    private func activate(context: ChannelHandlerContext) {
        guard !activated else { return }
        activated = true
        perform(machine.connectionActive(now: context.eventLoop.now), context: context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        handlers.fastPath?.connection = nil
        stopTimer()
    }

    private func stopTimer() {
        timer?.cancel()
        timer = nil
        timerFiresAt = nil
        timerDeadline = nil
    }

    private func scheduleTimer(at deadline: NIODeadline, context: ChannelHandlerContext) {
        timer?.cancel()
        timerFiresAt = deadline
        timer = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [weak self] in
            guard let self else { return }
            self.timer = nil
            self.timerFiresAt = nil
            guard let wanted = self.timerDeadline else { return }
            let now = context.eventLoop.now
            if now < wanted.at {
                self.scheduleTimer(at: wanted.at, context: context)
                return
            }
            self.timerDeadline = nil
            self.perform(self.machine.timerFired(wanted.kind, now: now), context: context)
        }
    }

    private func peerIsLoopback(_ context: ChannelHandlerContext) -> Bool {
        if let known = peerIsLoopbackCache { return known }
        let loopback = PeerAddress.isLoopback(context.channel.remoteAddress)
        peerIsLoopbackCache = loopback
        return loopback
    }

    func channelInactive(context: ChannelHandlerContext) {
        stopTimer()
        machine.closed()
        scope?.cancel()
        scope = nil
        context.fireChannelInactive()
    }

    /// What the publish fast path in front of the decoder did (see ``PublishFastPath``).
    func fastPathReport(_ event: PublishFastPathEvent, context: ChannelHandlerContext) {
        switch event {
        case .answered:
            perform(machine.answeredOutside(now: context.eventLoop.now), context: context)
        case .awaitingBody:
            perform(machine.bodyPendingOutside(now: context.eventLoop.now), context: context)
        case .closing:
            stopTimer()
            machine.closed()
        }
    }

    /// Carries out the machine's actions.
    func perform(_ actions: [HTTPConnectionMachine.Action], context: ChannelHandlerContext) {
        // Whatever the machine does beyond waiting for the next request is the general
        // path's from now on: the fast path stands aside for good.
        if machine.state != .idle { handlers.fastPath?.disable() }
        for action in actions {
            switch action {
            case .arm(let kind, let deadline):
                timerDeadline = (kind, deadline)
                if let firesAt = timerFiresAt, firesAt <= deadline {
                    break // the scheduled timer fires first and waits on for the rest
                }
                scheduleTimer(at: deadline, context: context)
            case .cancelTimer:
                timerDeadline = nil // a scheduled timer finds nothing to do
            case .keepBody:
                break // the caller keeps the chunk
            case .dispatch:
                dispatch(context: context)
            case .refuse(var problem, let close):
                problem.closeConnection = close
                sendProblem(problem, context: context, request: request)
            case .sendContinue:
                if let request {
                    context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: .continue))), promise: nil)
                }
            case .sendRawAndClose(let problem):
                sendRawProblemAndClose(problem, context: context)
            case .close:
                context.close(promise: nil)
            case .lingeringClose:
                Self.lingeringClose(context)
            }
        }
    }

    /// Answers outside the request/response cycle (a timeout, a request that could not be
    /// parsed) by writing the bytes below the HTTP codec, then closes. NIO's pipelining
    /// handler rightly refuses a response for a request it never saw.
    private func sendRawProblemAndClose(_ problem: Problem, context: ChannelHandlerContext) {
        server.metrics.rejectedRequests.increment()
        let body = problem.json
        var text = "HTTP/1.1 \(problem.status.code) \(problem.status.reasonPhrase)\r\n"
        text += "Content-Type: application/problem+json\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n"
        text += body
        guard let codec = try? context.pipeline.syncOperations.context(handler: handlers.encoder) else {
            context.close(promise: nil)
            return
        }
        var buffer = context.channel.allocator.buffer(capacity: text.utf8.count)
        buffer.writeString(text)
        codec.writeAndFlush(NIOAny(buffer)).assumeIsolated().whenComplete { _ in Self.lingeringClose(context) }
    }

    /// Closes a connection after its last answer without losing that answer: the write side
    /// is shut first (the client reads the answer, then end of stream), and the socket is
    /// closed when the client closes or after 2 s. Closing at once while the client's unread
    /// bytes (a pipelined request, garbage) sit in the receive buffer makes the kernel send a
    /// reset, and a reset throws away the answer the client had not read yet (the fuzz test
    /// found this with a request pipelined behind a slower answer).
    static func lingeringClose(_ context: ChannelHandlerContext) {
        context.close(mode: .output, promise: nil)
        context.eventLoop.assumeIsolated().scheduleTask(in: .seconds(2)) { context.close(promise: nil) }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let parserError = error as? HTTPParserError {
            let problem: Problem
            switch parserError {
            case .headerOverflow:
                problem = Problem(.requestHeaderFieldsTooLarge, "the request header section is larger than \(configuration.maxHeaderBytes) bytes")
            default:
                problem = Problem(.badRequest, "malformed HTTP request (\(parserError))")
            }
            perform(machine.parseError(problem), context: context)
            return
        }
        if let decoderError = error as? ByteToMessageDecoderError, case .dataReceivedInErrorState = decoderError {
            // More bytes after a malformed request that is already being answered (or whose
            // answer waits for the one before it): that answer closes the connection.
            return
        }
        server.logger.debug("connection error", metadata: ["error": "\(error)"])
        machine.closed()
        context.close(promise: nil)
    }

    // MARK: Reading requests

    /// Request parts held back: delivered while an answer was being written (NIO's pipelining
    /// handler hands over the next buffered request from inside the write of the last
    /// answer's end, so answering it there would recurse once per pipelined request), or a
    /// new request while the connection's unsent output is over its limit (back-pressure:
    /// nothing more is answered until the client reads). Processed in order from the loop.
    private var backlog: [HTTPServerRequestPart] = []
    private var backlogScheduled = false
    /// How deep inside the writing of an answer's end we are.
    private var writingAnswer = 0

    private var isDone: Bool { machine.state == .closing || machine.state == .streaming }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        if writingAnswer > 0 || !backlog.isEmpty || (!context.channel.isWritable && Self.isHead(part)) {
            backlog.append(part)
            scheduleBacklog(context: context)
            return
        }
        handle(part, context: context)
    }

    private static func isHead(_ part: HTTPServerRequestPart) -> Bool {
        if case .head = part { return true }
        return false
    }

    private func scheduleBacklog(context: ChannelHandlerContext) {
        guard !backlogScheduled, context.channel.isWritable || !Self.isHead(backlog[0]) else { return }
        backlogScheduled = true
        context.eventLoop.assumeIsolated().execute {
            self.backlogScheduled = false
            while !self.backlog.isEmpty, self.writingAnswer == 0, !self.isDone {
                if !context.channel.isWritable && Self.isHead(self.backlog[0]) {
                    return // resumed by channelWritabilityChanged
                }
                self.handle(self.backlog.removeFirst(), context: context)
            }
            if self.isDone { self.backlog.removeAll() }
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable && !backlog.isEmpty { scheduleBacklog(context: context) }
        context.fireChannelWritabilityChanged()
    }

    private func handle(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        switch part {
        case .head(let head):
            guard machine.state == .idle else { return }
            request = head
            body = nil
            perform(machine.headReceived(examine(head, context: context), now: context.eventLoop.now), context: context)
        case .body(var chunk):
            let total = (body?.readableBytes ?? 0) + chunk.readableBytes
            let actions = machine.bodyReceived(total: total)
            if actions == [.keepBody] {
                if body == nil { body = chunk } else { body!.writeBuffer(&chunk) }
            } else {
                body = nil
                perform(actions, context: context)
            }
        case .end:
            perform(machine.endReceived(), context: context)
        }
    }

    /// What the head alone decides (SPEC §16): refusals (too long, unauthorised, too large)
    /// and whether a body is announced and wanted. Only a publish body is ever read.
    private func examine(_ head: HTTPRequestHead, context: ChannelHandlerContext) -> HTTPConnectionMachine.Head {
        let uri = head.uri
        let path = uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? uri
        route = Route(path: path)
        // Read once from the head; the endpoint gets the same.
        let credentials = RequestCredentials(head, peerIsLoopback: peerIsLoopback(context))
        self.credentials = credentials
        let lengthHeader = head.headers.first(name: "content-length")
        let length = lengthHeader.flatMap { HTTPNumber.parse($0) }
        let announcesBody = (length ?? 0) > 0 || lengthHeader.map({ HTTPNumber.parse($0) == nil }) == true
            || head.headers[canonicalForm: "transfer-encoding"].contains { $0.lowercased().contains("chunked") }
        let method = HTTPRequest.Method(head.method.rawValue) ?? .get
        let takesBody = route.takesBody(method)
        var refusal: Problem?
        if uri.utf8.count > 8192 {
            // Answered now and closed, whatever body may follow (waiting for it would let a
            // client that never sends it hold the connection).
            refusal = Problem(.uriTooLong, "the request target is longer than 8192 bytes", closeConnection: true)
        } else if let problem = responders.refusalAtHead(method: method, route: route, credentials: credentials) {
            refusal = problem
        } else if takesBody, let length, length > configuration.maxBodyBytes {
            // Reading a body that will be refused only wastes time.
            refusal = Problem(.payloadTooLarge, "the body is \(length) bytes; --max-body-bytes allows \(configuration.maxBodyBytes)",
                              closeConnection: true)
        }
        return HTTPConnectionMachine.Head(
            announcesBody: announcesBody, takesBody: takesBody, refusal: refusal,
            expectsContinue: head.headers[canonicalForm: "expect"].contains(where: { $0.lowercased() == "100-continue" }))
    }

    // MARK: Dispatch

    /// Hands the complete request to the responders and writes their reply.
    private func dispatch(context: ChannelHandlerContext) {
        guard let head = request else { return }
        guard let method = HTTPRequest.Method(head.method.rawValue) else {
            sendProblem(Problem(.badRequest, "the method is not a valid token"), context: context, request: head)
            return
        }
        var fields = HTTPFields()
        for (name, value) in head.headers {
            if let name = HTTPField.Name(name) { fields.append(HTTPField(name: name, value: value)) }
        }
        let endpointRequest = EndpointRequest(
            head: HTTPRequest(method: method, scheme: nil, authority: head.headers.first(name: "host"), path: head.uri, headerFields: fields),
            body: body,
            credentials: credentials ?? RequestCredentials(head, peerIsLoopback: peerIsLoopback(context)),
            streamsCloseDelimited: head.version.major == 1 && head.version.minor == 0,
            eventLoop: context.eventLoop, allocator: context.channel.allocator)
        body = nil
        let scope = RequestScope()
        self.scope = scope
        responders.respond(to: endpointRequest, route: route, scope: scope).assumeIsolated().whenComplete { result in
            scope.finish()
            if self.scope === scope { self.scope = nil }
            guard case .success(let reply) = result else {
                // Abandoned because the client left; should the connection still be there,
                // it gets an answer rather than silence.
                if context.channel.isActive && self.machine.mayAnswer {
                    self.sendProblem(Problem(.internalServerError, "the server failed to answer this request; the cause is in its log"),
                                     context: context, request: head)
                }
                return
            }
            switch reply {
            case .answer(let answer):
                self.respond(context: context, request: head, status: Self.status(answer.status),
                             headers: Self.pairs(answer.headers), body: answer.body, close: answer.closes)
            case .file(let entry, let headers):
                self.streamFile(entry, headers: Self.pairs(headers), context: context, request: head)
            case .stream(let stream, let headers):
                self.openStream(stream, headers: headers, context: context)
            }
        }
    }

    static func status(_ status: HTTPResponse.Status) -> HTTPResponseStatus {
        HTTPResponseStatus(statusCode: status.code, reasonPhrase: status.reasonPhrase)
    }

    static func pairs(_ fields: HTTPFields) -> [(String, String)] {
        fields.map { ($0.name.rawName, $0.value) }
    }

    /// Turns the connection into an event stream: the head through NIO's encoder, then the
    /// stream handed to its shard, which writes straight to the socket from then on.
    private func openStream(_ stream: Shard.StreamRequest, headers: HTTPFields, context: ChannelHandlerContext) {
        var stream = stream
        // Straight to the socket only on cleartext: over TLS every byte goes through NIOSSL.
        stream.direct = !configuration.streamsThroughPipeline && server.tls == nil
        let hub = server.hub
        guard machine.mayAnswer else {
            hub.openStreams.wrappingDecrement(ordering: .relaxed)
            return
        }
        var nioHeaders = HTTPHeaders(Self.pairs(headers))
        nioHeaders.add(name: stream.chunked ? "Transfer-Encoding" : "Connection", value: stream.chunked ? "chunked" : "close")
        machine.becameStream()
        // The head goes through the HTTP encoder; the stream's own bytes then follow it
        // straight to the socket (they are framed by Herald, see StoredEvent).
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: nioHeaders))), promise: nil)
        let start: () -> Void
        do {
            start = try hub.shard(for: context.eventLoop).open(stream, httpContext: context)
        } catch {
            hub.openStreams.wrappingDecrement(ordering: .relaxed)
            server.logger.debug("could not open stream", metadata: ["error": "\(error)"])
            machine.closed()
            context.close(promise: nil)
            return
        }
        // The HTTP handlers are not needed any more; they are removed after this read has
        // unwound. A direct stream starts at once (its writes pass them by); one that writes
        // through its pipeline starts once they are gone.
        let direct = stream.direct
        if direct { start() }
        let pipeline = context.pipeline
        let handlers = self.handlers
        context.eventLoop.assumeIsolated().execute {
            handlers.remove(from: pipeline, with: self)
            if !direct { start() }
        }
    }

    // MARK: Writing answers

    func sendProblem(_ problem: Problem, context: ChannelHandlerContext, request: HTTPRequestHead?) {
        server.metrics.rejectedRequests.increment()
        var headers: [(String, String)] = [("Content-Type", "application/problem+json")] + problem.headers
        if let request {
            let method = request.method == .OPTIONS ? HTTPRequest.Method.get : (HTTPRequest.Method(request.method.rawValue) ?? .get)
            headers += server.corsHeaders(origin: request.headers.first(name: "origin"), scope: route.corsScope(method))
        }
        var buffer = context.channel.allocator.buffer(capacity: 128)
        buffer.writeString(problem.json)
        respond(context: context, request: request, status: problem.status, headers: headers, body: buffer,
                close: problem.closeConnection)
    }

    /// Writes a complete response; keeps the connection for the next request unless the
    /// request or `close` says otherwise.
    func respond(context: ChannelHandlerContext, request: HTTPRequestHead?, status: HTTPResponseStatus,
                 headers extra: [(String, String)], body: ByteBuffer?, close: Bool = false) {
        guard let keepAlive = writeHead(context: context, request: request, status: status, headers: extra,
                                        contentLength: body?.readableBytes ?? 0, close: close) else { return }
        if let body, request?.method != .HEAD, status != .notModified, status != .noContent {
            context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        }
        finishResponse(context: context, keepAlive: keepAlive)
    }

    /// Writes a response head (with `Content-Length` and, when the connection will not be
    /// kept, `Connection: close`) and returns whether the connection is kept after it; nil
    /// when no answer may be written now.
    func writeHead(context: ChannelHandlerContext, request: HTTPRequestHead?, status: HTTPResponseStatus,
                   headers extra: [(String, String)], contentLength: Int, close: Bool) -> Bool? {
        guard !hasUnterminatedResponse, machine.mayAnswer else { return nil }
        let keepAlive = !close && (request?.isKeepAlive ?? false) && !machine.discardingBody
        var headers = HTTPHeaders(extra)
        if status != .noContent && status != .notModified {
            headers.replaceOrAdd(name: "Content-Length", value: String(contentLength))
        }
        if !keepAlive { headers.replaceOrAdd(name: "Connection", value: "close") }
        let version = request?.version ?? .http1_1
        hasUnterminatedResponse = true
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: version.major == 1 && version.minor == 0 ? .http1_0 : .http1_1,
                                                             status: status, headers: headers))), promise: nil)
        return keepAlive
    }

    /// Ends the response begun by ``writeHead(context:request:status:headers:contentLength:close:)``
    /// and readies the connection for the next request or closes it.
    func finishResponse(context: ChannelHandlerContext, keepAlive: Bool) {
        hasUnterminatedResponse = false
        let (kept, actions) = machine.answered(requestKeepsAlive: request?.isKeepAlive ?? false, close: !keepAlive, now: context.eventLoop.now)
        if kept {
            request = nil
            body = nil
        }
        writingAnswer += 1
        let written = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        writingAnswer -= 1
        if actions.contains(.lingeringClose) {
            // After the answer is written, not before.
            written.assumeIsolated().whenComplete { _ in Self.lingeringClose(context) }
        }
        perform(actions.filter { $0 != .lingeringClose }, context: context)
    }
}
