import Foundation

/// Where a cluster's database is: `postgres://USER:PASSWORD@HOST:PORT/DB` (also
/// `postgresql://`), parsed once at start-up. User, password and database may be
/// percent-encoded (`p%40ss` for `p@ss`). Query parameters: `sslmode=disable` (the default)
/// or `require` (TLS, the server's certificate verified against the system's roots), and
/// `application_name`. Anything else is refused, so that a typo is not silently ignored.
public struct PostgresLocation: Sendable, Equatable, CustomStringConvertible {
    public enum TLSMode: String, Sendable { case disable, require }

    public var host: String
    public var port: Int
    public var username: String
    /// Never logged or printed (``description`` leaves it out).
    public var password: String?
    public var database: String
    public var tls: TLSMode
    public var applicationName: String

    public init(url: String) throws(ConfigurationError) {
        func fail(_ reason: String) -> ConfigurationError {
            ConfigurationError("--store \(Self.redacted(url)): \(reason); the form is postgres://USER:PASSWORD@HOST:PORT/DB")
        }
        guard let schemeEnd = url.range(of: "://") else { throw fail("no scheme") }
        var rest = Substring(url[schemeEnd.upperBound...])
        var query = Substring()
        if let mark = rest.firstIndex(of: "?") {
            query = rest[rest.index(after: mark)...]
            rest = rest[..<mark]
        }
        var path = Substring()
        if let slash = rest.firstIndex(of: "/") {
            path = rest[rest.index(after: slash)...]
            rest = rest[..<slash]
        }
        var userInfo: Substring?
        if let at = rest.lastIndex(of: "@") {
            userInfo = rest[..<at]
            rest = rest[rest.index(after: at)...]
        }
        // rest is HOST[:PORT], HOST may be a bracketed IPv6 address.
        var hostPart = rest
        var portPart: Substring?
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { throw fail("an unclosed '[' in the host") }
            hostPart = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw fail("unexpected text after the host") }
                portPart = after.dropFirst()
            }
        } else if let colon = rest.lastIndex(of: ":") {
            hostPart = rest[..<colon]
            portPart = rest[rest.index(after: colon)...]
        }
        guard !hostPart.isEmpty else { throw fail("no host") }
        host = String(hostPart)
        if let portPart {
            guard let number = Int(portPart), (1...65_535).contains(number) else { throw fail("the port must be 1...65535") }
            port = number
        } else {
            port = 5432
        }
        func decode(_ text: Substring, _ what: String) throws(ConfigurationError) -> String {
            guard let decoded = String(text).removingPercentEncoding else { throw fail("the \(what) is not valid percent-encoding") }
            return decoded
        }
        username = "postgres"
        password = nil
        if let userInfo {
            if let colon = userInfo.firstIndex(of: ":") {
                username = try decode(userInfo[..<colon], "user")
                password = try decode(userInfo[userInfo.index(after: colon)...], "password")
            } else {
                username = try decode(userInfo, "user")
            }
        }
        guard !username.isEmpty else { throw fail("the user is empty") }
        database = path.isEmpty ? username : try decode(path, "database name")
        tls = .disable
        applicationName = "herald"
        for pair in query.split(separator: "&") where !pair.isEmpty {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let name = String(parts[0])
            let value = parts.count > 1 ? try decode(parts[1], name) : ""
            switch name {
            case "sslmode":
                guard let mode = TLSMode(rawValue: value) else { throw fail("sslmode must be 'disable' or 'require'") }
                tls = mode
            case "application_name":
                applicationName = value
            default:
                throw fail("unknown parameter '\(name.prefix(40))' (known: sslmode, application_name)")
            }
        }
    }

    /// The location without its password, for logs and errors.
    public var description: String {
        let shownHost = host.contains(":") ? "[\(host)]" : host
        return "postgres://\(username)@\(shownHost):\(port)/\(database)"
    }

    /// A URL with any password replaced, for error messages about a URL that did not parse.
    static func redacted(_ url: String) -> String {
        guard let schemeEnd = url.range(of: "://"), let at = url[schemeEnd.upperBound...].lastIndex(of: "@") else {
            return String(url.prefix(200))
        }
        let userInfo = url[schemeEnd.upperBound..<at]
        guard let colon = userInfo.firstIndex(of: ":") else { return String(url.prefix(200)) }
        return String((url[..<colon] + ":***" + url[at...]).prefix(200))
    }
}
