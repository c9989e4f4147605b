import HTTPTypes
import HeraldCore
import NIOCore

/// Every endpoint of SPEC §1–§7, on HTTP-version-neutral types: a request in, a future
/// reply out (an answer, a file, or "open a stream"). The HTTP/1.1 handler is one transport
/// that feeds it; an HTTP/2 stream is another. Nothing here writes to a channel.
///
/// One file per endpoint group: `Responders+Subscribe`, `+Publish`, `+Poll`, `+Clients`,
/// `+Static`, `+Operations`.
final class Responders: Sendable {
    let server: ServerContext

    init(server: ServerContext) {
        self.server = server
    }

    var configuration: HeraldConfiguration { server.configuration }

    /// Answers `request` on `route`. The future never fails: errors become problem answers.
    func respond(to request: EndpointRequest, route: Route, scope: RequestScope) -> EventLoopFuture<EndpointReply> {
        let loop = request.eventLoop
        if request.method == .options {
            return loop.makeSucceededFuture(.answer(options(request, route: route)))
        }
        do {
            switch (route, request.method) {
            case (.events, .get):
                return try afterCatchingUp(request) { try self.subscribe(request) }
            case (.events, .post), (.clientEvents, .post):
                // Its checks belong in `planPublish`, which the fast path runs too.
                return try publish(request, route: route)
            case (.events, .delete):
                return try clearRetained(request, route: route)
            case (.clients, .get):
                return listClients(request, route: route, token: nil)
            case (.client(let token), .get):
                try Self.validate(token: token)
                return listClients(request, route: route, token: token)
            case (.client(let token), .delete):
                try Self.validate(token: token)
                return disconnect(request, route: route, token: token)
            case (.poll, .get):
                return try afterCatchingUp(request) { try self.longPoll(request, scope: scope) }
            case (.health, .get), (.health, .head):
                return loop.makeSucceededFuture(.answer(health(request)))
            case (.metrics, .get), (.metrics, .head):
                return metrics(request)
            case (.staticFile(let path), .get), (.staticFile(let path), .head):
                return staticFile(request, route: route, path: path)
            case (.unknownAPI, _):
                throw Problem(.notFound, "no such endpoint: \(request.method.rawValue) \(request.target.prefix(200))")
            default:
                throw Problem.methodNotAllowed(request.method.rawValue, allowed: route.allowedMethods)
            }
        } catch {
            return loop.makeSucceededFuture(.answer(answer(for: error, request, route: route)))
        }
    }

    /// `/health`: 200 `ok`, or 503 `degraded` while the store cannot take publishes (a
    /// cluster's database unreachable); streams stay open meanwhile.
    func health(_ request: EndpointRequest) -> EndpointAnswer {
        let store = server.hub.store
        guard store.isAvailable else {
            let json = JSONValue.object([
                ("status", .string("degraded")), ("store", .string("unreachable")),
                ("detail", .string("the event store (\(store.description)) cannot be reached: publishing answers 503, open streams stay open")),
            ])
            var answer = EndpointAnswer.json(json, allocator: request.allocator)
            answer.status = .serviceUnavailable
            answer.headers[.retryAfter] = "1"
            return answer
        }
        return .json(.object([("status", .string("ok"))]), allocator: request.allocator)
    }

    /// Runs `body` once this node has delivered the request's `Last-Event-ID` when that id is
    /// newer than anything here: in a cluster an id handed out by another node may be a few
    /// milliseconds ahead of this one (SPEC §12, resume anywhere). Waits at most 2 s; an id
    /// that no node gave is then reset as unknown.
    func afterCatchingUp(_ request: EndpointRequest, _ body: @escaping () throws -> EventLoopFuture<EndpointReply>) throws
        -> EventLoopFuture<EndpointReply>
    {
        let hub = server.hub
        guard hub.store.cluster != nil else { return try body() }
        var subscription = try parseSubscription(request)
        guard let id = subscription.lastEventID.flatMap(EventIDParser.parse), id > hub.newestID else { return try body() }
        // Authorised before waiting: an anonymous request must not make the node wait or read.
        _ = try authorizeSubscriber(request, &subscription)
        // The wait completes on the request's loop (its promise is made there), where the
        // transport's request scope lives.
        return hub.store.awaitDelivery(through: id, timeout: .seconds(2), on: request.eventLoop).assumeIsolated().flatMap {
            do {
                return try body()
            } catch {
                return request.eventLoop.makeSucceededFuture(.answer(self.answer(for: error, request, route: .events)))
            }
        }.nonisolated()
    }

    /// What a transport must ask as soon as a request head arrives, before it reads any body:
    /// whether the request is refused from its head alone (SPEC §16: authorisation is decided
    /// from the head). Every transport calls this; nil means go on.
    func refusalAtHead(method: HTTPRequest.Method, route: Route, credentials: RequestCredentials) -> Problem? {
        guard method != .options, route.requiresPublisher(method) else { return nil }
        return server.authorizer.publisher(credentials)
    }

    /// A thrown error as an answer: a ``Problem`` or validation error as it says; anything
    /// else as a 500 whose cause goes to the log, not to the client.
    func answer(for error: any Error, _ request: EndpointRequest, route: Route) -> EndpointAnswer {
        switch error {
        case let problem as Problem:
            return self.problem(problem, request, route: route)
        case let error as ValidationError:
            return self.problem(Problem(.badRequest, error.detail), request, route: route)
        default:
            server.logger.error("request failed", metadata: ["error": "\(error)", "herald.path": "\(Self.loggable(request.target))"])
            return self.problem(Problem(.internalServerError, "the server failed to answer this request; the cause is in its log"),
                                request, route: route)
        }
    }

    /// A problem answer with the route's CORS headers, counted in `herald_http_errors_total`.
    func problem(_ problem: Problem, _ request: EndpointRequest, route: Route) -> EndpointAnswer {
        server.metrics.rejectedRequests.increment()
        let method = request.method == .options ? HTTPRequest.Method.get : request.method
        var headers = HTTPFields()
        headers.append(server.corsHeaders(origin: request.origin, scope: route.corsScope(method)))
        return .problem(problem, headers: headers, allocator: request.allocator)
    }

    /// A request target fit for a log line: at most 200 characters, and the value of any
    /// `access_token` query parameter (a subscriber's bearer token, SPEC §14) replaced.
    static func loggable(_ target: String) -> String {
        guard let mark = target.firstIndex(of: "?") else { return String(target.prefix(200)) }
        var pairs: [String] = []
        for pair in target[target.index(after: mark)...].split(separator: "&", omittingEmptySubsequences: false) {
            let name = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)[0]
            // Judged by the decoded name (`access%5Ftoken` is the same parameter).
            let decoded = (try? FormURLEncoded.decode(name.utf8)) ?? String(name)
            pairs.append(decoded == "access_token" ? "\(name)=REDACTED" : String(pair))
        }
        return String((target[...mark] + pairs.joined(separator: "&")).prefix(200))
    }

    static func validate(token: String) throws {
        do { try TopicRules.validate(clientToken: token) } catch { throw Problem(.badRequest, error.detail) }
    }

    /// `OPTIONS`: `Allow`, and a CORS preflight answer for origins the route admits.
    private func options(_ request: EndpointRequest, route: Route) -> EndpointAnswer {
        var headers = HTTPFields()
        headers[.allow] = route.allowedMethods
        let requested = request.header(.accessControlRequestMethod).flatMap { HTTPRequest.Method(rawValue: $0) } ?? .get
        let cors = server.corsHeaders(origin: request.origin, scope: route.corsScope(requested))
        if !cors.isEmpty {
            headers.append(cors)
            headers[.accessControlAllowMethods] = route.allowedMethods
            headers[.accessControlAllowHeaders] =
                "Last-Event-ID, Cache-Control, Authorization, Content-Type, Idempotency-Key, X-Requested-With"
            headers[.accessControlMaxAge] = "600"
        }
        return EndpointAnswer(status: .noContent, headers: headers, body: nil)
    }
}
