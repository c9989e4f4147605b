/// What one stream subscribed to: exact topics, prefix patterns (`quotes/*`), everything
/// (`*`), and optionally its client token for direct messages.
public struct TopicFilter: Sendable, Equatable {
    public private(set) var exact: Set<String> = []
    /// Prefixes without the trailing `*` (`quotes/*` is stored as `quotes/`).
    public private(set) var prefixes: Set<String> = []
    public private(set) var matchesAll = false
    /// Direct messages addressed to this token reach the stream.
    public var clientToken: String?

    /// - Parameter patterns: validated subscription topics (see ``TopicRules``).
    public init(patterns: [String], clientToken: String?) {
        for pattern in patterns {
            if pattern == "*" {
                matchesAll = true
            } else if pattern.hasSuffix("*") {
                prefixes.insert(String(pattern.dropLast()))
            } else {
                exact.insert(pattern)
            }
        }
        self.clientToken = clientToken
    }

    /// Whether every match is an exact topic or the client token, so that a replay can read
    /// the per-topic logs instead of scanning the history.
    public var isExactOnly: Bool { !matchesAll && prefixes.isEmpty }

    /// The ``KeyedLog`` keys this filter matches (when ``isExactOnly``).
    public var logKeys: [String] {
        var keys = Array(exact)
        if let clientToken { keys.append(LogKeys.direct(clientToken)) }
        return keys
    }

    /// Whether an event for `topics` (or, when `client` is set, a direct message) matches.
    /// `*` never matches direct messages.
    public func matches(topics: [String], client: String?) -> Bool {
        if let client {
            return client == clientToken
        }
        for topic in topics where matches(topic: topic) { return true }
        return false
    }

    /// Whether a single topic matches (exact, prefix, or `*`).
    public func matches(topic: String) -> Bool {
        if matchesAll || exact.contains(topic) { return true }
        for prefix in prefixes where topic.hasPrefix(prefix) { return true }
        return false
    }
}
