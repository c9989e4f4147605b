/// A parsed media type (`type/subtype; name=value`), enough for `Content-Type` and `Accept`.
public struct MediaType: Equatable, Sendable {
    /// Lower-cased `type/subtype`.
    public var essence: String
    /// Parameters with lower-cased names and unquoted values.
    public var parameters: [String: String]

    /// Parses a single media type. Returns nil for text that is not `token/token`.
    public init?(_ text: some StringProtocol) {
        var parts = MediaType.splitOutsideQuotes(String(text), separator: ";")
        guard !parts.isEmpty else { return nil }
        let essence = parts.removeFirst().trimmingSpaces().lowercased()
        let pieces = essence.split(separator: "/", omittingEmptySubsequences: false)
        guard pieces.count == 2, !pieces[0].isEmpty, !pieces[1].isEmpty,
              essence.allSatisfy({ !$0.isWhitespace })
        else { return nil }
        self.essence = essence
        self.parameters = [:]
        for part in parts {
            let trimmed = part.trimmingSpaces()
            guard !trimmed.isEmpty else { continue }
            guard let equals = trimmed.firstIndex(of: "=") else { continue }
            let name = trimmed[..<equals].trimmingSpaces().lowercased()
            var value = trimmed[trimmed.index(after: equals)...].trimmingSpaces()
            if value.count >= 2, value.hasPrefix("\""), value.hasSuffix("\"") {
                value = String(value.dropFirst().dropLast()).replacingBackslashEscapes()
            }
            parameters[name] = value
        }
    }

    /// Splits on `separator`, ignoring separators inside double quotes.
    static func splitOutsideQuotes(_ text: String, separator: Character) -> [String] {
        var parts: [String] = []
        var current = ""
        var inQuotes = false
        var escaped = false
        for character in text {
            if escaped {
                escaped = false
            } else if inQuotes && character == "\\" {
                escaped = true
            } else if character == "\"" {
                inQuotes.toggle()
            } else if character == separator && !inQuotes {
                parts.append(current)
                current = ""
                continue
            }
            current.append(character)
        }
        parts.append(current)
        return parts
    }
}

/// `Accept` negotiation for the stream endpoint (SPEC §1): the request must list
/// `text/event-stream` itself with q > 0. Wildcards (`*/*`, `text/*`) do not count, because
/// a browser navigating to the URL or a bare `curl` would otherwise hang on an endless stream.
public enum AcceptNegotiation {
    public static let eventStream = "text/event-stream"

    /// Whether the combined `Accept` header values accept `text/event-stream` explicitly.
    public static func acceptsEventStream(_ headerValues: [String]) -> Bool {
        for value in headerValues {
            for range in MediaType.splitOutsideQuotes(value, separator: ",") {
                guard let media = MediaType(range), media.essence == eventStream else { continue }
                if let q = media.parameters["q"] {
                    guard let quality = parseQuality(q), quality > 0 else { continue }
                }
                return true
            }
        }
        return false
    }

    /// Parses an RFC 9110 qvalue (`0`, `0.5`, `1.000`); nil when malformed.
    public static func parseQuality(_ text: String) -> Double? {
        let utf8 = Array(text.utf8)
        guard let first = utf8.first, first == 0x30 || first == 0x31, utf8.count <= 5 else { return nil }
        if utf8.count == 1 { return Double(first - 0x30) }
        guard utf8[1] == UInt8(ascii: "."), utf8[2...].allSatisfy({ (0x30...0x39).contains($0) }) else { return nil }
        guard let value = Double(text), value <= 1 else { return nil }
        return value
    }

    /// Whether an `Accept-Encoding` header list accepts gzip (q > 0, explicitly or via `*`).
    public static func acceptsGzip(_ headerValues: [String]) -> Bool {
        var gzip: Double?
        var star: Double?
        for value in headerValues {
            for item in value.split(separator: ",") {
                let parts = item.split(separator: ";")
                guard let name = parts.first?.trimmingSpaces().lowercased() else { continue }
                var quality = 1.0
                for parameter in parts.dropFirst() {
                    let pair = parameter.trimmingSpaces()
                    if pair.lowercased().hasPrefix("q=") { quality = parseQuality(String(pair.dropFirst(2))) ?? 0 }
                }
                if name == "gzip" || name == "x-gzip" { gzip = quality } else if name == "*" { star = quality }
            }
        }
        return (gzip ?? star ?? 0) > 0
    }
}

extension StringProtocol {
    /// The text without leading and trailing spaces and tabs.
    public func trimmingSpaces() -> String {
        var slice = Substring(self)
        while let first = slice.first, first == " " || first == "\t" { slice.removeFirst() }
        while let last = slice.last, last == " " || last == "\t" { slice.removeLast() }
        return String(slice)
    }

    func replacingBackslashEscapes() -> String {
        var out = ""
        var escaped = false
        for character in self {
            if escaped || character != "\\" {
                out.append(character)
                escaped = false
            } else {
                escaped = true
            }
        }
        return out
    }
}
