/// Maps topics to the subscribers that want them, so that fan-out touches only matching
/// subscribers instead of testing every subscriber against every event.
///
/// Exact topics are one hash lookup. Prefix patterns are found by looking up the event
/// topic's prefixes of every length some registered prefix has, or by scanning the
/// registered prefixes when there are fewer of those. The index may report a subscriber
/// more than once for an event with several topics; callers de-duplicate by event id (a
/// subscriber never takes an id that is not greater than the last one it was sent).
///
/// Topics are compared by their bytes (``TopicKey``). Insert and remove cost O(topics of the
/// filter), also when thousands of subscribers share a topic: the per-topic sets are
/// mutated in place, never copied (closing 16 000 streams of one topic used to copy the set
/// on every removal, quadratic, and stalled an event loop for seconds).
///
/// Values are identified by `ObjectIdentifier`; the index is confined to one thread (one
/// event loop shard) and needs no locking.
public struct TopicIndex<Value: AnyObject> {
    private var exact: [TopicKey: [ObjectIdentifier: Value]] = [:]
    private var prefixes: [TopicKey: [ObjectIdentifier: Value]] = [:]
    /// How many registered prefixes have each byte length.
    private var prefixLengths: [Int: Int] = [:]
    private var all: [ObjectIdentifier: Value] = [:]
    private var direct: [TopicKey: [ObjectIdentifier: Value]] = [:]

    public init() {}

    public var isEmpty: Bool { exact.isEmpty && prefixes.isEmpty && all.isEmpty && direct.isEmpty }

    public mutating func insert(_ value: Value, filter: TopicFilter) {
        let key = ObjectIdentifier(value)
        for topic in filter.exact { exact[topic, default: [:]][key] = value }
        for prefix in filter.prefixes {
            let name = TopicKey(prefix)
            if prefixes[name] == nil { prefixLengths[prefix.utf8.count, default: 0] += 1 }
            prefixes[name, default: [:]][key] = value
        }
        if filter.matchesAll { all[key] = value }
        if let token = filter.clientToken { direct[TopicKey(token), default: [:]][key] = value }
    }

    public mutating func remove(_ value: Value, filter: TopicFilter) {
        let key = ObjectIdentifier(value)
        for topic in filter.exact { Self.remove(key, from: &exact, at: topic) }
        for prefix in filter.prefixes {
            if Self.remove(key, from: &prefixes, at: TopicKey(prefix)) {
                let length = prefix.utf8.count
                if let count = prefixLengths[length], count > 1 { prefixLengths[length] = count - 1 } else { prefixLengths[length] = nil }
            }
        }
        if filter.matchesAll { all[key] = nil }
        if let token = filter.clientToken { Self.remove(key, from: &direct, at: TopicKey(token)) }
    }

    /// Removes `key` from the set at `name` in place; returns whether the set became empty
    /// (and was dropped).
    @discardableResult
    private static func remove(_ key: ObjectIdentifier, from map: inout [TopicKey: [ObjectIdentifier: Value]], at name: TopicKey) -> Bool {
        guard let index = map.index(forKey: name) else { return false }
        // `values[index]` is mutated through the dictionary's storage: no copy of the set.
        map.values[index].removeValue(forKey: key)
        if map.values[index].isEmpty {
            map.remove(at: index)
            return true
        }
        return false
    }

    /// Calls `body` for every subscriber matching an event (possibly more than once each).
    public func forEachMatch(topics: [String], client: String?, _ body: (Value) -> Void) {
        if let client {
            direct[TopicKey(client)]?.values.forEach(body)
            return
        }
        all.values.forEach(body)
        for topic in topics {
            exact[TopicKey(topic)]?.values.forEach(body)
            guard !prefixes.isEmpty else { continue }
            let utf8 = topic.utf8
            if prefixes.count <= prefixLengths.count || prefixes.count <= 8 {
                for (prefix, values) in prefixes where topic.bytesHavePrefix(prefix.text) {
                    values.values.forEach(body)
                }
            } else {
                // Many prefixes: look up the topic's prefix of each registered length (cut
                // only where a character starts, as every registered prefix ends there).
                let substring = Substring(topic)
                for (length, _) in prefixLengths where length <= utf8.count {
                    let end = utf8.index(utf8.startIndex, offsetBy: length)
                    if end != utf8.endIndex && utf8[end] & 0xC0 == 0x80 { continue }
                    prefixes[TopicKey(substring[..<end])]?.values.forEach(body)
                }
            }
        }
    }

    /// At least how many values ``forEachMatch(topics:client:_:)`` visits, counted only until
    /// the count passes `limit` (then any number above it is returned): whether an event
    /// reaches few subscriptions, without visiting them.
    public func matchCount(topics: [String], client: String?, limit: Int) -> Int {
        if let client { return direct[TopicKey(client)]?.count ?? 0 }
        var count = all.count
        for topic in topics {
            if count > limit { return count }
            count += exact[TopicKey(topic)]?.count ?? 0
            // Prefix subscriptions: counted as many (a prefix usually stands for many topics).
            if !prefixes.isEmpty { return limit + 1 }
        }
        return count
    }

    /// Every direct-message token currently indexed.
    public var tokens: [String] { direct.keys.map(\.name) }
}
