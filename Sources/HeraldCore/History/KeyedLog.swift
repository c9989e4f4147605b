/// Per-topic views of the history: for every topic (and every direct-message token) the
/// entries published to it, oldest first, trimmed as the ring evicts.
///
/// A replay for a subscription to exact topics then costs what it returns, not the length
/// of the gap: a client of one quiet topic that missed 10 of 10 000 events reads 10 entries,
/// where a scan of the ring would test all 10 000 against its filter.
public struct KeyedLog<Entry: HistoryEntry> {
    /// The key of direct messages to `token` (topics never contain control characters, so
    /// it cannot collide with one).
    public static func directKey(_ token: String) -> String { LogKeys.direct(token) }

    @usableFromInline final class Log {
        @usableFromInline var entries: [Entry] = []
        @usableFromInline var start = 0
        init() {}
    }

    /// Keyed by bytes (``TopicKey``), like every topic-keyed collection.
    @usableFromInline var logs: [TopicKey: Log] = [:]

    public init() {}


    public var keyCount: Int { logs.count }

    /// Entries held, evicted ones not yet compacted away included (what the log keeps alive).
    public var heldEntryCount: Int { logs.values.reduce(0) { $0 + $1.entries.count } }

    /// Records `entry` under each key.
    public mutating func append(_ entry: Entry, keys: [String]) {
        for name in keys {
            let key = TopicKey(name)
            let log: Log
            if let existing = logs[key] { log = existing } else { log = Log(); logs[key] = log }
            log.entries.append(entry)
        }
    }

    /// Forgets `entry`, which must be the oldest entry of each of its keys (the ring evicts
    /// oldest first, so it is).
    public mutating func evict(_ entry: Entry, keys: [String]) {
        for name in keys {
            let key = TopicKey(name)
            guard let log = logs[key], log.start < log.entries.count, log.entries[log.start].id == entry.id else { continue }
            log.start += 1
            if log.start == log.entries.count {
                logs[key] = nil
            } else if log.start >= 16 && log.start * 2 >= log.entries.count {
                // Compact once half the array is dead: amortised O(1) per eviction, and a
                // busy key never pins more evicted events than it holds live ones (the soak
                // test caught a fixed threshold of 1024 keeping ~1000 dead events per topic).
                log.entries.removeFirst(log.start)
                log.start = 0
            }
        }
    }

    /// Entries of any of `keys` with `after < id <= through`, in id order, each once, at most
    /// `limit` of them. Returns the entries and the position they cover: every matching entry
    /// up to that id is included (it is `through` unless the limit cut the list short).
    public func entries(forKeys keys: [String], after: Int64, through: Int64, limit: Int) -> (entries: [Entry], position: Int64) {
        var lists: [ArraySlice<Entry>] = []
        var position = through
        for key in keys {
            guard let log = logs[TopicKey(key)] else { continue }
            var low = log.start
            var high = log.entries.count
            while low < high {
                let mid = (low + high) / 2
                if log.entries[mid].id <= after { low = mid + 1 } else { high = mid }
            }
            var end = low
            while end < log.entries.count && end - low < limit && log.entries[end].id <= through { end += 1 }
            if end - low == limit && end < log.entries.count && log.entries[end].id <= through {
                // This key had more: the batch can only claim to cover up to what it took.
                position = min(position, log.entries[end - 1].id)
            }
            if end > low { lists.append(log.entries[low..<end]) }
        }
        if lists.isEmpty { return ([], position) }
        if lists.count == 1 {
            return (lists[0].filter { $0.id <= position }, position)
        }
        // Merge the sorted lists, dropping entries that appear under several keys.
        var merged: [Entry] = []
        var indices = lists.map(\.startIndex)
        var lastID = Int64.min
        while true {
            var best = -1
            var bestID = Int64.max
            for (number, list) in lists.enumerated() where indices[number] < list.endIndex {
                let id = list[indices[number]].id
                if id < bestID {
                    bestID = id
                    best = number
                }
            }
            if best < 0 || bestID > position { break }
            let entry = lists[best][indices[best]]
            indices[best] += 1
            if entry.id != lastID {
                merged.append(entry)
                lastID = entry.id
                if merged.count == limit {
                    position = min(position, lastID)
                    break
                }
            }
        }
        return (merged, position)
    }
}

/// Key spellings shared by the log and the filters.
public enum LogKeys {
    public static func direct(_ token: String) -> String { "\u{1}" + token }
}
