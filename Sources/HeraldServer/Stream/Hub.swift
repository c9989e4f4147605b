import Atomics
import HeraldCore
import NIOConcurrencyHelpers
import NIOCore

/// The server's shared event state: the one id sequence, the history ring, the retained
/// event of each topic and the idempotency keys, behind one lock; plus the fan-out shards.
///
/// Publishing takes the lock once per batch (assign ids, encode, append), then nudges every
/// shard. Shards pull what they have not delivered yet from the ring, so the ring is the
/// only queue between publishers and subscribers: a shard that falls behind catches up in
/// one batch, and a burst of publishes costs each shard one wake-up.
final class Hub: @unchecked Sendable {
    // Every `var` below is guarded by `lock`, except `shards`, which is written once before
    // the server accepts connections and only read afterwards.
    private let lock = NIOLock()
    private var ring: HistoryRing<StoredEvent>
    private var logs = KeyedLog<StoredEvent>()
    private var retained: [String: StoredEvent] = [:]
    private var idempotency: [String: [Int64]] = [:]
    /// Keys in the order their events were published, with the newest id of each, so that
    /// a key is forgotten once all its events have left the history.
    private var idempotencyOrder: [(key: String, newestID: Int64)] = []
    private var idempotencyOrderStart = 0

    private(set) var shards: [Shard] = []
    let allocator = ByteBufferAllocator()
    let metrics: HeraldMetrics
    /// Open streams (and waiting polls), for `--max-connections` and the metrics.
    let openStreams = ManagedAtomic<Int>(0)

    /// - Parameters:
    ///   - capacity: history capacity in events.
    ///   - startingAfter: the position the id sequence starts after.
    init(capacity: Int, startingAfter: Int64, metrics: HeraldMetrics) {
        self.ring = HistoryRing(capacity: capacity, startingAfter: startingAfter)
        self.metrics = metrics
    }

    /// A start position for the in-memory store that is above every id an earlier run can
    /// have assigned (microseconds since 1970, far below 2^53 for two centuries), so that a
    /// pre-restart `Last-Event-ID` is recognised as unknown instead of replayed wrongly.
    static func memoryStoreStart(nowMicroseconds: Int64) -> Int64 {
        min(nowMicroseconds, EventIDParser.maximum / 2)
    }

    func installShards(_ shards: [Shard]) {
        precondition(self.shards.isEmpty)
        self.shards = shards
    }

    func shard(for loop: any EventLoop) -> Shard {
        for shard in shards where shard.eventLoop === loop { return shard }
        preconditionFailure("no shard for event loop \(loop)")
    }

    // MARK: Publishing

    struct PublishOutcome {
        var ids: [Int64]
        /// True when an earlier call with the same idempotency key is being answered.
        var repeated: Bool
    }

    /// Publishes a batch atomically: all events get consecutive ids and enter the history
    /// together, or (for a repeated idempotency key) nothing happens and the first ids return.
    ///
    /// Every shard, the publisher's own loop included, is nudged with an `execute` rather
    /// than delivering inline: under load the nudges coalesce, so a shard writes a burst of
    /// events to each stream with one flush (measured: inline delivery on the publishing
    /// loop cut fan-out throughput to a quarter, one flush per stream per event).
    func publish(_ drafts: [EventDraft], client: String?, retain: Bool, idempotencyKey: String?) -> PublishOutcome {
        let outcome: PublishOutcome = lock.withLock {
            if let idempotencyKey, let ids = idempotency[idempotencyKey] {
                return PublishOutcome(ids: ids, repeated: true)
            }
            var ids: [Int64] = []
            ids.reserveCapacity(drafts.count)
            for draft in drafts {
                let id = ring.newestID + 1
                let event = StoredEvent(
                    id: id, topics: draft.topics, client: client, type: draft.type, data: draft.data, allocator: allocator)
                if let evicted = ring.append(event) { logs.evict(evicted, keys: evicted.logKeys) }
                logs.append(event, keys: event.logKeys)
                ids.append(id)
                if retain && client == nil {
                    for topic in draft.topics { retained[topic] = event }
                }
            }
            if let idempotencyKey {
                idempotency[idempotencyKey] = ids
                idempotencyOrder.append((idempotencyKey, ids.last!))
            }
            forgetEvictedKeys()
            return PublishOutcome(ids: ids, repeated: false)
        }
        if !outcome.repeated {
            metrics.eventsPublished.increment(by: Int64(outcome.ids.count))
            for shard in shards { shard.scheduleDelivery() }
        }
        return outcome
    }

    /// Drops idempotency keys whose events have all left the history. Lock held.
    private func forgetEvictedKeys() {
        let evicted = ring.evictedThrough
        while idempotencyOrderStart < idempotencyOrder.count, idempotencyOrder[idempotencyOrderStart].newestID <= evicted {
            idempotency[idempotencyOrder[idempotencyOrderStart].key] = nil
            idempotencyOrderStart += 1
        }
        if idempotencyOrderStart > 1024 && idempotencyOrderStart * 2 > idempotencyOrder.count {
            idempotencyOrder.removeFirst(idempotencyOrderStart)
            idempotencyOrderStart = 0
        }
    }

    // MARK: Reading, for the shards

    struct Pending {
        var events: [StoredEvent]
        var newest: Int64
        /// Events after the requested position were evicted before they could be read.
        var missed: Bool
    }

    /// Everything published after `position`, for a shard's live delivery.
    func events(after position: Int64) -> Pending {
        lock.withLock { pendingLocked(after: position) }
    }

    private func pendingLocked(after position: Int64) -> Pending {
        var events: [StoredEvent] = []
        let newest = ring.newestID
        if newest > position {
            ring.forEach(after: position, through: newest) { events.append($0); return true }
        }
        return Pending(events: events, newest: newest, missed: ring.evictedThrough > position)
    }

    /// How a new stream begins.
    enum Opening {
        /// No Last-Event-ID: the retained events of its topics.
        case fresh(retained: [StoredEvent])
        /// A resumable Last-Event-ID: replay what came after it.
        case resume(after: Int64)
        /// Any other Last-Event-ID: `herald.reset`, then the retained events.
        case reset(ResetReason, retained: [StoredEvent])
    }

    /// Under one lock: what the shard has not delivered yet, and how a new stream on it
    /// opens. Doing both at once is what makes subscribing gap-free: the new stream starts
    /// exactly where the shard's live delivery will continue.
    func openStream(shardPosition: Int64, lastEventID: String?, filter: TopicFilter) -> (Pending, Opening) {
        lock.withLock {
            let pending = pendingLocked(after: shardPosition)
            guard let lastEventID else {
                return (pending, .fresh(retained: retainedLocked(for: filter, through: pending.newest)))
            }
            switch ring.resumeDecision(for: lastEventID) {
            case .resume(let after):
                return (pending, .resume(after: after))
            case .reset(let reason):
                return (pending, .reset(reason, retained: retainedLocked(for: filter, through: pending.newest)))
            }
        }
    }

    struct ReplayBatch {
        var events: [StoredEvent]
        /// The replay position after this batch (every id up to it was examined).
        var position: Int64
        /// Ids after the starting position were evicted while the stream was replaying.
        var truncated: Bool
    }

    /// The next slice of a replay: matching events after `position` up to `through`,
    /// stopping after about `maxBytes` of output, `maxEvents` events or `maxScan` examined
    /// entries, so that one replay never holds the lock or the event loop for long.
    /// Subscriptions to exact topics read the per-topic logs (cost proportional to what they
    /// get); prefix and `*` subscriptions scan the ring.
    func replayBatch(after position: Int64, through: Int64, filter: TopicFilter, maxBytes: Int, maxEvents: Int, maxScan: Int) -> ReplayBatch {
        lock.withLock {
            if ring.evictedThrough > position {
                return ReplayBatch(events: [], position: position, truncated: true)
            }
            if filter.isExactOnly {
                var (events, reached) = logs.entries(forKeys: filter.logKeys, after: position, through: through, limit: maxEvents)
                var bytes = 0
                for (index, event) in events.enumerated() {
                    bytes += event.chunked.readableBytes
                    if bytes >= maxBytes && index + 1 < events.count {
                        events.removeSubrange((index + 1)...)
                        reached = event.id
                        break
                    }
                }
                return ReplayBatch(events: events, position: reached, truncated: false)
            }
            var events: [StoredEvent] = []
            var bytes = 0
            var scanned = 0
            var reached = position
            var stopped = false
            ring.forEach(after: position, through: through) { event in
                scanned += 1
                reached = event.id
                if filter.matches(topics: event.topics, client: event.client) {
                    events.append(event)
                    bytes += event.chunked.readableBytes
                }
                stopped = bytes >= maxBytes || scanned >= maxScan || events.count >= maxEvents
                return !stopped
            }
            if !stopped { reached = through }
            return ReplayBatch(events: events, position: reached, truncated: false)
        }
    }

    /// The retained events matching `filter` with ids up to `through`, in id order.
    func retainedEvents(for filter: TopicFilter, through: Int64) -> [StoredEvent] {
        lock.withLock { retainedLocked(for: filter, through: through) }
    }

    private func retainedLocked(for filter: TopicFilter, through: Int64) -> [StoredEvent] {
        var chosen: [Int64: StoredEvent] = [:]
        if filter.matchesAll || !filter.prefixes.isEmpty {
            for (topic, event) in retained where event.id <= through && filter.matches(topic: topic) {
                chosen[event.id] = event
            }
        } else {
            for topic in filter.exact {
                if let event = retained[topic], event.id <= through { chosen[event.id] = event }
            }
        }
        return chosen.values.sorted { $0.id < $1.id }
    }

    /// Counts for `/metrics` and `/health`.
    var historySize: Int { lock.withLock { ring.count } }
    var newestID: Int64 { lock.withLock { ring.newestID } }
}
