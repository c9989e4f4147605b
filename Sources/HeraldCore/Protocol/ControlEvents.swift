/// The server's own events on a stream (SPEC §1, §14): `herald.hello` opens every stream,
/// `herald.reset` tells a client it missed events it can no longer get. Their JSON is built
/// with ``JSONValue`` (escaping handled once, there), their framing by ``SSEEncoder``.
public enum ControlEvents {
    /// `event: herald.hello` with `{"client", "topics", "resumed"}` and no `id:` line.
    public static func appendHello(client: String, topics: [String], resumed: Bool, to bytes: inout [UInt8]) {
        let data = JSONValue.object([
            ("client", .string(client)),
            ("topics", .array(topics.map(JSONValue.string))),
            ("resumed", .bool(resumed)),
        ])
        SSEEncoder.appendEvent(id: nil, type: "herald.hello", data: data.compactText, to: &bytes)
    }

    /// `event: herald.reset` with `{"reason", "lastEventId"}` and `id: <newest>`, so that a
    /// client reconnecting after it resumes from now on.
    public static func appendReset(reason: ResetReason, lastEventID: String, newest: Int64, to bytes: inout [UInt8]) {
        let data = JSONValue.object([("reason", .string(reason.rawValue)), ("lastEventId", .string(lastEventID))])
        SSEEncoder.appendEvent(id: newest, type: "herald.reset", data: data.compactText, to: &bytes)
    }

    /// `event: herald.expired` with `{"exp": N}` (SPEC §14): the subscriber's token expired;
    /// the stream closes after it, and the page opens a new one with a fresh token.
    public static func appendExpired(exp: Double, to bytes: inout [UInt8]) {
        let number = exp == exp.rounded() && abs(exp) < 1e15 ? String(Int64(exp)) : String(exp)
        SSEEncoder.appendEvent(id: nil, type: "herald.expired", data: JSONValue.object([("exp", .number(number))]).compactText, to: &bytes)
    }
}

extension JSONValue {
    /// An integer as a JSON number.
    public static func integer<T: BinaryInteger>(_ value: T) -> JSONValue { .number(String(value)) }

    /// A string, or `null` for nil.
    public static func stringOrNull(_ value: String?) -> JSONValue { value.map(JSONValue.string) ?? .null }
}
