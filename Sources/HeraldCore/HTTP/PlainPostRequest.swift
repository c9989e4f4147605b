/// A reader for the one request shape a publisher repeats: a complete HTTP/1.1 `POST` with
/// plain header lines and a `Content-Length` body.
///
/// Why by hand: a single-event publish spends most of its server CPU in the general HTTP
/// path (NIO's decoder building a request head, the pipelining and header-validation
/// handlers, three response writes through the encoder), measured at 2× Nginx+Nchan's user
/// CPU per publish; see the README's "Low rates". This reader recognises the common case and
/// says `other` to everything else, and the caller hands those bytes to the general path
/// untouched. It must therefore never accept bytes that NIO's parser (llhttp, strict) would
/// read differently:
/// - the request line is exactly `POST <target> HTTP/1.1`, the target visible ASCII;
/// - every header line is `token ":" OWS value CRLF`, the value visible ASCII, spaces and
///   tabs only (no obs-fold, no obs-text, no bare CR or LF), read as NIO reads it: leading
///   blanks dropped, trailing ones kept;
/// - the body is framed by at most one `Content-Length` of digits; `Transfer-Encoding`,
///   `Expect`, `Upgrade`, a `Connection` other than `keep-alive`, any `Proxy-Connection`
///   (llhttp honours its `close` like `Connection`'s), a second `Host` or one
///   holding a comma, and `Idempotency-Key` (whose retry may wait on another loop) all go to
///   the general path;
/// - the request ends where its `Content-Length` says, exactly where llhttp ends it, so the
///   bytes after it (a pipelined request) start at the same place for either reader. A
///   request that arrives in pieces is recognised once complete
///   (``scan(_:maxHeadBytes:maxBodyBytes:)`` says `incomplete` while the bytes so far could
///   still become one).
public struct PlainPostRequest: Sendable {
    /// The request target (path and query), as sent.
    public var target: String
    /// The header lines in order, names as sent.
    public var fields: [(name: String, value: String)]
    /// Where the body starts in the bytes given to ``scan(_:maxHeadBytes:maxBodyBytes:)``.
    public var bodyOffset: Int
    public var bodyLength: Int
    /// Where the request ends: the next one (pipelined) starts here.
    public var end: Int { bodyOffset + bodyLength }

    /// The path: the target up to its query.
    public var path: Substring {
        target.firstIndex(of: "?").map { target[..<$0] } ?? target[...]
    }

    /// Longest target read here (Herald answers a longer one 414 on the general path).
    public static let maxTargetBytes = 8192
    /// Most header lines read here.
    public static let maxFields = 64

    /// What a look at the bytes received so far found.
    public enum Scan: Sendable {
        /// One complete request of the shape above, ending at its ``end``; what follows
        /// (a pipelined request) is the next one's to be scanned.
        case request(PlainPostRequest)
        /// So far the start of such a request: more bytes may complete it. `head`: the
        /// request as far as its head goes, once the head is in and part of the body is
        /// still to come (`end` is then beyond the bytes).
        case incomplete(head: PlainPostRequest?)
        /// Anything else: the general path reads these bytes.
        case other
    }

    /// Looks at `bytes` (everything received since the last request) for one complete
    /// request of the shape above.
    /// - Parameters:
    ///   - maxHeadBytes: the longest head (request line to the blank line) read here.
    ///   - maxBodyBytes: the longest body read here.
    public static func scan(_ bytes: UnsafeRawBufferPointer, maxHeadBytes: Int, maxBodyBytes: Int) -> Scan {
        let count = bytes.count
        // "POST /", or as much of it as has arrived.
        let start: StaticString = "POST /"
        for offset in 0..<start.utf8CodeUnitCount {
            guard offset < count else { return .incomplete(head: nil) }
            guard bytes[offset] == start.utf8Start[offset] else { return .other }
        }
        var index = 5
        while true {
            guard index < count else { return index - 5 <= maxTargetBytes && count <= maxHeadBytes ? .incomplete(head: nil) : .other }
            let byte = bytes[index]
            if byte == 0x20 { break }
            guard byte > 0x20, byte < 0x7F else { return .other }
            index += 1
        }
        let targetEnd = index
        guard targetEnd - 5 <= maxTargetBytes else { return .other }
        switch prefix(bytes, at: index, " HTTP/1.1\r\n") {
        case .matches: index += 11
        case .partial: return count <= maxHeadBytes ? .incomplete(head: nil) : .other
        case .differs: return .other
        }
        var fields: [(name: String, value: String)] = []
        var contentLength: Int?
        var hasHost = false
        while true {
            guard index <= maxHeadBytes else { return .other }
            // The head is not complete yet: only worth waiting for within its limit.
            let headSoFar: Scan = count <= maxHeadBytes ? .incomplete(head: nil) : .other
            guard index < count else { return headSoFar }
            if bytes[index] == 0x0D {
                guard index + 1 < count else { return headSoFar }
                guard bytes[index + 1] == 0x0A else { return .other }
                index += 2
                break
            }
            guard fields.count < maxFields else { return .other }
            let nameStart = index
            while index < count, isTokenByte(bytes[index]) { index += 1 }
            guard index < count else { return headSoFar }
            guard index > nameStart, bytes[index] == 0x3A else { return .other }
            let nameEnd = index
            index += 1
            while index < count, bytes[index] == 0x20 || bytes[index] == 0x09 { index += 1 }
            let valueStart = index
            while index < count, bytes[index] != 0x0D {
                let byte = bytes[index]
                guard (byte >= 0x20 && byte < 0x7F) || byte == 0x09 else { return .other }
                index += 1
            }
            guard index + 1 < count else { return headSoFar }
            guard bytes[index + 1] == 0x0A else { return .other }
            // Trailing blanks stay in the value, as NIO's parser leaves them (a value read
            // differently would make the two paths disagree).
            let valueEnd = index
            index += 2
            switch nameKind(bytes, nameStart, nameEnd) {
            case .contentLength:
                guard contentLength == nil, valueEnd > valueStart, valueEnd - valueStart <= 10 else { return .other }
                var length = 0
                for position in valueStart..<valueEnd {
                    let byte = bytes[position]
                    guard byte >= 0x30 && byte <= 0x39 else { return .other }
                    length = length * 10 + Int(byte - 0x30)
                }
                contentLength = length
            case .host:
                guard !hasHost else { return .other }
                for position in valueStart..<valueEnd where bytes[position] == 0x2C { return .other }
                hasHost = true
            case .connection:
                guard equalsIgnoringCase(bytes, valueStart, valueEnd, "keep-alive") else { return .other }
            case .refused:
                return .other
            case .other:
                break
            }
            fields.append((string(bytes, nameStart, nameEnd), string(bytes, valueStart, valueEnd)))
        }
        guard index <= maxHeadBytes else { return .other }
        let length = contentLength ?? 0
        guard length <= maxBodyBytes else { return .other }
        let request = PlainPostRequest(target: string(bytes, 5, targetEnd), fields: fields, bodyOffset: index, bodyLength: length)
        return count - index >= length ? .request(request) : .incomplete(head: request)
    }

    private enum NameKind {
        case contentLength, host, connection, refused, other
    }

    private static func nameKind(_ bytes: UnsafeRawBufferPointer, _ start: Int, _ end: Int) -> NameKind {
        switch end - start {
        case 4 where equalsIgnoringCase(bytes, start, end, "host"): return .host
        case 6 where equalsIgnoringCase(bytes, start, end, "expect"): return .refused
        case 7 where equalsIgnoringCase(bytes, start, end, "upgrade"): return .refused
        case 10 where equalsIgnoringCase(bytes, start, end, "connection"): return .connection
        case 14 where equalsIgnoringCase(bytes, start, end, "content-length"): return .contentLength
        case 15 where equalsIgnoringCase(bytes, start, end, "idempotency-key"): return .refused
        case 16 where equalsIgnoringCase(bytes, start, end, "proxy-connection"): return .refused
        case 17 where equalsIgnoringCase(bytes, start, end, "transfer-encoding"): return .refused
        default: return .other
        }
    }

    /// RFC 9110 `tchar`.
    @inline(__always)
    private static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case 0x30...0x39, 0x41...0x5A, 0x61...0x7A: return true
        case 0x21, 0x23, 0x24, 0x25, 0x26, 0x27, 0x2A, 0x2B, 0x2D, 0x2E, 0x5E, 0x5F, 0x60, 0x7C, 0x7E: return true
        default: return false
        }
    }

    private enum Prefix {
        case matches, partial, differs
    }

    /// Whether `text` is at `start`, or the bytes end inside a match.
    private static func prefix(_ bytes: UnsafeRawBufferPointer, at start: Int, _ text: StaticString) -> Prefix {
        let expected = text.utf8Start
        for offset in 0..<text.utf8CodeUnitCount {
            guard start + offset < bytes.count else { return .partial }
            guard bytes[start + offset] == expected[offset] else { return .differs }
        }
        return .matches
    }

    /// Whether bytes `start..<end` spell `lowercase` (ASCII, letters in any case).
    private static func equalsIgnoringCase(_ bytes: UnsafeRawBufferPointer, _ start: Int, _ end: Int, _ lowercase: StaticString) -> Bool {
        guard end - start == lowercase.utf8CodeUnitCount else { return false }
        let expected = lowercase.utf8Start
        for offset in 0..<(end - start) {
            var byte = bytes[start + offset]
            if byte >= 0x41 && byte <= 0x5A { byte |= 0x20 }
            if byte != expected[offset] { return false }
        }
        return true
    }

    private static func string(_ bytes: UnsafeRawBufferPointer, _ start: Int, _ end: Int) -> String {
        String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<end]), as: UTF8.self)
    }
}
