import HeraldCore
import NIOHTTP1

/// What a request says about who sends it, taken from its head (HTTP/1.1 headers or, later,
/// HTTP/2 pseudo-headers), so authorisation never waits for a body.
struct RequestCredentials: Sendable {
    /// The `Authorization` header.
    var authorization: String?
    /// Every `Host` value (HTTP/2: `:authority`); more than one is refused.
    var hosts: [String]
    var origin: String?
    /// `Sec-Fetch-Site`, set by browsers.
    var fetchSite: String?
    /// Whether the TCP peer is a loopback address.
    var peerIsLoopback: Bool
}

/// Who may do what: the one place authorisation rules live (SPEC §2, §3, §16; subscriber
/// grants of §14 plug in here too). Decided from ``RequestCredentials`` alone, at the head,
/// never per event.
struct Authorizer: Sendable {
    /// `--publish-key` values, as bytes for the constant-time comparison.
    private let publishKeys: [[UInt8]]
    /// Origins listed explicitly with `--cors-origin`.
    private let explicitOrigins: Set<String>

    init(publishKeys: [String], explicitOrigins: Set<String>) {
        self.publishKeys = publishKeys.map { Array($0.utf8) }
        self.explicitOrigins = explicitOrigins
    }

    private static let challenge = ("WWW-Authenticate", "Bearer realm=\"herald\"")

    /// Publishing, `DELETE /events` and `/clients`: a bearer key when keys are configured;
    /// without keys, local tools only (a loopback peer, a loopback `Host`, no foreign
    /// `Origin`, no cross-site fetch). Returns the refusal, or nil.
    func publisher(_ credentials: RequestCredentials) -> Problem? {
        if publishKeys.isEmpty {
            guard credentials.peerIsLoopback else {
                return Problem(.forbidden, "publishing is limited to loopback clients because no --publish-key is set")
            }
            // Loopback is not enough: a web page in a browser on this machine is a loopback
            // peer too (SPEC §16).
            if credentials.hosts.count > 1 { return Problem(.badRequest, "the request has more than one Host header") }
            if let refusal = LocalPublishGuard.refusal(
                host: credentials.hosts.first, origin: credentials.origin, fetchSite: credentials.fetchSite,
                explicitOrigins: explicitOrigins) {
                return Problem(.forbidden, refusal)
            }
            return nil
        }
        guard let authorization = credentials.authorization else {
            return Problem(.unauthorized, "send 'Authorization: Bearer <key>' with a --publish-key", headers: [Self.challenge])
        }
        let parts = authorization.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else {
            return Problem(.unauthorized, "the Authorization scheme must be Bearer", headers: [Self.challenge])
        }
        let presented = Array(parts[1].trimmingSpaces().utf8)
        var matched = false
        // Every key is compared in full, so the time taken says nothing about which matched.
        for key in publishKeys where Self.constantTimeEqual(presented, key) { matched = true }
        if !matched {
            return Problem(.unauthorized, "the bearer key is not valid",
                           headers: [("WWW-Authenticate", "Bearer realm=\"herald\", error=\"invalid_token\"")])
        }
        return nil
    }

    /// Compares without an early exit: the time does not depend on where the bytes differ.
    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        var difference = UInt8(truncatingIfNeeded: a.count ^ b.count)
        for index in 0..<max(a.count, b.count) {
            let x = index < a.count ? a[index] : 0
            let y = index < b.count ? b[index] : 0
            difference |= x ^ y
        }
        return difference == 0
    }
}

extension RequestCredentials {
    /// The credentials of an HTTP/1.x request head.
    init(_ head: HTTPRequestHead, peerIsLoopback: Bool) {
        self.init(
            authorization: head.headers.first(name: "authorization"),
            hosts: head.headers[canonicalForm: "host"].map(String.init),
            origin: head.headers.first(name: "origin"),
            fetchSite: head.headers.first(name: "sec-fetch-site"),
            peerIsLoopback: peerIsLoopback)
    }
}
