import HTTPTypes
import HeraldCore
import NIOCore

/// A request as every endpoint sees it, whatever HTTP version carried it: the head as
/// swift-http-types' `HTTPRequest` (what an HTTP/2 stream also decodes to), the body when the
/// route takes one, and what the transport knows about the sender.
struct EndpointRequest {
    var head: HTTPRequest
    /// The complete body (only publishing reads one).
    var body: ByteBuffer?
    /// Who sends it, from the head (for the ``Authorizer``).
    var credentials: RequestCredentials
    /// A stream on this request cannot be chunked (an HTTP/1.0 client).
    var streamsCloseDelimited: Bool
    var eventLoop: any EventLoop
    var allocator: ByteBufferAllocator

    var method: HTTPRequest.Method { head.method }
    /// The request target: path and query.
    var target: String { head.path ?? "/" }
    /// The path without the query.
    var path: Substring {
        let target = self.target
        return target.firstIndex(of: "?").map { target[..<$0] } ?? target[...]
    }

    /// The first value of a header field (a repeated field is not joined: the first line
    /// counts, as it did before the responders).
    func header(_ name: HTTPField.Name) -> String? { head.headerFields[values: name].first }
    /// Every value of a header field, one per field line.
    func headers(_ name: HTTPField.Name) -> [String] { head.headerFields[values: name] }
    var origin: String? { header(.origin) }

    /// The query parameters, decoded as a form (`+` is a space); a bad escape is a 400.
    func queryItems() throws -> [(name: String, value: String)] {
        let target = self.target
        guard let question = target.utf8.firstIndex(of: UInt8(ascii: "?")) else { return [] }
        do {
            return try FormURLEncoded.parse(Array(target.utf8[target.utf8.index(after: question)...]))
        } catch {
            throw Problem(.badRequest, "query string: \(error.detail)")
        }
    }
}

/// What an endpoint answers.
enum EndpointReply {
    /// A complete answer.
    case answer(EndpointAnswer)
    /// A file streamed from disk (too large to hold), with its headers.
    case file(StaticFiles.Entry, headers: HTTPFields)
    /// Turn the connection (or the HTTP/2 stream) into an event stream. The transport writes
    /// the head and hands the stream to its shard.
    case stream(Shard.StreamRequest, headers: HTTPFields)
}

/// A complete answer, independent of the HTTP version that will carry it.
struct EndpointAnswer {
    var status: HTTPResponse.Status
    var headers: HTTPFields
    var body: ByteBuffer?
    /// The connection ends after this answer (HTTP/1.x; an HTTP/2 stream just ends).
    var closes = false

    /// A JSON answer; the body ends with a line feed, so a shell prompt starts on its own line.
    static func json(_ value: JSONValue, status: HTTPResponse.Status = .ok, headers: HTTPFields = [:],
                     allocator: ByteBufferAllocator) -> EndpointAnswer {
        let text = value.compactText
        var body = allocator.buffer(capacity: text.utf8.count + 1)
        body.writeString(text)
        body.writeStaticString("\n")
        var fields = headers
        fields[.contentType] = "application/json"
        return EndpointAnswer(status: status, headers: fields, body: body)
    }

    /// A problem document (RFC 9457).
    static func problem(_ problem: Problem, headers: HTTPFields = [:], allocator: ByteBufferAllocator) -> EndpointAnswer {
        var fields = headers
        fields[.contentType] = "application/problem+json"
        for (name, value) in problem.headers {
            if let name = HTTPField.Name(name) { fields.append(HTTPField(name: name, value: value)) }
        }
        var body = allocator.buffer(capacity: 128)
        body.writeString(problem.json)
        return EndpointAnswer(status: HTTPResponse.Status(code: Int(problem.status.code), reasonPhrase: problem.status.reasonPhrase),
                              headers: fields, body: body, closes: problem.closeConnection)
    }
}

/// What lives as long as one request's answer is pending: a waiting long poll registers how
/// to drop it, and the transport calls ``cancel()`` when the client goes away.
final class RequestScope {
    private var onCancel: (() -> Void)?
    private(set) var isCancelled = false

    /// Runs `cancel` if the request is abandoned before ``finish()``.
    func whenCancelled(_ cancel: @escaping () -> Void) {
        if isCancelled { cancel() } else { onCancel = cancel }
    }

    /// The answer is written: nothing is left to cancel.
    func finish() {
        onCancel = nil
    }

    /// The client went away.
    func cancel() {
        guard !isCancelled else { return }
        isCancelled = true
        let cancel = onCancel
        onCancel = nil
        cancel?()
    }
}

extension HTTPFields {
    /// Appends `(name, value)` pairs whose names are valid field names.
    mutating func append(_ pairs: [(String, String)]) {
        for (name, value) in pairs {
            if let name = HTTPField.Name(name) { append(HTTPField(name: name, value: value)) }
        }
    }
}
