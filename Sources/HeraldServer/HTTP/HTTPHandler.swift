import HeraldCore
import Logging
import NIOCore
import NIOHTTP1

/// Serves one HTTP/1.1 connection until it becomes an event stream (then it hands the
/// socket to a ``StreamConnection`` and leaves the pipeline) or closes.
///
/// NIO's `HTTPServerPipelineHandler` in front of it delivers one request at a time, so
/// keep-alive and pipelining need nothing here beyond answering in order. The handler also
/// enforces the request-head timeout and the body limit, and turns parser errors into
/// problem+json answers.
final class HTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    enum State {
        /// Waiting for a request head.
        case idle
        /// Reading a request's body.
        case receiving
        /// The request's answer is being produced (its body, if it has one that this route
        /// does not take, is being dropped as it arrives).
        case answering
        /// The connection is an event stream now; this handler is on its way out.
        case streaming
        case closing
    }

    let server: ServerContext
    var state = State.idle
    var request: HTTPRequestHead?
    var route = Route.unknownAPI
    var body: ByteBuffer?
    /// The request announced a body that is not wanted: its bytes are dropped as they
    /// arrive, and the connection closes after the answer (where the body ends is not
    /// worth reading to find out).
    var discardingBody = false
    /// Garbage that followed a request whose answer is still being produced: that answer
    /// goes out first, then this one, then the connection closes.
    var problemAfterAnswer: Problem?
    var hasUnterminatedResponse = false
    /// A long poll of this connection that is waiting for events.
    var pollWaiter: PollWaiter?
    private var headTimer: Scheduled<Void>?

    /// The HTTP/1.1 handlers below this one, removed when the connection becomes a stream.
    let handlers: HTTP1Handlers

    init(server: ServerContext, handlers: HTTP1Handlers) {
        self.server = server
        self.handlers = handlers
    }

    var configuration: HeraldConfiguration { server.configuration }

    // MARK: Lifecycle and timeouts

    func channelActive(context: ChannelHandlerContext) {
        armHeadTimer(context: context)
        context.fireChannelActive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        headTimer?.cancel()
        headTimer = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        headTimer?.cancel()
        headTimer = nil
        cancelPoll(context: context)
        context.fireChannelInactive()
    }

    /// A client gets `requestHeadTimeout` to send a complete request head (slow or idle
    /// connections are answered 408 and closed, so they cannot pin a socket forever).
    private func armHeadTimer(context: ChannelHandlerContext) {
        headTimer?.cancel()
        headTimer = context.eventLoop.assumeIsolated().scheduleTask(in: configuration.requestHeadTimeout) { [weak self] in
            guard let self, self.state == .idle else { return }
            self.sendRawProblemAndClose(
                Problem(.requestTimeout, "the request head did not arrive within \(self.configuration.requestHeadTimeout.nanoseconds / 1_000_000_000) s"),
                context: context)
        }
    }

    /// A request body must be complete within `requestBodyTimeout` of its head.
    private func armBodyTimer(context: ChannelHandlerContext) {
        headTimer?.cancel()
        headTimer = context.eventLoop.assumeIsolated().scheduleTask(in: configuration.requestBodyTimeout) { [weak self] in
            guard let self, self.state == .receiving || self.discardingBody else { return }
            if self.state != .receiving {
                // Its answer is out or on its way: no 408 may be spliced into it.
                self.state = .closing
                context.close(promise: nil)
                return
            }
            self.sendRawProblemAndClose(
                Problem(.requestTimeout, "the request body did not arrive within \(self.configuration.requestBodyTimeout.nanoseconds / 1_000_000_000) s"),
                context: context)
        }
    }

    /// Answers outside the request/response cycle (a timeout, a request that could not be
    /// parsed) by writing the bytes below the HTTP codec, then closes. NIO's pipelining
    /// handler rightly refuses a response for a request it never saw.
    func sendRawProblemAndClose(_ problem: Problem, context: ChannelHandlerContext) {
        guard state != .closing, state != .streaming else { return }
        state = .closing
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
            // A connection between requests is answered at once. One whose previous request
            // is still being answered (a file read, a poll, a durable publish) gets that
            // answer first: the garbage after a valid request must not cost its response.
            if state == .idle || state == .receiving {
                sendRawProblemAndClose(problem, context: context)
            } else if state == .answering {
                problemAfterAnswer = problem
            } else if state == .closing {
                // The last answer is being written; its completion closes the connection.
            } else {
                state = .closing
                context.close(promise: nil)
            }
            return
        }
        if let decoderError = error as? ByteToMessageDecoderError, case .dataReceivedInErrorState = decoderError {
            // More bytes after a malformed request that is already being answered (or whose
            // answer waits for the one before it): that answer closes the connection.
            return
        }
        server.logger.debug("connection error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    // MARK: Reading requests

    /// Request parts held back: delivered while an answer was being written (NIO's pipelining
    /// handler hands over the next buffered request from inside the write of the last
    /// answer's end, so answering it there would recurse once per pipelined request: a few
    /// thousand `GET /health` in one packet would overflow the stack), or a new request while
    /// the connection's unsent output is over its limit (back-pressure: nothing more is
    /// answered until the client reads). Processed in order from the event loop.
    private var backlog: [HTTPServerRequestPart] = []
    private var backlogScheduled = false
    /// How deep inside the writing of an answer's end we are.
    private var writingAnswer = 0

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
            while !self.backlog.isEmpty, self.writingAnswer == 0, self.state != .closing, self.state != .streaming {
                if !context.channel.isWritable && Self.isHead(self.backlog[0]) {
                    return // resumed by channelWritabilityChanged
                }
                self.handle(self.backlog.removeFirst(), context: context)
            }
            if self.state == .closing || self.state == .streaming { self.backlog.removeAll() }
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable && !backlog.isEmpty { scheduleBacklog(context: context) }
        context.fireChannelWritabilityChanged()
    }

    private func handle(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        switch part {
        case .head(let head):
            guard state == .idle else { return }
            headTimer?.cancel()
            headTimer = nil
            beginRequest(head, context: context)
        case .body(var chunk):
            switch state {
            case .receiving where !discardingBody:
                if (body?.readableBytes ?? 0) + chunk.readableBytes > configuration.maxBodyBytes {
                    body = nil
                    discardingBody = true
                    state = .answering
                    sendProblem(
                        Problem(.payloadTooLarge, "the body is larger than --max-body-bytes (\(configuration.maxBodyBytes) bytes)",
                                closeConnection: true),
                        context: context, request: request)
                    return
                }
                if body == nil {
                    body = chunk
                } else {
                    body!.writeBuffer(&chunk)
                }
            default:
                break
            }
        case .end:
            switch state {
            case .receiving:
                state = .answering
                headTimer?.cancel()
                headTimer = nil
                dispatch(context: context)
            default:
                if discardingBody {
                    // The unwanted body is over: its timer has nothing left to guard.
                    headTimer?.cancel()
                    headTimer = nil
                }
            }
        }
    }

    /// Decides from the head alone what happens to the request (SPEC §16): refusals
    /// (too long, unauthorised, too large) and requests to routes that take no body are
    /// answered at once, without reading a body; only a publish body is buffered.
    private func beginRequest(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        request = head
        body = nil
        discardingBody = false
        state = .receiving
        let uri = head.uri
        let path = uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? uri
        route = Route(path: path)
        let lengthHeader = head.headers.first(name: "content-length")
        let length = lengthHeader.flatMap { HTTPNumber.parse($0) }
        let announcesBody = (length ?? 0) > 0 || lengthHeader.map({ HTTPNumber.parse($0) == nil }) == true
            || head.headers[canonicalForm: "transfer-encoding"].contains { $0.lowercased().contains("chunked") }

        func answerNow(_ problem: Problem?) {
            // Whatever body follows is dropped unread, and the connection closes after the
            // answer if there is one.
            discardingBody = announcesBody
            state = .answering
            if announcesBody { armBodyTimer(context: context) }
            if let problem {
                var problem = problem
                problem.closeConnection = problem.closeConnection || announcesBody
                sendProblem(problem, context: context, request: head)
            } else {
                dispatch(context: context)
            }
        }

        if uri.utf8.count > 8192 {
            // Answer now and close, whatever body may follow (waiting for it would let a
            // client that never sends it hold the connection).
            answerNow(Problem(.uriTooLong, "the request target is longer than 8192 bytes", closeConnection: true))
            return
        }
        if head.method != .OPTIONS && route.requiresPublisher(head.method), let problem = authorize(head, context: context) {
            answerNow(problem)
            return
        }
        if announcesBody && !route.takesBody(head.method) {
            // Only publishing takes a body: anything else is answered from its head.
            answerNow(nil)
            return
        }
        if let length, length > configuration.maxBodyBytes {
            // Answer now and close: reading a body we will refuse only wastes time.
            answerNow(Problem(.payloadTooLarge, "the body is \(length) bytes; --max-body-bytes allows \(configuration.maxBodyBytes)",
                              closeConnection: true))
            return
        }
        if announcesBody { armBodyTimer(context: context) }
        if head.headers[canonicalForm: "expect"].contains(where: { $0.lowercased() == "100-continue" }) {
            context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .continue))), promise: nil)
        }
    }

    /// Publisher authorisation, by the server's ``Authorizer``.
    private func authorize(_ head: HTTPRequestHead, context: ChannelHandlerContext) -> Problem? {
        server.authorizer.publisher(RequestCredentials(head, peerIsLoopback: PeerAddress.isLoopback(context.channel.remoteAddress)))
    }

    // MARK: Dispatch

    private func dispatch(context: ChannelHandlerContext) {
        guard let request else { return }
        let method = request.method
        if method == .OPTIONS {
            answerOptions(context: context, request: request)
            return
        }
        do {
            switch (route, method) {
            case (.events, .GET): try subscribe(context: context, request: request)
            case (.events, .POST): try publish(context: context, request: request, directTo: nil)
            case (.events, .DELETE): try clearRetained(context: context, request: request)
            case (.clientEvents(let token), .POST):
                try validateToken(token)
                try publish(context: context, request: request, directTo: token)
            case (.clients, .GET): listClients(context: context, request: request, token: nil)
            case (.client(let token), .GET):
                try validateToken(token)
                listClients(context: context, request: request, token: token)
            case (.client(let token), .DELETE):
                try validateToken(token)
                disconnectClient(context: context, request: request, token: token)
            case (.poll, .GET): try longPoll(context: context, request: request)
            case (.health, .GET), (.health, .HEAD):
                respondJSON(context: context, request: request, status: .ok, json: "{\"status\":\"ok\"}")
            case (.metrics, .GET), (.metrics, .HEAD):
                serveMetrics(context: context, request: request)
            case (.staticFile(let path), .GET), (.staticFile(let path), .HEAD):
                serveStatic(context: context, request: request, path: path)
            case (.unknownAPI, _):
                throw Problem(.notFound, "no such endpoint: \(request.method.rawValue) \(request.uri.prefix(200))")
            default:
                throw Problem.methodNotAllowed(method, allowed: route.allowedMethods)
            }
        } catch let problem as Problem {
            sendProblem(problem, context: context, request: request)
        } catch let error as ValidationError {
            sendProblem(Problem(.badRequest, error.detail), context: context, request: request)
        } catch {
            // Logged, not shown: internal error text is no business of the client's.
            server.logger.error("request failed", metadata: ["error": "\(error)", "herald.path": "\(request.uri.prefix(200))"])
            sendProblem(Problem(.internalServerError, "the server failed to answer this request; the cause is in its log"),
                        context: context, request: request)
        }
    }

    func validateToken(_ token: String) throws {
        do { try TopicRules.validate(clientToken: token) } catch { throw Problem(.badRequest, error.detail) }
    }

    private func answerOptions(context: ChannelHandlerContext, request: HTTPRequestHead) {
        var headers: [(String, String)] = [("Allow", route.allowedMethods)]
        let requestedMethod = request.headers.first(name: "access-control-request-method").map { HTTPMethod(rawValue: $0) } ?? .GET
        let cors = server.corsHeaders(origin: request.headers.first(name: "origin"), scope: route.corsScope(requestedMethod))
        if !cors.isEmpty {
            headers += cors
            headers.append(("Access-Control-Allow-Methods", route.allowedMethods))
            headers.append(("Access-Control-Allow-Headers", "Last-Event-ID, Cache-Control, Authorization, Content-Type, Idempotency-Key, X-Requested-With"))
            headers.append(("Access-Control-Max-Age", "600"))
        }
        respond(context: context, request: request, status: .noContent, headers: headers, body: nil)
    }

    // MARK: Writing answers

    /// Query parameters of the current request.
    func queryItems(_ request: HTTPRequestHead) throws -> [(name: String, value: String)] {
        guard let question = request.uri.firstIndex(of: "?") else { return [] }
        do {
            return try FormURLEncoded.parse(Array(request.uri.utf8[request.uri.utf8.index(after: question)...]))
        } catch {
            throw Problem(.badRequest, "query string: \(error.detail)")
        }
    }

    /// A JSON answer; the body ends with a line feed (so a shell prompt starts on its own line).
    func respondJSON(context: ChannelHandlerContext, request: HTTPRequestHead?, status: HTTPResponseStatus, json: String,
                     headers: [(String, String)] = []) {
        var buffer = context.channel.allocator.buffer(capacity: json.utf8.count + 1)
        buffer.writeString(json)
        buffer.writeStaticString("\n")
        respond(context: context, request: request, status: status,
                headers: [("Content-Type", "application/json")] + headers, body: buffer)
    }

    func sendProblem(_ problem: Problem, context: ChannelHandlerContext, request: HTTPRequestHead?) {
        server.metrics.rejectedRequests.increment()
        var headers: [(String, String)] = [("Content-Type", "application/problem+json")] + problem.headers
        if let request {
            let method = request.method == .OPTIONS ? HTTPMethod.GET : request.method
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
        guard !hasUnterminatedResponse, state != .closing, state != .streaming else { return nil }
        let keepAlive = !close && (request?.isKeepAlive ?? false) && !discardingBody
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
        state = keepAlive ? .idle : .closing
        writingAnswer += 1
        let written = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        writingAnswer -= 1
        if let problem = problemAfterAnswer {
            problemAfterAnswer = nil
            if keepAlive {
                sendRawProblemAndClose(problem, context: context)
                return
            }
        }
        if keepAlive {
            self.request = nil
            self.body = nil
            armHeadTimer(context: context)
        } else {
            written.assumeIsolated().whenComplete { _ in Self.lingeringClose(context) }
        }
    }
}
