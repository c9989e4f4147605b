/// A request field that failed validation, with a sentence that tells the caller what to fix.
public struct ValidationError: Error, Equatable, Sendable, CustomStringConvertible {
    public var detail: String
    public init(_ detail: String) { self.detail = detail }
    public var description: String { detail }
}

/// The rules for topics, client tokens and event types (SPEC §1, §2).
public enum TopicRules {
    public static let maxTopicBytes = 256
    public static let maxTopicsPerRequest = 64
    public static let maxTypeBytes = 128

    /// Validates a topic. Subscriptions may end in `*` (prefix match); publications may not.
    public static func validate(topic: String, forSubscription: Bool) throws(ValidationError) {
        let count = topic.utf8.count
        if count == 0 { throw ValidationError("topic must not be empty") }
        if count > maxTopicBytes {
            throw ValidationError("topic '\(topic.prefix(40))…' is \(count) bytes; the limit is \(maxTopicBytes)")
        }
        if let bad = topic.unicodeScalars.first(where: isControl) {
            throw ValidationError("topic \(quoted(topic)) contains the control character U+\(hex(bad.value)); topics are printable UTF-8")
        }
        if !forSubscription && topic.hasSuffix("*") {
            throw ValidationError("topic \(quoted(topic)) ends in '*': wildcards are for subscribing; publish to a concrete topic")
        }
    }

    /// Validates a client token: `[A-Za-z0-9_-]{8,128}`.
    public static func validate(clientToken token: String) throws(ValidationError) {
        let utf8 = token.utf8
        guard (8...128).contains(utf8.count),
              utf8.allSatisfy({ isTokenByte($0) })
        else {
            throw ValidationError("client token \(quoted(String(token.prefix(140)))) is invalid: use 8 to 128 characters from A-Z a-z 0-9 _ -")
        }
    }

    /// Validates an event type: at most 128 bytes, no control characters (so no CR/LF field
    /// injection), and not in the reserved `herald.` namespace.
    public static func validate(type: String) throws(ValidationError) {
        if type.isEmpty { throw ValidationError("type must not be empty (omit it for the default 'message')") }
        if type.utf8.count > maxTypeBytes {
            throw ValidationError("type is \(type.utf8.count) bytes; the limit is \(maxTypeBytes)")
        }
        if let bad = type.unicodeScalars.first(where: isControl) {
            throw ValidationError("type \(quoted(type)) contains the control character U+\(hex(bad.value)) (CR and LF would inject SSE fields)")
        }
        if type.hasPrefix("herald.") {
            throw ValidationError("type \(quoted(type)) is reserved: types starting with 'herald.' are the server's control events")
        }
    }

    static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case 0x30...0x39, 0x41...0x5A, 0x61...0x7A, 0x2D, 0x5F: return true
        default: return false
        }
    }

    static func isControl(_ scalar: Unicode.Scalar) -> Bool {
        scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value)
    }

    static func hex(_ value: UInt32) -> String {
        let digits = String(value, radix: 16, uppercase: true)
        return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
    }

    static func quoted(_ text: String) -> String {
        "'" + String(text.unicodeScalars.map { isControl($0) ? "?" : Character($0) }) + "'"
    }
}
