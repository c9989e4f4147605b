/// The retained event of each topic (SPEC §2 `retain`, §16): the latest one wins, at most
/// `limit` topics (past it, the topic whose retained event is oldest loses it), and new
/// subscribers read them in id order in bounded slices, so that a `*` subscriber of 100 000
/// retained topics never holds the hub's lock (or the memory of a copy) for all of them at once.
///
/// Besides the map from topic to entry it keeps every (id, topic) it was given in id order.
/// An item whose topic has since got a newer entry (or lost its entry) is stale and skipped;
/// stale items are compacted away once they are the majority, so the order list stays within
/// about twice the live count and every operation is amortised O(1) (O(log n) to find where
/// a slice starts).
public struct RetainedSet<Entry: HistoryEntry> {
    private var byTopic: [TopicKey: Entry] = [:]
    private var order: [(id: Int64, topic: TopicKey)] = []
    private var orderStart = 0
    /// Most topics kept.
    public let limit: Int

    public init(limit: Int) {
        precondition(limit >= 1, "the retained limit must be at least 1")
        self.limit = limit
    }

    /// Topics that have a retained entry.
    public var count: Int { byTopic.count }
    public var isEmpty: Bool { byTopic.isEmpty }

    public func entry(for topic: String) -> Entry? { byTopic[TopicKey(topic)] }

    /// Makes `entry` the retained entry of each of `topics`. Entries must come in id order.
    /// Returns the topics that lost their entry to the limit.
    @discardableResult
    public mutating func retain(_ entry: Entry, topics: [String]) -> [String] {
        for topic in topics {
            let key = TopicKey(topic)
            byTopic[key] = entry
            order.append((entry.id, key))
        }
        var evicted: [String] = []
        while byTopic.count > limit, orderStart < order.count {
            let (id, topic) = order[orderStart]
            orderStart += 1
            if let current = byTopic[topic], current.id == id {
                byTopic[topic] = nil
                evicted.append(topic.name)
            }
        }
        compactIfNeeded()
        return evicted
    }

    /// Clears the retained entry of `topic`; returns it, or nil if there was none.
    @discardableResult
    public mutating func remove(topic: String) -> Entry? {
        let removed = byTopic.removeValue(forKey: TopicKey(topic))
        if removed != nil { compactIfNeeded() }
        return removed
    }

    /// Every (topic, entry), in no particular order (for persistence and tests).
    public var all: [(topic: String, entry: Entry)] { byTopic.map { ($0.key.name, $0.value) } }

    private mutating func compactIfNeeded() {
        let held = order.count - orderStart
        guard held > 64, held > 2 * byTopic.count else { return }
        var live: [(id: Int64, topic: TopicKey)] = []
        live.reserveCapacity(byTopic.count)
        for index in orderStart..<order.count {
            let item = order[index]
            if let current = byTopic[item.topic], current.id == item.id { live.append(item) }
        }
        order = live
        orderStart = 0
    }

    /// One slice of the retained entries with `after < id <= through` whose topic `matches`,
    /// in id order, each entry once (an entry retained on several topics is one event).
    ///
    /// Stops after `maxEntries` entries, or after examining `maxScan` items, or when the
    /// entries' total `weight` reaches `maxWeight` (bytes, for socket pacing).
    /// - Returns: the entries, the position up to which every matching entry is included,
    ///   and whether the slice reached `through` (nothing more to read).
    public func slice(
        after: Int64, through: Int64, maxEntries: Int, maxScan: Int, maxWeight: Int = .max,
        weight: (Entry) -> Int = { _ in 1 }, matches: (String) -> Bool
    ) -> (entries: [Entry], position: Int64, finished: Bool) {
        // The first item with an id after `after`.
        var low = orderStart
        var high = order.count
        while low < high {
            let mid = (low + high) / 2
            if order[mid].id <= after { low = mid + 1 } else { high = mid }
        }
        var entries: [Entry] = []
        var scanned = 0
        var total = 0
        var position = after
        var index = low
        while index < order.count {
            let (id, topic) = order[index]
            if id > through { return (entries, through, true) }
            if id > position, scanned >= maxScan || entries.count >= maxEntries || total >= maxWeight {
                // Stop only between ids (the items of one entry are adjacent): everything
                // up to `position` has been examined, and nothing of this id has.
                return (entries, position, false)
            }
            scanned += 1
            index += 1
            if let current = byTopic[topic], current.id == id, entries.last?.id != id, matches(topic.name) {
                entries.append(current)
                total += weight(current)
            }
            position = max(position, id)
        }
        return (entries, through, true)
    }

    /// The retained entries of the exact `topics` with `after < id <= through`, in id order,
    /// each once. For subscriptions without patterns: O(topics), whatever the set's size.
    public func entries(forExact topics: [String], after: Int64, through: Int64) -> [Entry] {
        var chosen: [Int64: Entry] = [:]
        for topic in topics {
            if let entry = byTopic[TopicKey(topic)], entry.id > after, entry.id <= through { chosen[entry.id] = entry }
        }
        return chosen.values.sorted { $0.id < $1.id }
    }
}
