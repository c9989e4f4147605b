import HeraldCore
import Testing

@Suite("KeyedLog: per-topic history for replay")
struct KeyedLogTests {
    @Test("A busy key keeps at most about as many evicted entries alive as live ones")
    func evictedEntriesAreReleased() {
        var log = KeyedLog<Entry>()
        for id in Int64(1)...10_000 {
            log.append(Entry(id: id), keys: ["busy", "k\(id % 50)"])
            if id > 20 { log.evict(Entry(id: id - 20), keys: ["busy", "k\((id - 20) % 50)"]) }
        }
        // 20 live entries under "busy" and 20 spread over the other keys.
        #expect(log.heldEntryCount <= 2 * 20 + 16 + 50 * 1)
        #expect(log.entries(forKeys: ["busy"], after: 0, through: 10_000, limit: 100).entries.count == 20)
    }

    @Test("Returns each key's entries in range, merged in id order, once each, and forgets evicted ones")
    func entries() {
        var log = KeyedLog<Entry>()
        // id: keys
        let plan: [(Int64, [String])] = [(1, ["a"]), (2, ["b"]), (3, ["a", "b"]), (4, ["c"]), (5, ["a"]), (6, ["b"])]
        for (id, keys) in plan { log.append(Entry(id: id), keys: keys) }
        func ids(_ keys: [String], after: Int64, through: Int64 = 100, limit: Int = 100) -> ([Int64], Int64) {
            let (entries, position) = log.entries(forKeys: keys, after: after, through: through, limit: limit)
            return (entries.map(\.id), position)
        }
        #expect(ids(["a"], after: 0) == ([1, 3, 5], 100))
        #expect(ids(["a", "b"], after: 0) == ([1, 2, 3, 5, 6], 100))
        #expect(ids(["a", "b"], after: 2) == ([3, 5, 6], 100))
        #expect(ids(["a", "b"], after: 0, through: 5) == ([1, 2, 3, 5], 5))
        #expect(ids(["missing"], after: 0) == ([], 100))
        // A limit: the position says how far the answer is complete.
        #expect(ids(["a", "b"], after: 0, limit: 2) == ([1, 2], 2))
        #expect(ids(["a"], after: 0, limit: 2) == ([1, 3], 3))
        log.evict(Entry(id: 1), keys: ["a"])
        log.evict(Entry(id: 2), keys: ["b"])
        #expect(ids(["a", "b"], after: 0) == ([3, 5, 6], 100))
        log.evict(Entry(id: 4), keys: ["c"])
        #expect(log.keyCount == 2)
    }

    @Test("Exact-only filters name their log keys, including the direct-message key")
    func filterKeys() {
        let filter = TopicFilter(patterns: ["a", "b"], clientToken: "token_123")
        #expect(filter.isExactOnly)
        #expect(Set(filter.logKeys) == ["a", "b", LogKeys.direct("token_123")])
        #expect(!TopicFilter(patterns: ["a/*"], clientToken: nil).isExactOnly)
        #expect(!TopicFilter(patterns: ["*"], clientToken: nil).isExactOnly)
    }
}
