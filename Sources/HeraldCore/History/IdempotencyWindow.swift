/// The `Idempotency-Key`s of the history window (SPEC §2): a key maps to the ids its publish
/// got, and is remembered while any of those events is in the history. Keys are forgotten
/// in publish order once the history's floor passes their newest id, in amortised O(1).
public struct IdempotencyWindow: Sendable {
    private var ids: [String: [Int64]] = [:]
    /// Keys in the order they were recorded, with the newest id of each.
    private var order: [(key: String, newestID: Int64)] = []
    private var orderStart = 0

    public init() {}

    /// Restores keys (oldest first), e.g. from a durable store.
    public init(restoring keys: [(key: String, ids: [Int64])]) {
        for (key, ids) in keys where !ids.isEmpty { record(key: key, ids: ids) }
    }

    public var count: Int { ids.count }

    /// The ids a publish with `key` got, if it is remembered.
    public func ids(for key: String) -> [Int64]? { ids[key] }

    /// Remembers `key` for a publish that got `ids` (in increasing order, after every id
    /// recorded before).
    public mutating func record(key: String, ids: [Int64]) {
        guard let newest = ids.last else { return }
        self.ids[key] = ids
        order.append((key, newest))
    }

    /// Forgets every key whose events all have ids up to `floor` (they left the history).
    public mutating func forget(through floor: Int64) {
        while orderStart < order.count, order[orderStart].newestID <= floor {
            let key = order[orderStart].key
            // A key recorded again later (a new publish after it was forgotten) stays.
            if let current = ids[key], current.last == order[orderStart].newestID { ids[key] = nil }
            orderStart += 1
        }
        if orderStart > 1024 && orderStart * 2 > order.count {
            order.removeFirst(orderStart)
            orderStart = 0
        }
    }
}
