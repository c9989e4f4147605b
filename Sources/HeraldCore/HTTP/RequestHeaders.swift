/// Small parsers for request header and query values. Each one is total: any text gives a
/// value or nil, never a trap, so that no request can crash the server through them (the
/// property-based tests feed them generated hostile input).
public enum HTTPNumber {
    /// A non-negative decimal of ASCII digits only (no sign, no spaces, no `0x`), at most
    /// `maximum`; nil for anything else, including values that would overflow.
    public static func parse<S: StringProtocol>(_ text: S, maximum: Int = Int.max) -> Int? {
        var value = 0
        var sawDigit = false
        for byte in text.utf8 {
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
            let (times, overflow1) = value.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = times.addingReportingOverflow(Int(byte - UInt8(ascii: "0")))
            guard !overflow1, !overflow2, sum <= maximum else { return nil }
            value = sum
            sawDigit = true
        }
        return sawDigit ? value : nil
    }
}

/// The rule that keeps keyless publishing (no `--publish-key`) for local tools (SPEC §16):
/// a web page in a browser on the same machine must not be able to publish, read `/clients`
/// or delete clients, neither by a simple cross-site form or `text/plain` POST (no preflight)
/// nor through DNS rebinding (a hostile name that resolves to 127.0.0.1).
///
/// A request is refused when its `Host` is not a loopback name or address, when it carries an
/// `Origin` that is not listed explicitly, or when, without an `Origin`, the browser marks
/// it `Sec-Fetch-Site: cross-site`. Tools such as curl send none of these headers but a
/// loopback `Host`, so they pass.
public enum LocalPublishGuard {
    /// Why the request is refused, or nil when it may go on.
    /// - Parameters:
    ///   - host: the `Host` header (or HTTP/2 `:authority`); nil when absent (no browser
    ///     omits it, so an absent one cannot be a web page).
    ///   - origin: the `Origin` header.
    ///   - fetchSite: the `Sec-Fetch-Site` header.
    ///   - explicitOrigins: the origins listed in `--cors-origin` (not `*`).
    public static func refusal(host: String?, origin: String?, fetchSite: String?, explicitOrigins: Set<String>) -> String? {
        if let host, !isLoopbackHost(host) {
            return "without a --publish-key only local tools may publish or manage clients, and this request's Host "
                + "'\(host.prefix(100))' is not a loopback name; use http://127.0.0.1 or http://localhost, or set --publish-key"
        }
        if let origin {
            if explicitOrigins.contains(origin) { return nil }
            return "the web origin '\(origin.prefix(100))' may not publish or manage clients: without a --publish-key only "
                + "origins listed with --cors-origin may (a page elsewhere could otherwise publish through your browser)"
        }
        if let fetchSite, fetchSite.lowercased() == "cross-site" {
            return "a cross-site browser request may not publish or manage clients without a --publish-key"
        }
        return nil
    }

    /// `localhost`, any `127.x.y.z`, or `[::1]`, each with or without a port.
    public static func isLoopbackHost(_ value: String) -> Bool {
        if isCommonLoopbackHost(value.utf8) { return true }
        var host = Substring(value)
        while host.first == " " || host.first == "\t" { host = host.dropFirst() }
        while host.last == " " || host.last == "\t" { host = host.dropLast() }
        if host.first == "[" {
            guard let close = host.firstIndex(of: "]") else { return false }
            let address = host[host.index(after: host.startIndex)..<close].lowercased()
            let rest = host[host.index(after: close)...]
            guard rest.isEmpty || isPort(rest) else { return false }
            return address == "::1" || address == "0:0:0:0:0:0:0:1"
        }
        if let colon = host.lastIndex(of: ":") {
            guard isPort(host[colon...]) else { return false }
            host = host[..<colon]
        }
        var name = host.lowercased()
        if name.hasSuffix(".") { name.removeLast() }
        if name == "localhost" { return true }
        let parts = name.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4, parts[0] == "127" else { return false }
        return parts.allSatisfy { part in
            part.utf8.count <= 3 && HTTPNumber.parse(part, maximum: 255) != nil
        }
    }

    /// `127.0.0.1` or `localhost`, each alone or with a port: what local tools send, checked
    /// without building substrings (it runs on every keyless publish). Anything else is left
    /// to the full check.
    private static func isCommonLoopbackHost(_ value: String.UTF8View) -> Bool {
        var rest: Substring.UTF8View
        if value.starts(with: "127.0.0.1".utf8) {
            rest = value.dropFirst(9)
        } else if value.starts(with: "localhost".utf8) {
            rest = value.dropFirst(9)
        } else {
            return false
        }
        if rest.isEmpty { return true }
        guard rest.first == UInt8(ascii: ":") else { return false }
        rest = rest.dropFirst()
        guard !rest.isEmpty, rest.count <= 5 else { return false }
        var port = 0
        for byte in rest {
            guard byte >= 0x30 && byte <= 0x39 else { return false }
            port = port * 10 + Int(byte - 0x30)
        }
        return port <= 65_535
    }

    /// `:` followed by 1 to 5 digits.
    private static func isPort(_ text: Substring) -> Bool {
        guard text.first == ":" else { return false }
        let digits = text.dropFirst()
        return digits.utf8.count <= 5 && HTTPNumber.parse(digits, maximum: 65_535) != nil
    }
}
