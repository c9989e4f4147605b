import HTTPTypes
import HeraldCore

/// Where a request path leads. API paths are matched on the raw path; everything else is a
/// static file under `--public`.
enum Route: Equatable {
    case events
    case poll
    case clients
    case client(token: String)
    case clientEvents(token: String)
    case health
    case metrics
    case staticFile(path: String)
    case unknownAPI

    init<S: StringProtocol>(path: S) {
        let path = String(path)
        switch path {
        case "/events": self = .events
        case "/poll": self = .poll
        case "/clients": self = .clients
        case "/health": self = .health
        case "/metrics": self = .metrics
        default:
            if path.hasPrefix("/clients/") {
                let rest = path.dropFirst("/clients/".count).split(separator: "/", omittingEmptySubsequences: false)
                let token = (try? FormURLEncoded.decode(Array(rest[0].utf8), plusIsSpace: false)) ?? String(rest[0])
                if rest.count == 1 {
                    self = .client(token: token)
                } else if rest.count == 2 && rest[1] == "events" {
                    self = .clientEvents(token: token)
                } else {
                    self = .unknownAPI
                }
            } else if path.hasPrefix("/events/") || path.hasPrefix("/poll/") {
                self = .unknownAPI
            } else {
                self = .staticFile(path: path)
            }
        }
    }

    /// The methods this route answers, for `Allow` and preflights.
    var allowedMethods: String {
        switch self {
        case .events: return "GET, POST, DELETE, OPTIONS"
        case .poll, .clients: return "GET, OPTIONS"
        case .client: return "GET, DELETE, OPTIONS"
        case .clientEvents: return "POST, OPTIONS"
        case .health, .metrics, .staticFile: return "GET, HEAD, OPTIONS"
        case .unknownAPI: return "OPTIONS"
        }
    }

    /// Whether a request needs publisher authorisation (SPEC §2, §3).
    func requiresPublisher(_ method: HTTPRequest.Method) -> Bool {
        switch self {
        case .events: return method == .post || method == .delete
        case .clients, .client, .clientEvents: return method != .options
        default: return false
        }
    }

    /// Whether the route reads a request body: only publishing does (SPEC §16).
    func takesBody(_ method: HTTPRequest.Method) -> Bool {
        switch self {
        case .events, .clientEvents: return method == .post
        default: return false
        }
    }

    /// Cross-origin policy: the subscribe endpoints honour `*`; publishing and the client
    /// list answer only origins listed explicitly.
    func corsScope(_ method: HTTPRequest.Method) -> CORSScope {
        switch self {
        case .events: return method == .get || method == .head ? .open : .restricted
        case .poll: return .open
        case .clients, .client, .clientEvents: return .restricted
        default: return .none
        }
    }
}

enum CORSScope {
    case open, restricted, none
}
