import Crypto
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

    /// Subscriber tokens (SPEC §14); nil when no `--subscriber-key` is set (open mode).
    private let subscriberTokens: HS256Verifier?
    /// `--public-topic` patterns: subscribable without a grant or a token.
    private let publicTopics: [String]

    init(publishKeys: [String], explicitOrigins: Set<String>, subscriberKeys: [String] = [], audience: String? = nil,
         publicTopics: [String] = []) {
        self.publishKeys = publishKeys.map { Array($0.utf8) }
        self.explicitOrigins = explicitOrigins
        self.subscriberTokens = subscriberKeys.isEmpty ? nil : HS256Verifier(keys: subscriberKeys, audience: audience, mac: Self.hmacSHA256)
        self.publicTopics = publicTopics
    }

    /// HMAC-SHA256 by swift-crypto (BoringSSL underneath on Linux).
    static let hmacSHA256: HS256Verifier.MAC = { key, message in
        Array(HMAC<SHA256>.authenticationCode(for: message, using: SymmetricKey(data: key)))
    }

    /// What a subscriber may do once its request is authorised.
    struct SubscriberAccess {
        /// The client token the stream uses: the requested one, or the token's `sub`.
        var clientToken: String?
        /// When the token expires (seconds since 1970): the stream is closed then.
        var expires: Double?
    }

    /// Subscribing (`GET /events`, `/poll`), SPEC §14: in open mode anything goes; with
    /// subscriber keys every requested topic must be public or granted by a valid token, and
    /// a requested client token must be the token's `sub`.
    /// - Parameter token: the bearer token found (header, cookie or query, in that order).
    func subscriber(token: Substring?, topics: [String], client: String?, now: Double) -> Result<SubscriberAccess, Problem> {
        guard let verifier = subscriberTokens else { return .success(SubscriberAccess(clientToken: client, expires: nil)) }
        let restricted = topics.filter { topic in !publicTopics.contains { SubscriberGrant.pattern($0, covers: topic) } }
        guard let token else {
            if restricted.isEmpty && client == nil { return .success(SubscriberAccess(clientToken: nil, expires: nil)) }
            let what = client != nil && restricted.isEmpty ? "the client token '\(client!)'" : "topic '\(restricted.first!.prefix(200))'"
            return .failure(Problem(
                .unauthorized,
                "subscribing to \(what) needs a token: send 'Authorization: Bearer <JWT>', the cookie herald_token, or ?access_token=<JWT>",
                headers: [("WWW-Authenticate", "Bearer")]))
        }
        let grant: SubscriberGrant
        do {
            grant = try verifier.verify(token, now: now)
        } catch {
            // Public topics need no token: a stale cookie must not cut a page off its public
            // feeds (EventSource does not retry after a 401).
            if restricted.isEmpty && client == nil { return .success(SubscriberAccess(clientToken: nil, expires: nil)) }
            return .failure(Problem(.unauthorized, "the subscriber token is not valid: \(error.description)",
                                    headers: [("WWW-Authenticate", "Bearer error=\"invalid_token\"")]))
        }
        if let topic = restricted.first(where: { !grant.covers($0) }) {
            return .failure(Problem(.forbidden, "the token does not grant topic '\(topic.prefix(200))' (its herald.subscribe patterns do not cover it)"))
        }
        if let client {
            guard let subject = grant.subject, subject.utf8.elementsEqual(client.utf8) else {
                return .failure(Problem(.forbidden, "the token does not grant the client token '\(client)' (its sub must be that token)"))
            }
            return .success(SubscriberAccess(clientToken: client, expires: grant.expires))
        }
        // Without `client`, the token's `sub` is the client token (when it is one).
        let subject = grant.subject.flatMap { (try? TopicRules.validate(clientToken: $0)) != nil ? $0 : nil }
        return .success(SubscriberAccess(clientToken: subject, expires: grant.expires))
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

/// Signs subscriber tokens (for `herald token`, tests and examples): what an app backend
/// does with any JWT library.
public enum SubscriberTokens {
    /// An HS256 JWT granting `topics` (patterns) and the client token `subject`, valid for
    /// `ttl` seconds from `now` (seconds since 1970).
    public static func sign(key: String, subject: String?, topics: [String], ttl: Double, audience: String? = nil,
                            now: Double = WallClock.secondsSince1970()) -> String {
        var claims: [(String, JSONValue)] = []
        if let subject { claims.append(("sub", .string(subject))) }
        claims.append(("herald.subscribe", .array(topics.map(JSONValue.string))))
        if let audience { claims.append(("aud", .string(audience))) }
        claims.append(("iat", .integer(Int64(now))))
        claims.append(("exp", .integer(Int64((now + ttl).rounded(.down)))))
        return HS256Signer.sign(claims: .object(claims), key: key, mac: Authorizer.hmacSHA256)
    }
}
