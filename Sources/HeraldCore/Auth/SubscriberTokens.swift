/// Subscriber authorization (SPEC §14): HS256 JSON Web Tokens (RFC 7519, signed as RFC 7515
/// JWS compact serialisation) that grant topic patterns and a client token.
///
/// The MAC itself (HMAC-SHA256) is given by the caller, so this module stays free of
/// dependencies; the server passes swift-crypto's. Everything else (splitting, base64url, the
/// JSON of header and claims, the algorithm, the time claims, the audience, the grants) is
/// decided here, strictly: a token either passes every check or is refused with a reason.

/// What a valid token allows.
public struct SubscriberGrant: Sendable, Equatable {
    /// `sub`: the client token its holder may use.
    public var subject: String?
    /// `herald.subscribe`: topic patterns (§1 syntax) its holder may subscribe to.
    public var patterns: [String]
    /// `exp`, in seconds since 1970 (fractions allowed by RFC 7519).
    public var expires: Double

    public init(subject: String?, patterns: [String], expires: Double) {
        self.subject = subject
        self.patterns = patterns
        self.expires = expires
    }

    /// Whether the grant covers a requested topic or pattern: some granted pattern matches
    /// every topic the requested one can match (`quotes/*` is covered by `quotes/*`, `quo*` or
    /// `*`; `quotes/AAPL` by those or itself). Byte-wise, like every topic comparison.
    public func covers(_ requested: String) -> Bool {
        patterns.contains { Self.pattern($0, covers: requested) }
    }

    public static func pattern(_ granted: String, covers requested: String) -> Bool {
        if granted == "*" { return true }
        if requested == "*" { return false }
        let star = UInt8(ascii: "*")
        if granted.utf8.last == star {
            let prefix = granted.utf8.dropLast()
            let target = requested.utf8.last == star ? requested.utf8.dropLast() : requested.utf8[...]
            return target.starts(with: prefix)
        }
        // An exact grant covers only that exact topic, never a pattern.
        return requested.utf8.last != star && requested.utf8.elementsEqual(granted.utf8)
    }
}

/// Why a token was refused (for the `invalid_token` answer's detail and the log; never
/// which key nearly matched).
public struct TokenError: Error, Equatable, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Verifies HS256 tokens against one or more keys (rotation: any of them may have signed).
public struct HS256Verifier: Sendable {
    /// HMAC-SHA256 of `message` under `key`.
    public typealias MAC = @Sendable (_ key: [UInt8], _ message: [UInt8]) -> [UInt8]

    /// Tokens longer than this are refused before any decoding (a header holds 16 KiB at most).
    public static let maxTokenBytes = 8192
    /// The encoded header's limit (`{"alg":"HS256","typ":"JWT"}` is 36 characters).
    public static let maxHeaderBytes = 1024
    /// Seconds of clock skew allowed on `exp`, `nbf` and `iat`.
    public static let leeway: Double = 60

    private let keys: [[UInt8]]
    private let audience: String?
    private let mac: MAC

    public init(keys: [String], audience: String?, mac: @escaping MAC) {
        self.init(keyBytes: keys.map { Array($0.utf8) }, audience: audience, mac: mac)
    }

    /// Keys as raw bytes (a JWK's `k`, decoded).
    public init(keyBytes: [[UInt8]], audience: String?, mac: @escaping MAC) {
        self.keys = keyBytes
        self.audience = audience
        self.mac = mac
    }

    /// The grant of a valid token, or why it is not one. `now` is seconds since 1970.
    public func verify(_ token: Substring, now: Double) throws(TokenError) -> SubscriberGrant {
        let bytes = Array(token.utf8)
        guard bytes.count <= Self.maxTokenBytes else { throw TokenError("the token is longer than \(Self.maxTokenBytes) bytes") }
        let dots = bytes.indices.filter { bytes[$0] == UInt8(ascii: ".") }
        guard dots.count == 2 else { throw TokenError("a token has three base64url parts separated by '.' (JWS compact form)") }
        let headerPart = bytes[..<dots[0]], claimsPart = bytes[(dots[0] + 1)..<dots[1]], signaturePart = bytes[(dots[1] + 1)...]
        // Cheap checks first, so a forged token costs little: an HS256 signature is 32 bytes
        // (43 characters), and a header needs no more than a few hundred bytes.
        guard signaturePart.count == 43 else { throw TokenError("an HS256 signature is 43 base64url characters, not \(signaturePart.count)") }
        guard headerPart.count <= Self.maxHeaderBytes else { throw TokenError("the header is longer than \(Self.maxHeaderBytes) bytes") }
        guard let headerBytes = Base64URL.decode(headerPart), let signature = Base64URL.decode(signaturePart)
        else { throw TokenError("a part of the token is not base64url (unpadded)") }

        // The algorithm is the server's: HS256, whatever else the header might ask for.
        let header = try Self.object(headerBytes, "header")
        guard case .string(let alg)? = header["alg"] else { throw TokenError("the header has no 'alg'") }
        guard alg == "HS256" else { throw TokenError("the algorithm must be HS256, not '\(alg.prefix(20))'") }
        if header["crit"] != nil { throw TokenError("the header names critical extensions ('crit') this server does not implement") }

        // The signature, against every key, each compared in constant time and all of them
        // always computed, so the time does not say which key (nearly) matched.
        let signingInput = Array(bytes[..<dots[1]])
        var valid = false
        for key in keys where Self.constantTimeEqual(mac(key, signingInput), signature) { valid = true }
        guard valid else { throw TokenError("the signature does not match any subscriber key") }

        // The claims are decoded only once the signature says they are the issuer's.
        guard let claimsBytes = Base64URL.decode(claimsPart) else { throw TokenError("a part of the token is not base64url (unpadded)") }
        let claims = try Self.object(claimsBytes, "claims")
        guard let exp = try Self.numericDate(claims, "exp") else { throw TokenError("the token has no 'exp' (it is required)") }
        if now >= exp + Self.leeway { throw TokenError("the token expired at \(Self.text(exp))") }
        if let nbf = try Self.numericDate(claims, "nbf"), now + Self.leeway < nbf {
            throw TokenError("the token is not valid before \(Self.text(nbf))")
        }
        if let iat = try Self.numericDate(claims, "iat"), now + Self.leeway < iat {
            throw TokenError("the token was issued in the future (iat \(Self.text(iat)))")
        }
        if let audience {
            switch claims["aud"] {
            case .string(let value)? where value == audience:
                break
            case .array(let values)? where values.contains(.string(audience)):
                break
            default:
                throw TokenError("the token is not meant for this server (its 'aud' does not contain '\(audience)')")
            }
        }
        var subject: String?
        switch claims["sub"] {
        case nil, .null?: subject = nil
        case .string(let value)?: subject = value
        default: throw TokenError("'sub' must be a string")
        }
        var patterns: [String] = []
        switch claims["herald.subscribe"] {
        case nil: break
        case .array(let values)?:
            for value in values {
                guard case .string(let pattern) = value else { throw TokenError("'herald.subscribe' must be an array of strings") }
                patterns.append(pattern)
            }
        default: throw TokenError("'herald.subscribe' must be an array of topic patterns")
        }
        return SubscriberGrant(subject: subject, patterns: patterns, expires: exp)
    }

    /// A JSON object with no repeated member (RFC 7519 §4: a parser may otherwise read a
    /// different claim than the signer meant).
    private static func object(_ bytes: [UInt8], _ what: String) throws(TokenError) -> JSONValue {
        let value: JSONValue
        do { value = try JSON.parse(bytes: bytes) } catch { throw TokenError("the \(what) is not JSON: \(error)") }
        guard case .object(let members) = value else { throw TokenError("the \(what) is not a JSON object") }
        var names = Set<String>()
        for (name, _) in members where !names.insert(name).inserted {
            throw TokenError("the \(what) repeats '\(name.prefix(40))'")
        }
        return value
    }

    /// A NumericDate claim (seconds since 1970, maybe fractional), nil when absent.
    private static func numericDate(_ claims: JSONValue, _ name: String) throws(TokenError) -> Double? {
        guard let value = claims[name] else { return nil }
        guard case .number(let text) = value, let number = Double(text), number.isFinite else {
            throw TokenError("'\(name)' must be a number of seconds since 1970")
        }
        return number
    }

    private static func text(_ seconds: Double) -> String {
        seconds == seconds.rounded() && abs(seconds) < 1e15 ? String(Int64(seconds)) : String(seconds)
    }

    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var difference: UInt8 = 0
        for index in a.indices { difference |= a[index] ^ b[index] }
        return difference == 0
    }
}

/// Makes HS256 tokens (for `herald token`, the tests and the README's examples).
public enum HS256Signer {
    /// A compact JWS of `claims` (a JSON object) signed with `key`.
    public static func sign(claims: JSONValue, key: String, mac: HS256Verifier.MAC) -> String {
        let header = Base64URL.encode(Array(#"{"alg":"HS256","typ":"JWT"}"#.utf8))
        let payload = Base64URL.encode(Array(claims.compactText.utf8))
        let input = header + "." + payload
        return input + "." + Base64URL.encode(mac(Array(key.utf8), Array(input.utf8)))
    }
}

/// Base64url without padding (RFC 7515 §2), strict: any other byte, or a length no encoding
/// produces, is refused.
public enum Base64URL {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
    private static let values: [UInt8] = {
        var table = [UInt8](repeating: 0xFF, count: 256)
        for (index, byte) in alphabet.enumerated() { table[Int(byte)] = UInt8(index) }
        return table
    }()

    public static func decode<Bytes: Collection>(_ text: Bytes) -> [UInt8]? where Bytes.Element == UInt8 {
        if text.count % 4 == 1 { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(text.count * 3 / 4)
        var accumulator: UInt32 = 0
        var bits = 0
        for byte in text {
            let value = values[Int(byte)]
            guard value != 0xFF else { return nil }
            accumulator = (accumulator << 6) | UInt32(value)
            bits += 6
            if bits >= 8 {
                bits -= 8
                out.append(UInt8(truncatingIfNeeded: accumulator >> UInt32(bits)))
            }
        }
        // Leftover bits must be zero (else two texts would decode to the same bytes).
        if bits > 0 && accumulator & ((1 << UInt32(bits)) - 1) != 0 { return nil }
        return out
    }

    public static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count * 4 + 2) / 3)
        var index = 0
        while index + 3 <= bytes.count {
            let chunk = UInt32(bytes[index]) << 16 | UInt32(bytes[index + 1]) << 8 | UInt32(bytes[index + 2])
            for shift in [18, 12, 6, 0] { out.append(alphabet[Int((chunk >> UInt32(shift)) & 63)]) }
            index += 3
        }
        let rest = bytes.count - index
        if rest == 1 {
            let chunk = UInt32(bytes[index]) << 16
            out.append(alphabet[Int((chunk >> 18) & 63)])
            out.append(alphabet[Int((chunk >> 12) & 63)])
        } else if rest == 2 {
            let chunk = UInt32(bytes[index]) << 16 | UInt32(bytes[index + 1]) << 8
            out.append(alphabet[Int((chunk >> 18) & 63)])
            out.append(alphabet[Int((chunk >> 12) & 63)])
            out.append(alphabet[Int((chunk >> 6) & 63)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
