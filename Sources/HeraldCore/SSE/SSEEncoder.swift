/// Turns events, comments and `retry:` hints into `text/event-stream` bytes.
///
/// The encoder is the only place that writes SSE syntax, so it is the one place that has to
/// make field injection impossible: data is split on every line break the WHATWG parser
/// recognises (CRLF, LF, lone CR) and each piece becomes its own `data:` line, and the
/// single-line fields (`id`, `event`) are validated by their callers to contain no line
/// breaks at all.
///
/// ```swift
/// var bytes: [UInt8] = []
/// SSEEncoder.appendEvent(id: 7, type: "quote", data: "a\nb", to: &bytes)
/// // "id: 7\nevent: quote\ndata: a\ndata: b\n\n"
/// ```
public enum SSEEncoder {
    /// Appends one complete event block, terminated by a blank line.
    /// - Parameters:
    ///   - id: the event id, written as `id: <decimal>`; `nil` writes no `id:` line.
    ///   - type: the event type (`event:` line); `nil` writes none. Must not contain CR or LF.
    ///   - data: the payload; every line becomes a `data:` line, empty data one bare `data:`.
    ///   - bytes: the output.
    public static func appendEvent(id: Int64?, type: String?, data: String, to bytes: inout [UInt8]) {
        if let id {
            bytes.append(contentsOf: "id: ".utf8)
            appendDecimal(id, to: &bytes)
            bytes.append(0x0A)
        }
        if let type {
            bytes.append(contentsOf: "event: ".utf8)
            bytes.append(contentsOf: type.utf8)
            bytes.append(0x0A)
        }
        appendField("data", lines: data, to: &bytes)
        bytes.append(0x0A)
    }

    /// Appends `retry: <ms>` and a blank line.
    public static func appendRetry(milliseconds: Int, to bytes: inout [UInt8]) {
        bytes.append(contentsOf: "retry: ".utf8)
        appendDecimal(Int64(milliseconds), to: &bytes)
        bytes.append(contentsOf: [0x0A, 0x0A])
    }

    /// Appends a comment: one `:` line per line of `text` (a comment never dispatches an event).
    public static func appendComment(_ text: String, to bytes: inout [UInt8]) {
        appendLines(prefix: ":", separator: 0x20, text: text, to: &bytes)
    }

    /// Appends a padding comment of at least `minimumBytes` bytes (old polyfills and some
    /// proxies buffer the first 2 KiB of a response before they hand anything on).
    public static func appendPadding(minimumBytes: Int, to bytes: inout [UInt8]) {
        bytes.append(0x3A)  // ":"
        bytes.append(contentsOf: repeatElement(0x20, count: max(0, minimumBytes - 2)))
        bytes.append(0x0A)
    }

    /// Appends `field: line\n` for every line of `lines` (split on CRLF, LF and CR).
    static func appendField(_ field: String, lines: String, to bytes: inout [UInt8]) {
        appendLines(prefix: field + ":", separator: 0x20, text: lines, to: &bytes)
    }

    private static func appendLines(prefix: String, separator: UInt8, text: String, to bytes: inout [UInt8]) {
        var utf8 = text.utf8.makeIterator()
        var lineStarted = false
        var pendingCR = false
        func startLine(_ bytes: inout [UInt8]) {
            bytes.append(contentsOf: prefix.utf8)
            lineStarted = true
        }
        while let byte = utf8.next() {
            if pendingCR {
                pendingCR = false
                if byte == 0x0A { continue }  // CRLF: the LF belongs to the CR already handled
            }
            switch byte {
            case 0x0D, 0x0A:
                if !lineStarted { startLine(&bytes) }
                bytes.append(0x0A)
                lineStarted = false
                pendingCR = byte == 0x0D
            default:
                if !lineStarted {
                    startLine(&bytes)
                    bytes.append(separator)
                }
                bytes.append(byte)
            }
        }
        if !lineStarted {
            // Empty text, or text that ended with a line break: one more (empty) line, so a
            // conforming parser reproduces the trailing empty line exactly.
            bytes.append(contentsOf: prefix.utf8)
        }
        bytes.append(0x0A)
    }

    /// Appends the decimal digits of a non-negative integer without going through String.
    public static func appendDecimal(_ value: Int64, to bytes: inout [UInt8]) {
        if value < 0 {
            bytes.append(0x2D)
            appendDecimal(value == .min ? .max : -value, to: &bytes)
            return
        }
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                     UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var count = 0
        var rest = value
        withUnsafeMutableBytes(of: &digits) { buffer in
            repeat {
                buffer[19 - count] = UInt8(truncatingIfNeeded: 0x30 + rest % 10)
                rest /= 10
                count += 1
            } while rest > 0
            bytes.append(contentsOf: buffer[(20 - count)...])
        }
    }
}
