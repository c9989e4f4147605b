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
    private var retained: RetainedSet<StoredEvent>
    private var idempotency: [String: [Int64]] = [:]
    /// Keys in the order their events were published, with the newest id of each, so that
    /// a key is forgotten once all its events have left the history.
    private var idempotencyOrder: [(key: String, newestID: Int64)] = []
    private var idempotencyOrderStart = 0

    /// The newest id handed out. Equal to `ring.newestID` with the memory store; with a
    /// durable store it runs ahead while batches wait for their commit.
    private var assignedThrough: Int64
    /// The durable store, if any, and where its history starts (ids up to `storeFloor` are
    /// gone); with the memory store the history is the ring and starts at its eviction point.
    private(set) var store: SQLiteStore?
    private var storeFloor: Int64 = 0
    /// Idempotency keys whose batch is waiting for its commit: a retry waits for the same one.
    private var pendingKeys: [String: EventLoopFuture<[Int64]>] = [:]

    private(set) var shards: [Shard] = []
    let allocator = ByteBufferAllocator()
    let metrics: HeraldMetrics
    /// Open streams (and waiting polls), for `--max-connections` and the metrics.
    let openStreams = ManagedAtomic<Int>(0)

    /// - Parameters:
    ///   - capacity: history capacity in events.
    ///   - startingAfter: the position the id sequence starts after.
    init(capacity: Int, startingAfter: Int64, maxRetained: Int, metrics: HeraldMetrics) {
        self.ring = HistoryRing(capacity: capacity, startingAfter: startingAfter)
        self.retained = RetainedSet(limit: max(1, maxRetained))
        self.assignedThrough = startingAfter
        self.metrics = metrics
    }

    /// Continues from what a durable store held at startup: its id sequence, the newest part
    /// of its history (as the ring, capacity `cacheCapacity`), retained events and
    /// idempotency keys. Called before the server accepts connections.
    /// - Returns: the newest visible id, where the shards start.
    func attach(store: SQLiteStore, snapshot: SQLiteStore.Snapshot, cacheCapacity: Int) -> Int64 {
        lock.withLock {
            let ringStart = snapshot.recent.first.map { max(snapshot.floor, $0.id - 1) } ?? snapshot.lastID
            ring = HistoryRing(capacity: max(1, cacheCapacity), startingAfter: ringStart)
            logs = KeyedLog()
            for event in snapshot.recent {
                if let evicted = ring.append(event) { logs.evict(evicted, keys: evicted.logKeys) }
                logs.append(event, keys: event.logKeys)
            }
            // Ids the store committed but that are no longer in it (pruned by age) still
            // count: the sequence continues after the newest id ever committed.
            if ring.newestID < snapshot.lastID {
                ring = HistoryRing(capacity: max(1, cacheCapacity), startingAfter: snapshot.lastID)
                logs = KeyedLog()
            }
            assignedThrough = snapshot.lastID
            self.store = store
            storeFloor = snapshot.floor
            retained = RetainedSet(limit: retained.limit)
            for (topic, event) in snapshot.retained.sorted(by: { $0.value.id < $1.value.id }) {
                retained.retain(event, topics: [topic])
            }
            idempotency = [:]
            idempotencyOrder = []
            idempotencyOrderStart = 0
            for (key, ids) in snapshot.idempotency where !ids.isEmpty {
                idempotency[key] = ids
                idempotencyOrder.append((key, ids.last!))
            }
            return ring.newestID
        }
    }

    /// Where the history starts: ids up to this one can no longer be replayed.
    private var floorLocked: Int64 { store == nil ? ring.evictedThrough : storeFloor }
    var historyFloor: Int64 { lock.withLock { floorLocked } }

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
    /// With a durable store the future completes once the batch is committed; until then no
    /// subscriber sees it.
    ///
    /// Every shard, the publisher's own loop included, is nudged with an `execute` rather
    /// than delivering inline: under load the nudges coalesce, so a shard writes a burst of
    /// events to each stream with one flush (measured: inline delivery on the publishing
    /// loop cut fan-out throughput to a quarter, one flush per stream per event).
    func publish(_ drafts: [EventDraft], client: String?, retain: Bool, idempotencyKey: String?, on loop: any EventLoop) -> EventLoopFuture<PublishOutcome> {
        if store != nil {
            return publishDurably(drafts, client: client, retain: retain, idempotencyKey: idempotencyKey, on: loop)
        }
        let created = WallClock.millisecondsSince1970()
        let outcome: PublishOutcome = lock.withLock {
            if let idempotencyKey, let ids = idempotency[idempotencyKey] {
                return PublishOutcome(ids: ids, repeated: true)
            }
            let events = makeEvents(drafts, client: client, created: created)
            makeVisibleLocked(events, retain: retain, idempotencyKey: idempotencyKey)
            return PublishOutcome(ids: events.map(\.id), repeated: false)
        }
        if !outcome.repeated { announce(count: outcome.ids.count) }
        return loop.makeSucceededFuture(outcome)
    }

    private enum DurableStep {
        case answered(PublishOutcome)
        case waitForEarlier(EventLoopFuture<[Int64]>)
        case queued(SQLiteStore.PendingBatch, EventLoopFuture<[Int64]>)
    }

    private func publishDurably(_ drafts: [EventDraft], client: String?, retain: Bool, idempotencyKey: String?, on loop: any EventLoop) -> EventLoopFuture<PublishOutcome> {
        let created = WallClock.millisecondsSince1970()
        let step: DurableStep = lock.withLock {
            if let idempotencyKey {
                if let ids = idempotency[idempotencyKey] { return .answered(PublishOutcome(ids: ids, repeated: true)) }
                if let earlier = pendingKeys[idempotencyKey] { return .waitForEarlier(earlier) }
            }
            let events = makeEvents(drafts, client: client, created: created)
            let ids = events.map(\.id)
            let promise = loop.makePromise(of: Void.self)
            let batch = SQLiteStore.PendingBatch(events: events, retain: retain, idempotencyKey: idempotencyKey, promise: promise)
            let future = promise.futureResult.map { ids }
            if let idempotencyKey { pendingKeys[idempotencyKey] = future }
            // Queued under the lock, so the store commits batches in id order.
            store!.enqueue(batch)
            return .queued(batch, future)
        }
        switch step {
        case .answered(let outcome):
            return loop.makeSucceededFuture(outcome)
        case .waitForEarlier(let earlier):
            return earlier.hop(to: loop).map { PublishOutcome(ids: $0, repeated: true) }
        case .queued(let batch, let future):
            if let key = batch.idempotencyKey {
                future.whenFailure { _ in self.lock.withLock { self.pendingKeys[key] = nil } }
            }
            return future.map { PublishOutcome(ids: $0, repeated: false) }
        }
    }

    /// Gives the drafts their ids. Lock held.
    private func makeEvents(_ drafts: [EventDraft], client: String?, created: Int64) -> [StoredEvent] {
        var events: [StoredEvent] = []
        events.reserveCapacity(drafts.count)
        for draft in drafts {
            assignedThrough += 1
            events.append(StoredEvent(
                id: assignedThrough, topics: draft.topics, client: client, type: draft.type, data: draft.data,
                created: created, allocator: allocator))
        }
        return events
    }

    /// Puts a batch into the ring (and per-topic logs), the retained set and the idempotency
    /// keys, where shards and new subscribers find it. Lock held.
    private func makeVisibleLocked(_ events: [StoredEvent], retain: Bool, idempotencyKey: String?) {
        for event in events {
            if let evicted = ring.append(event) { logs.evict(evicted, keys: evicted.logKeys) }
            logs.append(event, keys: event.logKeys)
            if retain && event.client == nil {
                retained.retain(event, topics: event.topics)
            }
        }
        if let idempotencyKey {
            idempotency[idempotencyKey] = events.map(\.id)
            idempotencyOrder.append((idempotencyKey, events.last!.id))
            pendingKeys[idempotencyKey] = nil
        }
        forgetEvictedKeys()
    }

    private func announce(count: Int) {
        metrics.eventsPublished.increment(by: Int64(count))
        for shard in shards { shard.scheduleDelivery() }
    }

    /// The store committed these batches (in id order): subscribers may see them now.
    func committed(_ batches: [SQLiteStore.PendingBatch]) {
        var count = 0
        lock.withLock {
            for batch in batches {
                if let topic = batch.clearRetained {
                    retained.remove(topic: topic)
                    continue
                }
                makeVisibleLocked(batch.events, retain: batch.retain, idempotencyKey: batch.idempotencyKey)
                count += batch.events.count
            }
        }
        if count > 0 { announce(count: count) }
    }

    /// `DELETE /events?topic=T` (SPEC §16): clears T's retained event. The future answers
    /// false when T had none; with a durable store it completes once the deletion is
    /// committed (in order with publishes, so a retain published before it stays cleared).
    func clearRetained(topic: String, on loop: any EventLoop) -> EventLoopFuture<Bool> {
        let queued: EventLoopFuture<Void>? = lock.withLock {
            guard retained.entry(for: topic) != nil else { return nil }
            guard let store else {
                retained.remove(topic: topic)
                return loop.makeSucceededVoidFuture()
            }
            let promise = loop.makePromise(of: Void.self)
            store.enqueue(SQLiteStore.PendingBatch(events: [], retain: false, idempotencyKey: nil, promise: promise, clearRetained: topic))
            return promise.futureResult
        }
        guard let queued else { return loop.makeSucceededFuture(false) }
        return queued.map { true }
    }

    /// The store is about to delete ids up to `floor`: streams stop resuming into them.
    func storeFloorAdvanced(to floor: Int64) {
        lock.withLock {
            storeFloor = max(storeFloor, floor)
            forgetEvictedKeys()
        }
    }

    /// Retention by age for the memory store: drops events published before `cutoff`
    /// (milliseconds since 1970) from the ring.
    func pruneRing(olderThan cutoff: Int64) {
        lock.withLock {
            var dropped = false
            while let oldest = ring.oldest, oldest.created < cutoff {
                ring.removeOldest()
                logs.evict(oldest, keys: oldest.logKeys)
                dropped = true
            }
            if dropped { forgetEvictedKeys() }
        }
    }

    /// Drops idempotency keys whose events have all left the history. Lock held.
    private func forgetEvictedKeys() {
        let evicted = floorLocked
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
        /// No Last-Event-ID: the retained events of its topics (read with
        /// ``retainedBatch(after:through:filter:maxBytes:maxEvents:maxScan:)``).
        case fresh
        /// A resumable Last-Event-ID: replay what came after it.
        case resume(after: Int64)
        /// Any other Last-Event-ID: `herald.reset`, then the retained events.
        case reset(ResetReason)
    }

    /// Under one lock: what the shard has not delivered yet, and how a new stream on it
    /// opens. Doing both at once is what makes subscribing gap-free: the new stream starts
    /// exactly where the shard's live delivery will continue.
    func openStream(shardPosition: Int64, lastEventID: String?, filter: TopicFilter) -> (Pending, Opening) {
        lock.withLock {
            let pending = pendingLocked(after: shardPosition)
            guard let lastEventID else { return (pending, .fresh) }
            switch ring.resumeDecision(for: lastEventID, floor: store == nil ? nil : storeFloor) {
            case .resume(let after):
                return (pending, .resume(after: after))
            case .reset(let reason):
                return (pending, .reset(reason))
            }
        }
    }

    struct ReplayBatch {
        var events: [StoredEvent]
        /// The replay position after this batch (every id up to it was examined).
        var position: Int64
        /// Ids after the starting position were evicted while the stream was replaying.
        var truncated: Bool
        /// With a durable store: the ring no longer holds what comes next; read the events
        /// after the position up to this id from the store, then ask again.
        var fromStoreThrough: Int64? = nil
    }

    /// The next slice of a replay: matching events after `position` up to `through`,
    /// stopping after about `maxBytes` of output, `maxEvents` events or `maxScan` examined
    /// entries, so that one replay never holds the lock or the event loop for long.
    /// Subscriptions to exact topics read the per-topic logs (cost proportional to what they
    /// get); prefix and `*` subscriptions scan the ring.
    func replayBatch(after position: Int64, through: Int64, filter: TopicFilter, maxBytes: Int, maxEvents: Int, maxScan: Int) -> ReplayBatch {
        lock.withLock {
            if floorLocked > position {
                return ReplayBatch(events: [], position: position, truncated: true)
            }
            if ring.evictedThrough > position {
                // Only a durable store gets here: its floor is below the ring's start.
                return ReplayBatch(events: [], position: position, truncated: false, fromStoreThrough: min(ring.evictedThrough, through))
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

    /// One slice of the retained events matching `filter` with `after < id <= through`, in
    /// id order, bounded like a replay slice so that neither the lock nor the event loop is
    /// held for long (a `*` subscriber of 100 000 retained topics reads them in many slices,
    /// paced by its socket). `position` is where the next slice starts; `finished` says
    /// there is none.
    func retainedBatch(after: Int64, through: Int64, filter: TopicFilter, maxBytes: Int, maxEvents: Int, maxScan: Int)
        -> (events: [StoredEvent], position: Int64, finished: Bool)
    {
        lock.withLock {
            if retained.isEmpty { return ([], through, true) }
            if filter.isExactOnly {
                var events = retained.entries(forExact: filter.exact.map(\.name), after: after, through: through)
                var bytes = 0
                for (index, event) in events.enumerated() {
                    bytes += event.chunked.readableBytes
                    if (bytes >= maxBytes || index + 1 >= maxEvents) && index + 1 < events.count {
                        events.removeSubrange((index + 1)...)
                        return (events, event.id, false)
                    }
                }
                return (events, through, true)
            }
            let slice = retained.slice(
                after: after, through: through, maxEntries: maxEvents, maxScan: maxScan, maxWeight: maxBytes,
                weight: { $0.chunked.readableBytes }, matches: { filter.matches(topic: $0) })
            return (slice.entries, slice.position, slice.finished)
        }
    }

    var retainedCount: Int { lock.withLock { retained.count } }

    /// Counts for `/metrics` and `/health`.
    var historySize: Int { store?.storedEventCount ?? lock.withLock { ring.count } }
    var newestID: Int64 { lock.withLock { ring.newestID } }
}
