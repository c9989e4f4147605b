/// Splits an event stream into fields, following the WHATWG "event stream interpretation"
/// line rules: lines end in CRLF, LF or a lone CR (also when the CR and LF arrive in separate
/// chunks), a leading UTF-8 BOM is dropped once, `:` starts a comment, the first `:` splits
/// field from value and one space after it is removed.
///
/// It is incremental: feed any split of the input and the same fields come out. Both the
/// client-side ``SSEDecoder`` and the publish-body parser build on it.
public struct SSELineParser: Sendable {
    /// One line of the stream, interpreted.
    public enum Line: Equatable, Sendable {
        /// An empty line: dispatch the pending event.
        case blank
        /// A comment line (the text after the colon, space not removed).
        case comment(String)
        /// A field line. `value` has its single leading space removed.
        case field(name: String, value: String)
    }

    private var current: [UInt8] = []
    private var lastWasCR = false
    private var bomChecked = false
    /// Number of complete lines seen so far (for error messages that name a line).
    public private(set) var lineNumber = 0

    public init() {}

    /// Feeds bytes and calls `onLine` for each complete line.
    public mutating func feed<Bytes: Sequence>(_ bytes: Bytes, onLine: (Line) throws -> Void) rethrows
    where Bytes.Element == UInt8 {
        for byte in bytes {
            if !bomChecked {
                // The BOM is three bytes; keep collecting until we can decide.
                current.append(byte)
                if current.count < 3 && [0xEF, 0xBB, 0xBF].starts(with: current) { continue }
                bomChecked = true
                let collected = current
                current.removeAll(keepingCapacity: true)
                let rest = collected == [0xEF, 0xBB, 0xBF] ? [] : collected
                try feed(rest, onLine: onLine)
                continue
            }
            if lastWasCR {
                lastWasCR = false
                if byte == 0x0A { continue }
            }
            if byte == 0x0A || byte == 0x0D {
                lastWasCR = byte == 0x0D
                try onLine(Self.interpret(current))
                lineNumber += 1
                current.removeAll(keepingCapacity: true)
            } else {
                current.append(byte)
            }
        }
    }

    /// Ends the input. A final line without a line break is returned as a line when
    /// `completeTrailingLine` is true (publish bodies), and dropped otherwise (the WHATWG
    /// rule for streams: an incomplete last line is discarded).
    public mutating func finish(completeTrailingLine: Bool, onLine: (Line) throws -> Void) rethrows {
        if !bomChecked {
            bomChecked = true
            if current == [0xEF, 0xBB] || current == [0xEF] { current = [] }
        }
        if completeTrailingLine && !current.isEmpty {
            try onLine(Self.interpret(current))
            lineNumber += 1
        }
        current.removeAll()
        lastWasCR = false
    }

    static func interpret(_ line: [UInt8]) -> Line {
        if line.isEmpty { return .blank }
        if line[0] == 0x3A {
            return .comment(String(decoding: line[1...], as: UTF8.self))
        }
        guard let colon = line.firstIndex(of: 0x3A) else {
            return .field(name: String(decoding: line, as: UTF8.self), value: "")
        }
        var valueStart = colon + 1
        if valueStart < line.count && line[valueStart] == 0x20 { valueStart += 1 }
        return .field(
            name: String(decoding: line[..<colon], as: UTF8.self),
            value: String(decoding: line[valueStart...], as: UTF8.self)
        )
    }
}
