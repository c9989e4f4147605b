/// A message received on an event stream: what an `EventSource` would dispatch, plus the
/// comments and `retry:` hints that a test or a load tool wants to see.
public enum SSEMessage: Equatable, Sendable {
    case event(ReceivedEvent)
    case comment(String)
    case retry(Int)
}

/// One dispatched event as a browser's `EventSource` reports it.
public struct ReceivedEvent: Equatable, Sendable {
    /// The event type; `message` when the stream set none.
    public var type: String
    public var data: String
    /// The last event id in force when the event was dispatched (WHATWG: it persists).
    public var lastEventID: String
    /// Whether this block itself carried an `id:` field.
    public var hadIDField: Bool

    public init(type: String, data: String, lastEventID: String, hadIDField: Bool) {
        self.type = type
        self.data = data
        self.lastEventID = lastEventID
        self.hadIDField = hadIDField
    }
}

/// A spec-conformant incremental `text/event-stream` decoder (WHATWG HTML, "Server-sent
/// events", §9.2.6). Used by the tests and by the load tool; the server itself never parses
/// its own streams.
public struct SSEDecoder: Sendable {
    private var lines = SSELineParser()
    private var data: [String] = []
    private var hasData = false
    private var eventType = ""
    private var lastEventID = ""
    private var blockHadID = false

    public init() {}

    /// Decodes `bytes` and returns the messages completed by them.
    public mutating func decode<Bytes: Sequence>(_ bytes: Bytes) -> [SSEMessage] where Bytes.Element == UInt8 {
        var out: [SSEMessage] = []
        var parser = lines
        parser.feed(bytes) { line in self.handle(line, into: &out) }
        lines = parser
        return out
    }

    private mutating func handle(_ line: SSELineParser.Line, into out: inout [SSEMessage]) {
        switch line {
        case .comment(let text):
            out.append(.comment(text))
        case .blank:
            defer {
                data = []
                hasData = false
                eventType = ""
                blockHadID = false
            }
            guard hasData else { return }
            out.append(.event(ReceivedEvent(
                type: eventType.isEmpty ? "message" : eventType,
                data: data.joined(separator: "\n"),
                lastEventID: lastEventID,
                hadIDField: blockHadID
            )))
        case .field(let name, let value):
            switch name {
            case "event":
                eventType = value
            case "data":
                data.append(value)
                hasData = true
            case "id":
                if !value.utf8.contains(0) {
                    lastEventID = value
                    blockHadID = true
                }
            case "retry":
                if !value.isEmpty, value.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let ms = Int(value) {
                    out.append(.retry(ms))
                }
            default:
                break
            }
        }
    }
}
