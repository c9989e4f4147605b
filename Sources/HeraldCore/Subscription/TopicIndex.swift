/// Maps topics to the subscribers that want them, so that fan-out touches only matching
/// subscribers instead of testing every subscriber against every event.
///
/// Exact topics are one hash lookup. Prefix patterns are found by looking up every prefix of
/// the event topic, or by scanning the registered prefixes when there are fewer of those
/// than bytes in the topic. The index may report a subscriber more than once for an event
/// with several topics; callers de-duplicate by event id (a subscriber never takes an id
/// that is not greater than the last one it was sent).
///
/// Values are identified by `ObjectIdentifier`; the index is confined to one thread (one
/// event loop shard) and needs no locking.
public struct TopicIndex<Value: AnyObject> {
    private var exact: [String: [ObjectIdentifier: Value]] = [:]
    private var prefixes: [String: [ObjectIdentifier: Value]] = [:]
    private var all: [ObjectIdentifier: Value] = [:]
    private var direct: [String: [ObjectIdentifier: Value]] = [:]

    public init() {}

    public var isEmpty: Bool { exact.isEmpty && prefixes.isEmpty && all.isEmpty && direct.isEmpty }

    public mutating func insert(_ value: Value, filter: TopicFilter) {
        let key = ObjectIdentifier(value)
        for topic in filter.exact { exact[topic, default: [:]][key] = value }
        for prefix in filter.prefixes { prefixes[prefix, default: [:]][key] = value }
        if filter.matchesAll { all[key] = value }
        if let token = filter.clientToken { direct[token, default: [:]][key] = value }
    }

    public mutating func remove(_ value: Value, filter: TopicFilter) {
        let key = ObjectIdentifier(value)
        for topic in filter.exact { Self.remove(key, from: &exact, at: topic) }
        for prefix in filter.prefixes { Self.remove(key, from: &prefixes, at: prefix) }
        if filter.matchesAll { all[key] = nil }
        if let token = filter.clientToken { Self.remove(key, from: &direct, at: token) }
    }

    private static func remove(_ key: ObjectIdentifier, from map: inout [String: [ObjectIdentifier: Value]], at name: String) {
        guard var set = map[name] else { return }
        set[key] = nil
        map[name] = set.isEmpty ? nil : set
    }

    /// Calls `body` for every subscriber matching an event (possibly more than once each).
    public func forEachMatch(topics: [String], client: String?, _ body: (Value) -> Void) {
        if let client {
            direct[client]?.values.forEach(body)
            return
        }
        all.values.forEach(body)
        for topic in topics {
            exact[topic]?.values.forEach(body)
            guard !prefixes.isEmpty else { continue }
            if prefixes.count <= topic.utf8.count {
                for (prefix, values) in prefixes where topic.hasPrefix(prefix) {
                    values.values.forEach(body)
                }
            } else {
                // Fewer prefixes of the topic than registered prefixes: look each one up.
                var prefix = ""
                prefixes[prefix]?.values.forEach(body)
                for character in topic {
                    prefix.append(character)
                    prefixes[prefix]?.values.forEach(body)
                }
            }
        }
    }

    /// Every direct-message token currently indexed.
    public var tokens: Dictionary<String, [ObjectIdentifier: Value]>.Keys { direct.keys }
}
