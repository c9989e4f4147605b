/// What one stream subscribed to: exact topics, prefix patterns (`quotes/*`), everything
/// (`*`), and optionally its client token for direct messages.
///
/// Topics compare by their UTF-8 bytes (``TopicKey``), never by Unicode equivalence.
public struct TopicFilter: Sendable, Equatable {
    public private(set) var exact: Set<TopicKey> = []
    /// Prefixes without the trailing `*` (`quotes/*` is stored as `quotes/`), each once: slices
    /// of the requested patterns, so a stream's topics are held once (a subscriber of 64
    /// long prefixes does not pay for them twice).
    public private(set) var prefixes: [Substring] = []
    public private(set) var matchesAll = false
    /// Direct messages addressed to this token reach the stream.
    public var clientToken: String?

    /// - Parameter patterns: validated subscription topics (see ``TopicRules``).
    public init(patterns: [String], clientToken: String?) {
        var seenPrefixes = Set<TopicKey>()
        for pattern in patterns {
            if pattern == "*" {
                matchesAll = true
            } else if pattern.utf8.last == UInt8(ascii: "*") {
                // Cut the `*` byte off (not the last Character, which could be a cluster).
                let prefix = pattern[..<pattern.utf8.index(before: pattern.utf8.endIndex)]
                if seenPrefixes.insert(TopicKey(prefix)).inserted { prefixes.append(prefix) }
            } else {
                exact.insert(TopicKey(pattern))
            }
        }
        self.clientToken = clientToken
    }

    public static func == (lhs: TopicFilter, rhs: TopicFilter) -> Bool {
        lhs.exact == rhs.exact && lhs.matchesAll == rhs.matchesAll && lhs.clientToken == rhs.clientToken
            && Set(lhs.prefixes.map(TopicKey.init)) == Set(rhs.prefixes.map(TopicKey.init))
    }

    /// Whether every match is an exact topic or the client token, so that a replay can read
    /// the per-topic logs instead of scanning the history.
    public var isExactOnly: Bool { !matchesAll && prefixes.isEmpty }

    /// The ``KeyedLog`` keys this filter matches (when ``isExactOnly``).
    public var logKeys: [String] {
        var keys = exact.map(\.name)
        if let clientToken { keys.append(LogKeys.direct(clientToken)) }
        return keys
    }

    /// Whether an event for `topics` (or, when `client` is set, a direct message) matches.
    /// `*` never matches direct messages.
    public func matches(topics: [String], client: String?) -> Bool {
        if let client {
            guard let clientToken else { return false }
            return client.bytesEqual(clientToken)
        }
        for topic in topics where matches(topic: topic) { return true }
        return false
    }

    /// Whether a single topic matches (exact, prefix, or `*`).
    public func matches(topic: String) -> Bool {
        if matchesAll || exact.contains(TopicKey(topic)) { return true }
        for prefix in prefixes where topic.bytesHavePrefix(prefix) { return true }
        return false
    }
}
