import HeraldCore
import NIOCore
import NIOHTTP1

/// An error answer: an RFC 9457 `application/problem+json` body whose `detail` tells the
/// caller what to fix, plus any headers the status needs (`Allow`, `Retry-After`, ...).
struct Problem: Error {
    var status: HTTPResponseStatus
    var detail: String
    var headers: [(String, String)] = []
    /// Close the connection after answering (the request could not be read to its end).
    var closeConnection = false

    init(_ status: HTTPResponseStatus, _ detail: String, headers: [(String, String)] = [], closeConnection: Bool = false) {
        self.status = status
        self.detail = detail
        self.headers = headers
        self.closeConnection = closeConnection
    }

    /// The RFC 9457 body, ending with a line feed (so a shell prompt starts on its own line).
    var json: String {
        JSONValue.object([
            ("type", .string("about:blank")), ("title", .string(status.reasonPhrase)),
            ("status", .integer(status.code)), ("detail", .string(detail)),
        ]).compactText + "\n"
    }

    static func methodNotAllowed(_ method: String, allowed: String) -> Problem {
        Problem(.methodNotAllowed, "\(method.prefix(32)) is not allowed here; use \(allowed)", headers: [("Allow", allowed)])
    }

    static func from(_ error: PublishError) -> Problem {
        let status: HTTPResponseStatus
        switch error.status {
        case .badRequest: status = .badRequest
        case .payloadTooLarge: status = .payloadTooLarge
        case .unsupportedMediaType: status = .unsupportedMediaType
        }
        return Problem(status, error.detail)
    }
}

extension Problem: Equatable {
    static func == (lhs: Problem, rhs: Problem) -> Bool {
        lhs.status == rhs.status && lhs.detail == rhs.detail && lhs.closeConnection == rhs.closeConnection
            && lhs.headers.count == rhs.headers.count && zip(lhs.headers, rhs.headers).allSatisfy { $0 == $1 }
    }
}
