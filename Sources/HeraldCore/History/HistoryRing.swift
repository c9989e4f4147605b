/// Anything the history can hold: it only needs to know its id.
public protocol HistoryEntry {
    var id: Int64 { get }
}

/// The event history: a fixed-capacity ring of entries in strictly increasing id order.
///
/// Ids need not be consecutive (a shared database sequence may skip), so lookups are a binary
/// search over the ring: O(log n) for `Last-Event-ID` resume, O(1) for append and eviction.
/// `evictedThrough` remembers the highest id that ever left the ring (or the position a new
/// sequence starts after), which is what decides whether a resume id is still covered.
///
/// The hot methods are `@inlinable` so that the server's use of the ring is specialised for
/// its element type (an unspecialised generic ring costs a metadata lookup and a boxed copy
/// per element, which a replay scan of thousands of entries per stream notices).
public struct HistoryRing<Entry: HistoryEntry> {
    @usableFromInline var storage: [Entry?]
    @usableFromInline var head = 0  // index of the oldest entry
    public private(set) var count = 0
    public let capacity: Int
    /// Highest id known to be gone from the ring, or the starting position of the sequence.
    public private(set) var evictedThrough: Int64
    /// Highest id ever appended, or the starting position when nothing was.
    public private(set) var newestID: Int64

    /// - Parameters:
    ///   - capacity: how many entries are kept (at least 1).
    ///   - startingAfter: the position the sequence starts after: the first id will be greater.
    public init(capacity: Int, startingAfter: Int64) {
        precondition(capacity >= 1, "history capacity must be at least 1")
        self.capacity = capacity
        self.storage = []
        self.evictedThrough = startingAfter
        self.newestID = startingAfter
    }

    /// The oldest entry's id, if any.
    public var oldestID: Int64? { count == 0 ? nil : storage[head]!.id }

    /// Appends an entry whose id is greater than every id before it.
    /// - Returns: the entry that was evicted to make room, if any.
    @discardableResult
    public mutating func append(_ entry: Entry) -> Entry? {
        precondition(entry.id > newestID, "history ids must increase (\(entry.id) after \(newestID))")
        newestID = entry.id
        if storage.count < capacity {
            storage.append(entry)
            count += 1
            return nil
        }
        if count < capacity {
            storage[(head + count) % capacity] = entry
            count += 1
            return nil
        }
        let evicted = storage[head]!
        storage[head] = entry
        head = (head + 1) % capacity
        evictedThrough = evicted.id
        return evicted
    }

    /// Removes the oldest entry (retention by age) and returns it.
    @discardableResult
    public mutating func removeOldest() -> Entry? {
        guard count > 0, let oldest = storage[head] else { return nil }
        storage[head] = nil
        head = (head + 1) % capacity
        count -= 1
        evictedThrough = oldest.id
        return oldest
    }

    /// The oldest entry, if any.
    public var oldest: Entry? { count == 0 ? nil : storage[head] }

    /// The entry at logical position `index` (0 = oldest).
    @inlinable
    public subscript(index: Int) -> Entry {
        precondition(index >= 0 && index < count)
        return storage[(head + index) % storage.count]!
    }

    /// Logical index of the first entry with an id greater than `id` (`count` if none).
    @inlinable
    public func firstIndex(after id: Int64) -> Int {
        var low = 0
        var high = count
        while low < high {
            let mid = (low + high) / 2
            if self[mid].id <= id { low = mid + 1 } else { high = mid }
        }
        return low
    }

    /// How a `Last-Event-ID` is treated: resumed from, or answered with a reset.
    /// - Parameter floor: where the history starts when it reaches further back than the
    ///   ring (a durable store); by default the ring's own start.
    public func resumeDecision(for lastEventID: String, floor: Int64? = nil) -> ResumeDecision {
        guard let id = EventIDParser.parse(lastEventID) else { return .reset(.unknownID) }
        if id > newestID { return .reset(.unknownID) }
        if id < (floor ?? evictedThrough) { return .reset(.historyTruncated) }
        return .resume(after: id)
    }

    /// Calls `body` for every entry with `after < id <= through`, oldest first; stops early
    /// when `body` returns false.
    @inlinable
    public func forEach(after: Int64, through: Int64, _ body: (Entry) -> Bool) {
        var index = firstIndex(after: after)
        while index < count {
            let entry = self[index]
            if entry.id > through || !body(entry) { return }
            index += 1
        }
    }
}

/// What to do with a client's `Last-Event-ID`.
public enum ResumeDecision: Equatable, Sendable {
    /// Replay every matching entry with an id greater than this one.
    case resume(after: Int64)
    /// Send `herald.reset` with this reason.
    case reset(ResetReason)
}

/// Why a stream was reset instead of resumed.
public enum ResetReason: String, Sendable {
    /// The id is older than the history reaches.
    case historyTruncated = "history-truncated"
    /// The id is not a number, or newer than any id assigned.
    case unknownID = "unknown-id"
}

/// Parses event ids: plain decimal digits, no sign, no spaces, within JavaScript's safe range.
public enum EventIDParser {
    /// Ids stay below 2^53 so JavaScript clients can treat them as numbers.
    public static let maximum: Int64 = (1 << 53) - 1

    public static func parse(_ text: String) -> Int64? {
        let utf8 = text.utf8
        guard !utf8.isEmpty, utf8.count <= 19 else { return nil }
        var value: Int64 = 0
        for byte in utf8 {
            guard byte >= 0x30 && byte <= 0x39 else { return nil }
            let (times, o1) = value.multipliedReportingOverflow(by: 10)
            let (sum, o2) = times.addingReportingOverflow(Int64(byte - 0x30))
            if o1 || o2 { return nil }
            value = sum
        }
        return value
    }
}
