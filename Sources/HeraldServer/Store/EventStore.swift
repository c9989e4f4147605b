import HeraldCore
import NIOCore
import ServiceLifecycle

/// Where events are kept and who gives them their ids (SPEC §9): the one seam a new store
/// plugs into. `memory` (the ring only), `sqlite:PATH` (one durable file) and, for a
/// cluster, a database shared by several nodes all sit behind it; ``HeraldServer`` picks one
/// by the `--store` URL's scheme in ``HeraldConfiguration/Store`` and ``makeEventStore``.
///
/// The contract:
/// - **The store assigns ids.** ``append(_:on:)`` gives a batch consecutive ids (or, for a
///   shared database, ids in commit order) and completes once the batch is committed; a
///   failed append publishes nothing.
/// - **Committed batches enter the hub one way.** Every committed batch, whether appended
///   here or (in a cluster) committed by another node, is handed to the
///   ``CommittedEventSink`` given to ``open(sink:cacheCapacity:freshStart:)``, in id order,
///   before the appender's future completes. Only then do subscribers see it.
/// - **History past the cache** (``keepsHistoryBeyondCache``) is read back with
///   ``events(after:through:limit:)`` off the event loop; the hub's ring is the hot cache.
protocol EventStore: AnyObject, Sendable, Service {
    /// For logs and errors: `memory`, or the store's location.
    var description: String { get }
    /// Whether the store holds history the ring does not (then the history's floor is the
    /// store's, moved by ``CommittedEventSink/historyFloorAdvanced(to:)``; otherwise it is
    /// the ring's eviction point).
    var keepsHistoryBeyondCache: Bool { get }

    /// Opens the store and reads what a starting server continues from. `sink` receives
    /// every committed batch from then on.
    /// - Parameter freshStart: where a new store's id sequence starts after.
    func open(sink: any CommittedEventSink, cacheCapacity: Int, freshStart: Int64) async throws -> StoreSnapshot

    /// Appends a batch (atomically: all or none). The future completes with the ids once it
    /// is committed and has been handed to the sink. A shared store that already holds the
    /// batch's idempotency key (committed by another node) answers the first ids, `repeated`.
    func append(_ batch: AppendRequest, on loop: any EventLoop) -> EventLoopFuture<Appended>

    /// Clears `topic`'s retained event, in order with appends (a later retain wins).
    func clearRetained(topic: String, on loop: any EventLoop) -> EventLoopFuture<Void>

    /// Events with `after < id <= through`, oldest first, at most `limit`.
    func events(after: Int64, through: Int64, limit: Int) -> EventLoopFuture<[StoredEvent]>

    /// One retention pass soon (called once a second): by `--history` and `--history-max-age`.
    func scheduleRetention()

    /// Events in the store's history (for `/metrics`); nil when the ring is the history.
    var storedEventCount: Int? { get }

    /// The store's background work (a durable store's writer): a swift-service-lifecycle
    /// `Service`, run by the server as a child task from after
    /// ``open(sink:cacheCapacity:freshStart:)`` until ``close()``.
    func run() async

    /// Stops taking appends, waits for the queued ones (they are answered) and for ``run()``
    /// to finish, then closes.
    func close() async

    /// Whether the store can take publishes now (`/health` answers 503 `degraded` when not).
    var isAvailable: Bool { get }

    /// A shared store: completes once every id up to `id` that the cluster has committed has
    /// been handed to the sink here, or after `timeout` (a `Last-Event-ID` from another node
    /// may be a few milliseconds ahead of this one). Single-node stores complete at once.
    func awaitDelivery(through id: Int64, timeout: TimeAmount, on loop: any EventLoop) -> EventLoopFuture<Void>

    /// The cluster's client directory (presence and cross-node commands), for a shared store.
    var cluster: (any ClusterDirectory)? { get }

    /// Whether the store commits before it returns: ``append(_:on:)``'s future is already
    /// complete, and ``appendInline(_:)`` never answers nil. Then the HTTP/1.1 publish fast
    /// path is installed and publishes through ``appendInline(_:)`` within the read that
    /// brought the request (see ``PublishFastPath``). A store that says true must implement
    /// both.
    var commitsInline: Bool { get }

    /// For a store that ``commitsInline``: appends and commits `batch` before returning, with
    /// no future (the publish fast path's answer is then built without one). Nil from any
    /// other store (the default).
    func appendInline(_ batch: AppendRequest) -> Appended?
}

extension EventStore {
    var isAvailable: Bool { true }
    func awaitDelivery(through id: Int64, timeout: TimeAmount, on loop: any EventLoop) -> EventLoopFuture<Void> {
        loop.makeSucceededVoidFuture()
    }
    var cluster: (any ClusterDirectory)? { nil }
    var commitsInline: Bool { false }
    func appendInline(_ batch: AppendRequest) -> Appended? { nil }
}

/// What an append answers: the batch's ids, and whether they are those of an earlier batch
/// with the same idempotency key (nothing new was published).
struct Appended: Sendable {
    var ids: [Int64]
    var repeated: Bool
}

/// What a publisher asks to append.
struct AppendRequest: Sendable {
    var drafts: [EventDraft]
    /// The token of a direct message (`POST /clients/{token}/events`).
    var client: String?
    var retain: Bool
    var idempotencyKey: String?
    /// Milliseconds since 1970 (for `--history-max-age`).
    var created: Int64
}

extension AppendRequest {
    /// The batch's events with consecutive ids after `lastID`, which moves to the last one,
    /// each encoded once for the wire. Stores call it under the lock that orders their ids.
    func events(after lastID: inout Int64, allocator: ByteBufferAllocator) -> [StoredEvent] {
        var events: [StoredEvent] = []
        events.reserveCapacity(drafts.count)
        for draft in drafts {
            lastID += 1
            events.append(StoredEvent(
                id: lastID, topics: draft.topics, client: client, type: draft.type, data: draft.data,
                created: created, allocator: allocator))
        }
        return events
    }
}

/// A batch as committed: its events with their ids, or the clearing of a retained event.
struct CommittedBatch: Sendable {
    var events: [StoredEvent]
    var retain: Bool
    var idempotencyKey: String?
    /// Not a publish: `DELETE /events?topic=T`.
    var clearRetained: String?
}

/// What a store holds when it is opened.
struct StoreSnapshot: Sendable {
    /// The newest id ever committed (the sequence continues after it).
    var lastID: Int64
    /// Every id up to this one has left the history.
    var floor: Int64
    /// The newest events of the history, oldest first, at most the cache size.
    var recent: [StoredEvent]
    var eventCount: Int
    /// Retained events, oldest first.
    var retained: [(topic: String, event: StoredEvent)]
    /// Idempotency keys, oldest first.
    var idempotency: [(key: String, ids: [Int64])]

    /// An empty store whose sequence starts after `start`.
    static func empty(startingAfter start: Int64) -> StoreSnapshot {
        StoreSnapshot(lastID: start, floor: start, recent: [], eventCount: 0, retained: [], idempotency: [])
    }
}

/// The hub's side of the seam: where committed batches enter, local or remote.
protocol CommittedEventSink: AnyObject, Sendable {
    /// Batches committed, in id order: make them visible and deliver them.
    func committed(_ batches: [CommittedBatch])
    /// The store is about to delete ids up to `floor`: streams stop resuming into them.
    func historyFloorAdvanced(to floor: Int64)
    /// Committed events up to `id` were deleted before this node could deliver them (it was
    /// cut off from a shared store for longer than the history lasts): its open streams are
    /// closed so that their clients resume and learn of the gap with `herald.reset`.
    func continuityLost(through id: Int64)
}

/// The store for a configuration: the one place a `--store` scheme becomes a store.
func makeEventStore(for configuration: HeraldConfiguration, startingAfter start: Int64, loop: any EventLoop) -> any EventStore {
    switch configuration.store {
    case .memory:
        return MemoryStore(startingAfter: start, allocator: ByteBufferAllocator())
    case .sqlite(let path):
        return SQLiteStore(
            path: path, historyLimit: max(1, configuration.historyCapacity), retainedLimit: configuration.maxRetained,
            maxAge: configuration.historyMaxAge, loop: loop, logger: configuration.logger)
    case .postgres(let location):
        return PostgresStore(
            location: location, historyLimit: max(1, configuration.historyCapacity), retainedLimit: configuration.maxRetained,
            maxAge: configuration.historyMaxAge, unsafeIDs: configuration.clusterUnsafeIDs, loop: loop,
            logger: configuration.logger)
    }
}
