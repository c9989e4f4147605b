@testable import HeraldServer
import HeraldCore
import Testing

/// Tokens made for the tests (outside the suite: its test macros read them).
enum TokenFixture {
    static let key = "k3y-for-tests-0123456789abcdef-0123456789"
    static let now: Double = 1_800_000_000
    static let verifier = HS256Verifier(keys: [key], audience: nil, mac: Authorizer.hmacSHA256)

    /// A token with this header and these claims (raw JSON texts), signed with `key`.
    static func token(header: String = #"{"alg":"HS256","typ":"JWT"}"#, claims: String, key signingKey: String? = nil) -> String {
        let key = signingKey ?? Self.key
        let input = Base64URL.encode(Array(header.utf8)) + "." + Base64URL.encode(Array(claims.utf8))
        return input + "." + Base64URL.encode(Authorizer.hmacSHA256(Array(key.utf8), Array(input.utf8)))
    }

    static let valid = #"{"sub":"client_0001","herald.subscribe":["quotes/*","news"],"exp":1800000100}"#
}

/// HS256 subscriber tokens (SPEC §14), verified with swift-crypto's HMAC: the RFC 7515
/// example, and every malformed or hostile shape refused with a reason.
@Suite("Subscriber tokens: HS256 verification")
struct SubscriberTokenTests {
    static let key = TokenFixture.key
    static let now = TokenFixture.now
    static let verifier = TokenFixture.verifier
    static let valid = TokenFixture.valid
    static func token(header: String = #"{"alg":"HS256","typ":"JWT"}"#, claims: String, key: String? = nil) -> String {
        TokenFixture.token(header: header, claims: claims, key: key)
    }

    @Test("RFC 7515 appendix A.1: the HS256 example verifies with its key")
    func rfc7515() throws {
        let k = "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"
        let jws = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9"
            + ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
            + ".dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
        let verifier = HS256Verifier(keyBytes: [try #require(Base64URL.decode(Array(k.utf8)))], audience: nil, mac: Authorizer.hmacSHA256)
        let grant = try verifier.verify(Substring(jws), now: 1_300_819_380 - 100)
        #expect(grant.expires == 1_300_819_380 && grant.patterns.isEmpty && grant.subject == nil)
        // One bit of the signature changed, or the time past exp + leeway: refused.
        #expect(throws: TokenError.self) { try verifier.verify(Substring(jws.dropLast() + "j"), now: 1_300_819_380 - 100) }
        #expect(throws: TokenError.self) { try verifier.verify(Substring(jws), now: 1_300_819_380 + 60) }
    }

    @Test("A valid token's grant: sub, patterns, exp; any of several keys; leeway of 60 s")
    func valid() throws {
        let grant = try Self.verifier.verify(Substring(Self.token(claims: Self.valid)), now: Self.now)
        #expect(grant == SubscriberGrant(subject: "client_0001", patterns: ["quotes/*", "news"], expires: 1_800_000_100))
        let rotated = HS256Verifier(keys: ["another-key-0123456789abcdef-0123456789", Self.key], audience: nil, mac: Authorizer.hmacSHA256)
        #expect(throws: Never.self) { try rotated.verify(Substring(Self.token(claims: Self.valid)), now: Self.now) }
        // exp passed 59 s ago: still inside the leeway; 60 s: refused.
        #expect(throws: Never.self) { try Self.verifier.verify(Substring(Self.token(claims: Self.valid)), now: 1_800_000_159) }
        #expect(throws: TokenError.self) { try Self.verifier.verify(Substring(Self.token(claims: Self.valid)), now: 1_800_000_160) }
        let audience = HS256Verifier(keys: [Self.key], audience: "herald-prod", mac: Authorizer.hmacSHA256)
        let listed = Self.token(claims: #"{"aud":["x","herald-prod"],"exp":1800000100}"#)
        #expect(throws: Never.self) { try audience.verify(Substring(listed), now: Self.now) }
        let single = Self.token(claims: #"{"aud":"herald-prod","exp":1800000100}"#)
        #expect(throws: Never.self) { try audience.verify(Substring(single), now: Self.now) }
    }

    @Test("Hostile and malformed tokens are refused",
          arguments: [
            ("empty", ""), ("one part", "abc"), ("two parts", "abc.def"), ("four parts", "a.b.c.d"),
            ("not base64url", "ab+c.def.ghi"), ("padded", TokenFixture.token(claims: TokenFixture.valid) + "="),
            ("impossible length", "abcde.abcd.abcd"),
            ("alg none", TokenFixture.token(header: #"{"alg":"none"}"#, claims: TokenFixture.valid)),
            ("alg lower case", TokenFixture.token(header: #"{"alg":"hs256"}"#, claims: TokenFixture.valid)),
            ("alg RS256", TokenFixture.token(header: #"{"alg":"RS256"}"#, claims: TokenFixture.valid)),
            ("alg HS512", TokenFixture.token(header: #"{"alg":"HS512"}"#, claims: TokenFixture.valid)),
            ("no alg", TokenFixture.token(header: #"{"typ":"JWT"}"#, claims: TokenFixture.valid)),
            ("alg a number", TokenFixture.token(header: #"{"alg":256}"#, claims: TokenFixture.valid)),
            ("alg twice", TokenFixture.token(header: #"{"alg":"none","alg":"HS256"}"#, claims: TokenFixture.valid)),
            ("crit", TokenFixture.token(header: #"{"alg":"HS256","crit":["exp"]}"#, claims: TokenFixture.valid)),
            ("header an array", TokenFixture.token(header: #"["HS256"]"#, claims: TokenFixture.valid)),
            ("header not JSON", TokenFixture.token(header: "alg=HS256", claims: TokenFixture.valid)),
            ("claims an array", TokenFixture.token(claims: "[1]")),
            ("claims not JSON", TokenFixture.token(claims: "{exp:1800000100")),
            ("claims nested deep", TokenFixture.token(claims: String(repeating: "[", count: 300))),
            ("no exp", TokenFixture.token(claims: #"{"sub":"client_0001"}"#)),
            ("exp a string", TokenFixture.token(claims: #"{"exp":"1800000100"}"#)),
            ("exp infinite", TokenFixture.token(claims: #"{"exp":1e999}"#)),
            ("exp twice", TokenFixture.token(claims: #"{"exp":1,"exp":1800000100}"#)),
            ("expired", TokenFixture.token(claims: #"{"exp":1799999000}"#)),
            ("not yet valid", TokenFixture.token(claims: #"{"nbf":1800000100,"exp":1800009999}"#)),
            ("issued in the future", TokenFixture.token(claims: #"{"iat":1800000100,"exp":1800009999}"#)),
            ("sub a number", TokenFixture.token(claims: #"{"sub":42,"exp":1800000100}"#)),
            ("grants not an array", TokenFixture.token(claims: #"{"herald.subscribe":"*","exp":1800000100}"#)),
            ("grants with a number", TokenFixture.token(claims: #"{"herald.subscribe":["a",1],"exp":1800000100}"#)),
            ("other key", TokenFixture.token(claims: TokenFixture.valid, key: "not-the-key-0123456789abcdef-0123456789")),
            ("signature cut", String(TokenFixture.token(claims: TokenFixture.valid).dropLast(2))),
            ("signature empty", TokenFixture.token(claims: TokenFixture.valid).split(separator: ".").prefix(2).joined(separator: ".") + "."),
            ("huge", TokenFixture.token(claims: #"{"exp":1800000100,"x":""# + String(repeating: "a", count: 9000) + #""}"#)),
          ])
    func hostile(name: String, jws: String) {
        #expect(throws: TokenError.self, "\(name)") { try Self.verifier.verify(Substring(jws), now: Self.now) }
    }

    @Test("An audience is required when configured")
    func audience() {
        let verifier = HS256Verifier(keys: [Self.key], audience: "herald-prod", mac: Authorizer.hmacSHA256)
        for claims in [#"{"exp":1800000100}"#, #"{"aud":"other","exp":1800000100}"#, #"{"aud":["a","b"],"exp":1800000100}"#, #"{"aud":7,"exp":1800000100}"#] {
            #expect(throws: TokenError.self, "\(claims)") { try verifier.verify(Substring(Self.token(claims: claims)), now: Self.now) }
        }
    }

    @Test("Grants cover what they should, byte-wise", arguments: [
        ("*", "*", true), ("*", "quotes/*", true), ("*", "a", true),
        ("quotes/*", "quotes/*", true), ("quo*", "quotes/*", true), ("quotes/*", "quotes/AAPL", true), ("quotes/*", "quotes/", true),
        ("quotes/*", "quo*", false), ("quotes/*", "*", false), ("quotes/*", "news", false), ("quotes/AAPL", "quotes/AAPL", true),
        ("quotes/AAPL", "quotes/*", false), ("quotes/AAPL", "quotes/AAPLX", false), ("caf\u{E9}", "cafe\u{301}", false),
        ("a", "a*", false),
    ])
    func coverage(granted: String, requested: String, covered: Bool) {
        #expect(SubscriberGrant.pattern(granted, covers: requested) == covered)
    }

    @Test("Tokens from `herald token` verify, and base64url round-trips")
    func signer() throws {
        let token = SubscriberTokens.sign(key: Self.key, subject: "client_0001", topics: ["a/*"], ttl: 100, audience: "x", now: Self.now)
        let verifier = HS256Verifier(keys: [Self.key], audience: "x", mac: Authorizer.hmacSHA256)
        let grant = try verifier.verify(Substring(token), now: Self.now)
        #expect(grant.subject == "client_0001" && grant.patterns == ["a/*"] && grant.expires == Self.now + 100)
        for length in 0..<40 {
            let bytes = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
            #expect(Base64URL.decode(Array(Base64URL.encode(bytes).utf8)) == bytes)
        }
        // Non-zero leftover bits would let two texts mean the same bytes.
        #expect(Base64URL.decode(Array("QR".utf8)) == nil)
        #expect(Base64URL.decode(Array("QQ".utf8)) == [0x41])
    }
}
