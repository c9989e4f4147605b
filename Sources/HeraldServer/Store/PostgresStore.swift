import Foundation
import HeraldCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import PostgresNIO

/// Cluster mode (`--store postgres://...`, SPEC §12): every node of a cluster shares one
/// PostgreSQL database: one history, one id sequence, the retained events, the idempotency
/// keys and the client directory.
///
/// - **Appends** are queued and committed by one writer per node, all queued batches in one
///   call of `herald_append` (group commit: one round trip and one WAL flush per burst).
///   `PostgresSchema` explains why ids come out in commit order.
/// - **Delivery.** Every commit notifies the channel `herald`; each node's listener
///   connection wakes and reads the rows after the last id it delivered, in id order (also
///   once a second as a safety net, since notifications sent while a listener is away are
///   lost). Because ids are visible in commit order, reading "after my last id" never skips
///   one. A node's own batch is handed to the hub directly when it is the next one; otherwise
///   it waits for the read that brings it (what other nodes committed before it comes first).
/// - **History past the ring** (older resumes) is read on a separate connection, so a
///   cold replay never waits behind a commit.
/// - **Faults.** Each connection reconnects by itself. While the database cannot be
///   reached, appends fail at once (the publisher gets 503), streams stay open (keep-alives
///   are local), and ``isAvailable`` is false (`/health` 503). Once back, the listener
///   re-subscribes and reads everything committed meanwhile, in order.
/// - **Retention** runs on any node once a second, one node at a time (a transaction-level
///   advisory lock): it moves the floor (and announces it), then deletes the rows below.
final class PostgresStore: EventStore, ClusterDirectory, @unchecked Sendable {
    /// Rows read per delivery query.
    static let fetchLimit = 2000
    /// Event data per `herald_append` call.
    static let maxGroupBytes = 8 << 20
    /// Rows deleted per retention step.
    static let pruneSlice = 5000
    /// How long a query may take before its connection is given up on (``PostgresLink/run``):
    /// far above what a healthy database needs (milliseconds), short enough that a hung
    /// connection does not stall delivery, publishers or the directory for long.
    static let writeLimit = TimeAmount.seconds(30)
    static let readLimit = TimeAmount.seconds(10)
    static let controlLimit = TimeAmount.seconds(10)

    let location: PostgresLocation
    private let historyLimit: Int
    private let retainedLimit: Int
    private let maxAgeMilliseconds: Int64?
    private let unsafeIDs: Bool
    private let loop: any EventLoop
    private let logger: Logger
    private let allocator = ByteBufferAllocator()
    /// This process in the cluster's directory: random, so a restarted node is a new one.
    let nodeID: String

    // One connection per purpose, so that none waits behind another's queries: appends;
    // LISTEN; reading what other nodes committed; history for resumes; presence and the
    // directory; retention (a transaction of its own).
    private let writer: PostgresLink
    private let listener: PostgresLink
    private let fetcher: PostgresLink
    private let reader: PostgresLink
    private let control: PostgresLink
    private let retention: PostgresLink

    private let writerWakeups: AsyncStream<Void>
    private let writerContinuation: AsyncStream<Void>.Continuation
    private let fetchWakeups: AsyncStream<Void>
    private let fetchContinuation: AsyncStream<Void>.Continuation

    struct PendingBatch {
        var request: AppendRequest?
        /// A `DELETE /events?topic=T`.
        var clearTopic: String?
        var promise: EventLoopPromise<Appended>
    }

    /// A local append whose ids are committed but not yet delivered here.
    struct Waiter {
        var through: Int64
        var promise: EventLoopPromise<Void>
        var since = NIODeadline.now()
    }

    // Guarded by `lock`.
    private let lock = NIOLock()
    private var sink: (any CommittedEventSink)?
    private var queue: [PendingBatch] = []
    private var closed = false
    private var runStarted = false
    private var runFinished: EventLoopPromise<Void>?
    /// The newest id handed to the sink; every committed id up to it has been.
    private var delivered: Int64 = 0
    private var floor: Int64 = 0
    private var waiters: [Waiter] = []
    private var listening = false
    private var writerHealthy = true
    private var presence: (clients: @Sendable () async -> [ClientSummary], close: @Sendable (String) -> Void)?
    /// What was last published as this node's presence (so an unchanged list is not rewritten).
    private var publishedPresence: [String: ClientSummary] = [:]

    init(location: PostgresLocation, historyLimit: Int, retainedLimit: Int, maxAge: TimeAmount?, unsafeIDs: Bool,
         loop: any EventLoop, logger: Logger) {
        self.location = location
        self.historyLimit = historyLimit
        self.retainedLimit = max(1, retainedLimit)
        self.maxAgeMilliseconds = maxAge.map { $0.nanoseconds / 1_000_000 }
        self.unsafeIDs = unsafeIDs
        self.loop = loop
        self.logger = logger
        self.nodeID = Self.makeNodeID()
        let connector = PostgresConnector(location: location, logger: logger)
        writer = PostgresLink(name: "writer", connector: connector)
        listener = PostgresLink(name: "listener", connector: connector)
        fetcher = PostgresLink(name: "fetcher", connector: connector)
        reader = PostgresLink(name: "reader", connector: connector)
        control = PostgresLink(name: "control", connector: connector)
        retention = PostgresLink(name: "retention", connector: connector)
        (writerWakeups, writerContinuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        (fetchWakeups, fetchContinuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    private static func makeNodeID() -> String {
        var generator = SystemRandomNumberGenerator()
        let host = ProcessInfo.processInfo.hostName.prefix(40)
        return "\(host)-\(getpid())-\(String(generator.next() as UInt32, radix: 16))"
    }

    var description: String { location.description }
    var keepsHistoryBeyondCache: Bool { true }
    var cluster: (any ClusterDirectory)? { self }
    var storedEventCount: Int? { lock.withLock { Int(max(0, delivered - floor)) } }
    var isAvailable: Bool { lock.withLock { listening && writerHealthy && !closed } }

    // MARK: Opening

    func open(sink: any CommittedEventSink, cacheCapacity: Int, freshStart: Int64) async throws -> StoreSnapshot {
        // At start the database may still be coming up (an orchestrator starting both): wait
        // up to 30 s, then give up with a message that names it.
        let deadline = NIODeadline.now() + .seconds(30)
        var connection: PostgresConnection
        while true {
            do {
                // Bounded: a server that accepts and never answers (a wedged proxy, a port
                // that is not PostgreSQL) must not keep the node from starting or giving up.
                connection = try await control.run(limit: .seconds(5)) { $0 }
                break
            } catch {
                if NIODeadline.now() >= deadline {
                    throw StoreError("cannot reach PostgreSQL at \(location.host):\(location.port) after 30 s: \(PostgresLink.explain(error))")
                }
                logger.warning("waiting for PostgreSQL", metadata: ["herald.store": "\(location)", "error": "\(PostgresLink.explain(error))"])
                try await Task.sleep(nanoseconds: 500_000_000)
            }
        }
        let encoding = try await connection.query("SHOW server_encoding", logger: logger).collect().first?.decode(String.self)
        guard encoding == "UTF8" else {
            throw StoreError("database \(location.database) uses the encoding \(encoding ?? "?"); Herald needs UTF8 (CREATE DATABASE ... ENCODING 'UTF8')")
        }
        try await createSchema(connection, freshStart: freshStart)

        // What a starting node continues from. The floor and the newest id are read first:
        // rows committed after this read are delivered by the listener from `lastID` on.
        let meta = try await connection.query(
            "SELECT name, value FROM herald_meta WHERE name IN ('format', 'last_id', 'floor')", logger: logger).collect()
        var values: [String: Int64] = [:]
        for row in meta {
            let (name, value) = try row.decode((String, Int64).self)
            values[name] = value
        }
        guard let format = values["format"], format <= PostgresSchema.format else {
            throw StoreError("\(location) holds a Herald schema of a newer format (\(values["format"] ?? -1)); upgrade this node")
        }
        var lastID = values["last_id"] ?? freshStart
        let floor = values["floor"] ?? freshStart
        if unsafeIDs {
            // The plain sequence of the negative control starts after every id given so far.
            let maxID = try await connection.query("SELECT coalesce(max(id), 0) FROM herald_events", logger: logger)
                .collect().first?.decode(Int64.self) ?? 0
            lastID = max(lastID, maxID)
            _ = try await connection.query(
                "SELECT setval('herald_unsafe_ids', greatest(\(lastID), (SELECT last_value FROM herald_unsafe_ids)))", logger: logger
            ).collect()
        }
        var recent: [StoredEvent] = []
        let rows = try await connection.query("""
            SELECT id, topics, client, type, data, created, flags FROM herald_events
            WHERE id > \(floor) AND id <= \(lastID) AND flags < 2 ORDER BY id DESC LIMIT \(cacheCapacity)
            """, logger: logger).collect()
        for row in rows.reversed() { recent.append(try event(from: row).event) }
        var retained: [(topic: String, event: StoredEvent)] = []
        let retainedRows = try await connection.query("""
            SELECT topic, id, topics, type, data, created FROM herald_retained WHERE id <= \(lastID)
            ORDER BY id DESC LIMIT \(retainedLimit)
            """, logger: logger).collect()
        for row in retainedRows.reversed() {
            let (topic, id, topics, type, data, created) = try row.decode((String, Int64, String, String?, ByteBuffer, Int64).self)
            retained.append((topic, StoredEvent(
                id: id, topics: Self.topics(topics), client: nil, type: type, data: String(buffer: data), created: created,
                allocator: allocator)))
        }
        lock.withLock {
            self.sink = sink
            self.delivered = lastID
            self.floor = floor
            self.runFinished = loop.makePromise(of: Void.self)
        }
        logger.info("cluster node joined", metadata: ["herald.node": "\(nodeID)", "herald.store": "\(location)"])
        // Idempotency keys are looked up in the database by every append, so the hub's
        // window starts empty: a key is remembered cluster-wide while its events are kept.
        return StoreSnapshot(lastID: lastID, floor: floor, recent: recent, eventCount: Int(max(0, lastID - floor)),
                             retained: retained, idempotency: [])
    }

    private func createSchema(_ connection: PostgresConnection, freshStart: Int64) async throws {
        _ = try await connection.query("BEGIN", logger: logger).collect()
        do {
            _ = try await connection.query("SELECT pg_advisory_xact_lock(\(PostgresSchema.schemaLock))", logger: logger).collect()
            for statement in PostgresSchema.tables {
                _ = try await connection.query(PostgresQuery(unsafeSQL: statement), logger: logger).collect()
            }
            _ = try await connection.query("""
                INSERT INTO herald_meta(name, value) VALUES ('format', \(Int64(PostgresSchema.format))), ('last_id', \(freshStart)),
                ('floor', \(freshStart)) ON CONFLICT (name) DO NOTHING
                """, logger: logger).collect()
            for function in [PostgresSchema.flushFunction, PostgresSchema.appendFunction, PostgresSchema.presenceFunction] {
                _ = try await connection.query(PostgresQuery(unsafeSQL: function), logger: logger).collect()
            }
            _ = try await connection.query("COMMIT", logger: logger).collect()
        } catch {
            _ = try? await connection.query("ROLLBACK", logger: logger).collect()
            throw error
        }
    }

    // MARK: Rows

    private static func topics(_ joined: String) -> [String] {
        joined.isEmpty ? [] : joined.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
    }

    private func event(from row: PostgresRow) throws -> (event: StoredEvent, flags: Int16) {
        let (id, topics, client, type, data, created, flags) =
            try row.decode((Int64, String, String?, String?, ByteBuffer, Int64, Int16).self)
        let event = StoredEvent(
            id: id, topics: Self.topics(topics), client: client, type: type, data: String(buffer: data), created: created,
            allocator: allocator)
        return (event, flags)
    }

    /// A row of the floor-joined reads: the floor, and an event (nil when no row matched).
    private func joinedRow(_ row: PostgresRow) throws -> (floor: Int64, event: StoredEvent?, flags: Int16) {
        let (floor, id, topics, client, type, data, created, flags) =
            try row.decode((Int64, Int64?, String?, String?, String?, ByteBuffer?, Int64?, Int16?).self)
        guard let id, let topics, let data, let created else { return (floor, nil, 0) }
        let event = StoredEvent(
            id: id, topics: Self.topics(topics), client: client, type: type, data: String(buffer: data), created: created,
            allocator: allocator)
        return (floor, event, flags ?? 0)
    }

    // MARK: Appending

    func append(_ request: AppendRequest, on loop: any EventLoop) -> EventLoopFuture<Appended> {
        enqueue(PendingBatch(request: request, clearTopic: nil, promise: loop.makePromise(of: Appended.self)))
    }

    func clearRetained(topic: String, on loop: any EventLoop) -> EventLoopFuture<Void> {
        enqueue(PendingBatch(request: nil, clearTopic: topic, promise: loop.makePromise(of: Appended.self))).map { _ in () }
    }

    private func enqueue(_ pending: PendingBatch) -> EventLoopFuture<Appended> {
        let accepted: Bool = lock.withLock {
            guard !closed else { return false }
            queue.append(pending)
            return true
        }
        guard accepted else {
            pending.promise.fail(StoreError("the store is closing"))
            return pending.promise.futureResult
        }
        writerContinuation.yield()
        return pending.promise.futureResult
    }

    private func writerLoop() async {
        for await _ in writerWakeups { await drainQueue() }
        await drainQueue()
    }

    /// Commits what is queued, in groups of at most ``maxGroupBytes`` of event data (always
    /// at least one batch), so that a flood of large publishes is never one huge statement.
    private func drainQueue() async {
        while true {
            let group: [PendingBatch] = lock.withLock {
                var bytes = 0
                var taken = 0
                for pending in queue {
                    let size = pending.request?.drafts.reduce(0) { $0 + $1.data.utf8.count } ?? 0
                    if taken > 0 && bytes + size > Self.maxGroupBytes { break }
                    bytes += size
                    taken += 1
                }
                defer { queue.removeFirst(taken) }
                return Array(queue.prefix(taken))
            }
            if group.isEmpty { return }
            await commit(group)
        }
    }

    /// Commits a group of batches in one call and hands them to the hub in id order.
    private func commit(_ group: [PendingBatch]) async {
        var sizes: [Int32] = [], keys: [String] = [], clears: [String] = []
        var topics: [String] = [], clients: [String] = [], types: [String] = [], data: [ByteBuffer] = [], flags: [Int16] = []
        for pending in group {
            if let topic = pending.clearTopic {
                sizes.append(0); keys.append(""); clears.append(topic)
                continue
            }
            let request = pending.request!
            sizes.append(Int32(request.drafts.count))
            keys.append(request.idempotencyKey ?? "")
            clears.append("")
            for draft in request.drafts {
                topics.append(draft.topics.joined(separator: "\n"))
                clients.append(request.client ?? "")
                types.append(draft.type ?? "")
                var buffer = allocator.buffer(capacity: draft.data.utf8.count)
                buffer.writeString(draft.data)
                data.append(buffer)
                flags.append(request.retain && request.client == nil ? PostgresSchema.retainFlag : 0)
            }
        }
        var answers: [(ids: [Int64], repeated: Bool)] = Array(repeating: ([], false), count: group.count)
        do {
            let logger = self.logger, unsafeIDs = self.unsafeIDs
            let (sizes, keys, clears, topics, clients, types, data, flags) = (sizes, keys, clears, topics, clients, types, data, flags)
            let rows = try await writer.run(limit: Self.writeLimit) { connection in
                try await connection.query("""
                    SELECT o_batch, o_ids, o_repeated FROM herald_append(\(sizes), \(keys), \(clears), \(topics), \(clients), \
                    \(types), \(data), \(flags), \(unsafeIDs))
                    """, logger: logger).collect()
            }
            for row in rows {
                let (batch, ids, repeated) = try row.decode((Int32, [Int64], Bool).self)
                guard batch >= 1, Int(batch) <= group.count else { throw StoreError("herald_append answered batch \(batch)") }
                answers[Int(batch) - 1] = (ids, repeated)
            }
            lock.withLock { writerHealthy = true }
        } catch {
            // Logged once per outage at error level; further refusals while it lasts quietly.
            let first = lock.withLock { () -> Bool in
                defer { writerHealthy = false }
                return writerHealthy
            }
            logger.log(level: first ? .error : .debug, "append not committed; the publishes were answered 503",
                       metadata: ["error": "\(PostgresLink.explain(error))", "herald.store": "\(location)"])
            for pending in group { pending.promise.fail(StoreError("the event store could not write: \(PostgresLink.explain(error))")) }
            return
        }
        // The group's new ids are consecutive (the counter was held): [first, last].
        var batches: [CommittedBatch] = []
        var first = Int64.max, last = Int64.min
        var highest = Int64.min // also covers repeated batches' (older) ids
        for (index, pending) in group.enumerated() {
            let answer = answers[index]
            if let newest = answer.ids.max() { highest = max(highest, newest) }
            if answer.repeated { continue }
            if let topic = pending.clearTopic {
                batches.append(CommittedBatch(events: [], retain: false, idempotencyKey: nil, clearRetained: topic))
            } else if let request = pending.request {
                guard answer.ids.count == request.drafts.count else {
                    pending.promise.fail(StoreError("herald_append answered \(answer.ids.count) ids for \(request.drafts.count) events"))
                    continue
                }
                var events: [StoredEvent] = []
                events.reserveCapacity(answer.ids.count)
                for (draft, id) in zip(request.drafts, answer.ids) {
                    events.append(StoredEvent(id: id, topics: draft.topics, client: request.client, type: draft.type,
                                              data: draft.data, created: request.created, allocator: allocator))
                }
                batches.append(CommittedBatch(events: events, retain: request.retain, idempotencyKey: request.idempotencyKey))
            }
            if let low = answer.ids.min() { first = min(first, low) }
            if let high = answer.ids.max() { last = max(last, high) }
        }
        let done = loop.makePromise(of: Void.self)
        let handedOver: Bool = lock.withLock {
            if highest <= delivered { return true }                 // a read brought them already
            guard !unsafeIDs, first == delivered + 1 else { return false } // others' ids come first
            deliverLocked(batches, through: last)
            return highest <= delivered
        }
        if handedOver {
            done.succeed()
        } else {
            let waiting: Bool = lock.withLock {
                // Closing: the batch is committed; its publisher is answered without waiting
                // for this node's delivery, which has stopped.
                guard !closed else { return false }
                waiters.append(Waiter(through: highest, promise: done))
                return true
            }
            if waiting { fetchContinuation.yield() } else { done.succeed() }
        }
        // Answer each publisher once its batch is visible here.
        let answered = answers
        done.futureResult.whenComplete { result in
            for (index, pending) in group.enumerated() {
                switch result {
                case .success:
                    pending.promise.succeed(Appended(ids: answered[index].ids, repeated: answered[index].repeated))
                case .failure(let error):
                    pending.promise.fail(error)
                }
            }
        }
    }

    /// Hands batches to the sink and completes the waits they satisfy. Lock held: batches
    /// enter the hub one caller at a time, in id order.
    private func deliverLocked(_ batches: [CommittedBatch], through newest: Int64) {
        if !batches.isEmpty { sink?.committed(batches) }
        delivered = max(delivered, newest)
        guard !waiters.isEmpty else { return }
        var remaining: [Waiter] = []
        for waiter in waiters {
            if waiter.through <= delivered { waiter.promise.succeed() } else { remaining.append(waiter) }
        }
        waiters = remaining
    }

    // MARK: Delivery

    /// The listener: LISTEN on the channel, wake the reader on every notification, and
    /// reconnect (then catch up) whenever the connection is lost.
    private func listenLoop() async {
        var backoff: UInt64 = 100_000_000
        var outage = false
        while !lock.withLock({ closed }) {
            let started = ManagedFlag()
            do {
                let connection = try await listener.connection()
                let wasOutage = outage
                try await watched(connection) {
                    try await connection.listen(on: PostgresSchema.channel) { notifications in
                        _ = started.set()
                        self.lock.withLock { self.listening = true }
                        if wasOutage {
                            self.logger.notice("cluster listener reconnected; catching up", metadata: ["herald.store": "\(self.location)"])
                        }
                        // Anything committed while no one listened is read now.
                        self.fetchContinuation.yield()
                        for try await notification in notifications {
                            self.handle(notification.payload)
                        }
                    }
                }
                if started.isSet { outage = false; backoff = 100_000_000 }
            } catch {
                if error is ListenAbandoned { listener.drop() }
                if started.isSet {
                    // The session had been listening: this is a new outage, and the retries
                    // start over from the shortest back-off.
                    outage = false
                    backoff = 100_000_000
                }
                // Logged once per outage (then retried quietly, at most every 2 s).
                if !outage && !lock.withLock({ closed }) {
                    logger.warning("cluster listener lost its database connection; other nodes' events wait until it is back",
                                   metadata: ["error": "\(PostgresLink.explain(error))", "herald.store": "\(location)"])
                }
                outage = true
            }
            lock.withLock { listening = false }
            listener.reset(after: nil)
            await pause(nanoseconds: backoff)
            backoff = min(backoff * 2, 2_000_000_000)
        }
    }

    /// Runs a LISTEN session, and gives up on it when its connection has been closed for a
    /// second or more without the session ending: the client library must not be able to
    /// keep this node deaf (and `/health` green) with a wait it never resumes.
    private func watched(_ connection: PostgresConnection, _ session: @escaping @Sendable () async throws -> Void) async throws {
        let loop = MultiThreadedEventLoopGroup.singleton.any()
        let outcome = loop.makePromise(of: Void.self)
        let task = Task {
            do {
                try await session()
                outcome.succeed()
            } catch {
                outcome.fail(error)
            }
        }
        var closedChecks = 0
        let watchdog = loop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .milliseconds(500)) { _ in
            closedChecks = connection.isClosed ? closedChecks + 1 : 0
            if closedChecks >= 2 { outcome.fail(ListenAbandoned()) }
        }
        defer { watchdog.cancel() }
        do {
            try await outcome.futureResult.get()
        } catch let error as ListenAbandoned {
            task.cancel()
            logger.warning("cluster listener's session outlived its connection; abandoned it and listening anew",
                           metadata: ["herald.store": "\(location)"])
            throw error
        }
    }

    private struct ListenAbandoned: Error {}

    private func handle(_ payload: String) {
        guard let kind = payload.first else { return }
        switch kind {
        case "e":
            fetchContinuation.yield()
        case "c":
            let token = String(payload.dropFirst())
            if let close = lock.withLock({ presence?.close }) { close(token) }
        case "f":
            if let floor = Int64(payload.dropFirst()) { advanceFloor(to: floor) }
        default:
            break
        }
    }

    private func advanceFloor(to newFloor: Int64) {
        let sink: (any CommittedEventSink)? = lock.withLock {
            guard newFloor > floor else { return nil }
            floor = newFloor
            return self.sink
        }
        sink?.historyFloorAdvanced(to: newFloor)
    }

    /// The reader: on every wake-up, reads the rows after the last delivered id, in id
    /// order, until there are none.
    private func fetchLoop() async {
        for await _ in fetchWakeups {
            while await fetchOnce() {}
        }
    }

    /// One read. Returns true when there may be more to read at once.
    private func fetchOnce() async -> Bool {
        let after = lock.withLock { delivered }
        let rows: [PostgresRow]
        do {
            let logger = self.logger
            rows = try await fetcher.run(limit: Self.readLimit) { connection in
                try await connection.query("""
                    WITH f AS (SELECT value FROM herald_meta WHERE name = 'floor')
                    SELECT f.value, e.id, e.topics, e.client, e.type, e.data, e.created, e.flags
                    FROM f LEFT JOIN LATERAL (
                        SELECT * FROM herald_events WHERE id > \(after) ORDER BY id LIMIT \(Int64(Self.fetchLimit))) e ON true
                    ORDER BY e.id
                    """, logger: logger).collect()
            }
        } catch {
            // A timed-out read is worth a warning (it should not happen); a failed one is an
            // outage, which the listener and the writer already report.
            logger.log(level: error is QueryTimedOut ? .warning : .debug, "cluster read failed; retrying after reconnecting",
                       metadata: ["error": "\(PostgresLink.explain(error))", "herald.store": "\(location)"])
            return false
        }
        var storeFloor: Int64 = 0
        var batches: [CommittedBatch] = []
        var newest = after
        var expected = after + 1
        var gapThrough: Int64?
        do {
            for row in rows {
                let (rowFloor, decoded, flags) = try joinedRow(row)
                storeFloor = rowFloor
                guard let event = decoded else { continue }
                let id = event.id
                // Ids are dense; a hole means pruning deleted rows this node never read.
                if id != expected && !unsafeIDs { gapThrough = id - 1 }
                expected = id + 1
                newest = id
                if flags & PostgresSchema.clearFlag != 0 {
                    batches.append(CommittedBatch(events: [], retain: false, idempotencyKey: nil, clearRetained: event.topics.first ?? ""))
                    continue
                }
                let retain = flags & PostgresSchema.retainFlag != 0
                if let lastIndex = batches.indices.last, batches[lastIndex].clearRetained == nil, batches[lastIndex].retain == retain {
                    batches[lastIndex].events.append(event)
                } else {
                    batches.append(CommittedBatch(events: [event], retain: retain, idempotencyKey: nil))
                }
            }
        } catch {
            logger.error("cluster read returned a malformed row", metadata: ["error": "\(error)"])
            return false
        }
        if storeFloor > 0 { advanceFloor(to: storeFloor) }
        if rows.count == 1 && newest == after { return false } // nothing new
        // Committed ids up to a floor above what this node delivered were pruned unseen.
        if storeFloor > after && !unsafeIDs { gapThrough = max(gapThrough ?? storeFloor, storeFloor) }
        let outcome: (raced: Bool, lost: Bool) = lock.withLock {
            // The writer may have delivered the node's own batch meanwhile: read again from there.
            guard delivered == after else { return (true, false) }
            deliverLocked(batches, through: newest)
            return (false, gapThrough != nil)
        }
        if outcome.raced { return true }
        if outcome.lost, let gapThrough {
            logger.error("events were pruned before this node delivered them; closing its streams so clients resume",
                         metadata: ["herald.through": "\(gapThrough)"])
            lock.withLock { sink }?.continuityLost(through: gapThrough)
        }
        return rows.count >= Self.fetchLimit
    }

    func awaitDelivery(through id: Int64, timeout: TimeAmount, on loop: any EventLoop) -> EventLoopFuture<Void> {
        let promise = loop.makePromise(of: Void.self)
        let done: Bool = lock.withLock {
            if delivered >= id { return true }
            waiters.append(Waiter(through: id, promise: promise))
            return false
        }
        if done {
            // Completed here: NIO traps (in debug builds) on a promise dropped unfulfilled.
            promise.succeed()
            return promise.futureResult
        }
        fetchContinuation.yield()
        loop.scheduleTask(in: timeout) {
            // Still waiting (not completed by a delivery or by close): give up; the caller then
            // decides (an id the cluster never gave is reset as unknown).
            let waiting: Bool = self.lock.withLock {
                guard let index = self.waiters.firstIndex(where: { $0.promise.futureResult === promise.futureResult }) else { return false }
                self.waiters.remove(at: index)
                return true
            }
            if waiting { promise.succeed() }
        }
        return promise.futureResult
    }

    // MARK: Reading history

    func events(after: Int64, through: Int64, limit: Int) -> EventLoopFuture<[StoredEvent]> {
        let promise = loop.makePromise(of: [StoredEvent].self)
        let logger = self.logger
        promise.completeWithTask {
            // The floor is read in the same snapshot as the rows: a pruner moves the floor
            // (and commits) before it deletes, so either the rows are here or the floor says
            // they are gone, never an unnoticed hole.
            let rows = try await self.reader.run(limit: Self.readLimit) { connection in
                try await connection.query("""
                    WITH f AS (SELECT value FROM herald_meta WHERE name = 'floor')
                    SELECT f.value, e.id, e.topics, e.client, e.type, e.data, e.created, e.flags
                    FROM f LEFT JOIN LATERAL (
                        SELECT * FROM herald_events WHERE id > \(after) AND id <= \(through) ORDER BY id LIMIT \(Int64(limit))) e ON true
                    ORDER BY e.id
                    """, logger: logger).collect()
            }
            var events: [StoredEvent] = []
            for row in rows {
                let (floor, decoded, flags) = try self.joinedRow(row)
                if floor > after {
                    self.advanceFloor(to: floor)
                    return []
                }
                if let event = decoded, flags & PostgresSchema.clearFlag == 0 { events.append(event) }
            }
            return events
        }
        return promise.futureResult
    }

    // MARK: Background work

    func run() async {
        guard let finished = lock.withLock({ () -> EventLoopPromise<Void>? in
            runStarted = true
            return runFinished
        }) else { return }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.writerLoop() }
            group.addTask { await self.listenLoop() }
            group.addTask { await self.fetchLoop() }
            group.addTask { await self.tickLoop() }
        }
        finished.succeed()
    }

    /// Every 500 ms: the heartbeat, and the node's presence when its clients came or went;
    /// every second the safety-net read; every 2 s the presence's changing values too (last
    /// event ids, queued bytes), so that a busy node does not rewrite its client rows
    /// continuously. A node whose heartbeat is older than 2 s (by the database's clock) is
    /// gone from `/clients`.
    private func tickLoop() async {
        var tick = 0
        var stallReported = false
        while !lock.withLock({ closed }) {
            await pause(nanoseconds: 500_000_000)
            tick += 1
            await publishPresence(heartbeat: true, refreshValues: tick % 4 == 0)
            if tick % 2 == 0 {
                fetchContinuation.yield()
                reportStall(&stallReported)
            }
        }
    }

    /// Says so (once per episode) when a local publish has waited more than 5 s for its
    /// delivery here: its publisher is still waiting, and this node's streams are behind.
    private func reportStall(_ reported: inout Bool) {
        let state: (age: Int64, delivered: Int64, through: Int64, count: Int)? = lock.withLock {
            guard let oldest = waiters.min(by: { $0.since < $1.since }) else { return nil }
            return ((NIODeadline.now() - oldest.since).nanoseconds / 1_000_000, delivered, oldest.through, waiters.count)
        }
        guard let state, state.age > 5_000 else {
            reported = false
            return
        }
        guard !reported else { return }
        reported = true
        logger.warning("cluster delivery is behind: a publish committed here has waited for its delivery", metadata: [
            "herald.waited_ms": "\(state.age)", "herald.delivered": "\(state.delivered)", "herald.waiting_for": "\(state.through)",
            "herald.waiters": "\(state.count)", "herald.listening": "\(lock.withLock { listening })",
        ])
    }

    private let retentionRequested = ManagedFlag()

    func scheduleRetention() {
        guard retentionRequested.set() else { return }
        Task {
            defer { self.retentionRequested.clear() }
            while await self.pruneStep() {}
        }
    }

    /// One retention slice, when this node holds the retention lock. Returns true when it
    /// deleted something (there may be more).
    private func pruneStep() async -> Bool {
        guard !lock.withLock({ closed }) else { return false }
        do {
            return try await retention.run(limit: Self.writeLimit) { connection in try await self.prune(on: connection) }
        } catch {
            logger.debug("retention pass failed; will retry", metadata: ["error": "\(PostgresLink.explain(error))"])
            return false
        }
    }

    private func prune(on connection: PostgresConnection) async throws -> Bool {
        do {
            var moved = false
            var newFloor: Int64 = 0
            _ = try await connection.query("BEGIN", logger: logger).collect()
            do {
                let locked = try await connection.query("SELECT pg_try_advisory_xact_lock(\(PostgresSchema.retentionLock))", logger: logger)
                    .collect().first?.decode(Bool.self) ?? false
                guard locked else {
                    _ = try await connection.query("ROLLBACK", logger: logger).collect()
                    return false
                }
                let meta = try await connection.query(
                    "SELECT name, value FROM herald_meta WHERE name IN ('last_id', 'floor')", logger: logger).collect()
                var values: [String: Int64] = [:]
                for row in meta {
                    let (name, value) = try row.decode((String, Int64).self)
                    values[name] = value
                }
                let floor = values["floor"] ?? 0
                let lastID = values["last_id"] ?? 0
                // Ids are dense, so the count limit is a position: keep the newest --history ids.
                var target = max(floor, lastID - Int64(historyLimit))
                if let maxAge = maxAgeMilliseconds {
                    // Ages by the database's clock (it stamped `created`): nodes need no synchronised clocks.
                    let aged = try await connection.query("""
                        SELECT max(id) FROM (SELECT id, created FROM herald_events WHERE id > \(floor) ORDER BY id LIMIT \(Int64(Self.pruneSlice))) s
                        WHERE created < (extract(epoch FROM now()) * 1000)::bigint - \(maxAge)
                        """, logger: logger).collect().first?.decode(Int64?.self)
                    if let aged { target = max(target, aged) }
                }
                target = min(target, floor + Int64(Self.pruneSlice))
                // Dead nodes' presence goes too (their heartbeat stopped a minute ago).
                _ = try await connection.query("""
                    DELETE FROM herald_presence p USING herald_nodes n WHERE p.node = n.node AND n.seen < now() - interval '1 minute'
                    """, logger: logger).collect()
                _ = try await connection.query("DELETE FROM herald_nodes WHERE seen < now() - interval '1 minute'", logger: logger).collect()
                _ = try await connection.query("""
                    DELETE FROM herald_retained WHERE id < (SELECT id FROM herald_retained ORDER BY id DESC LIMIT 1 OFFSET \(Int64(retainedLimit - 1)))
                    """, logger: logger).collect()
                moved = target > floor
                newFloor = max(target, floor)
                if moved {
                    // First the floor moves (and every node is told); the rows go after it
                    // commits, so a reader sees either the rows or the new floor.
                    _ = try await connection.query("UPDATE herald_meta SET value = \(target) WHERE name = 'floor'", logger: logger).collect()
                    _ = try await connection.query("SELECT pg_notify('herald', 'f' || \(target)::text)", logger: logger).collect()
                }
                _ = try await connection.query("COMMIT", logger: logger).collect()
            } catch {
                _ = try? await connection.query("ROLLBACK", logger: logger).collect()
                throw error
            }
            advanceFloor(to: newFloor)
            // Everything at or below the floor goes (also what an interrupted pass left).
            _ = try await connection.query("DELETE FROM herald_events WHERE id <= \(newFloor)", logger: logger).collect()
            _ = try await connection.query("DELETE FROM herald_idempotency WHERE newest <= \(newFloor)", logger: logger).collect()
            return moved
        }
    }

    // MARK: Presence (ClusterDirectory)

    func attach(clients: @escaping @Sendable () async -> [ClientSummary], close: @escaping @Sendable (String) -> Void) {
        lock.withLock { presence = (clients, close) }
    }

    /// Publishes this node's clients when they changed (and the heartbeat once a second).
    private func publishPresence(heartbeat: Bool, refreshValues: Bool) async {
        guard let source = lock.withLock({ presence?.clients }) else { return }
        let clients = await source()
        var current: [String: ClientSummary] = [:]
        for client in clients { current[client.token] = client }
        let changed: Bool = lock.withLock {
            let previous = publishedPresence
            guard previous.count == current.count else { return true }
            for (token, client) in current {
                guard let old = previous[token], old.connections == client.connections, old.topics == client.topics else { return true }
                if refreshValues && (old.lastEventID != client.lastEventID || old.queuedBytes != client.queuedBytes) { return true }
            }
            return false
        }
        guard changed || heartbeat else { return }
        do {
            let logger = self.logger, nodeID = self.nodeID
            if changed {
                let list = Array(current.values)
                _ = try await control.run(limit: Self.controlLimit) { connection in
                    try await connection.query("""
                        SELECT herald_presence_put(\(nodeID), \(list.map(\.token)), \(list.map { Int32(clamping: $0.connections) }), \
                        \(list.map { $0.topics.joined(separator: "\n") }), \(list.map(\.connectedAt)), \(list.map { $0.lastEventID ?? -1 }), \
                        \(list.map { Int64($0.queuedBytes) }))
                        """, logger: logger).collect()
                }
                lock.withLock { publishedPresence = current }
            } else {
                _ = try await control.run(limit: Self.controlLimit) { connection in
                    try await connection.query("SELECT herald_presence_put(\(nodeID), NULL, NULL, NULL, NULL, NULL, NULL)", logger: logger).collect()
                }
            }
            lock.withLock { writerHealthy = true }
        } catch {
            lock.withLock {
                publishedPresence = [:] // republish everything once the database is back
                if heartbeat { writerHealthy = false }
            }
        }
    }

    func remoteClients(token: String?) async throws -> [ClientSummary] {
        let filter = token ?? "", logger = self.logger, nodeID = self.nodeID
        let rows = try await control.run(limit: Self.controlLimit) { connection in
            try await connection.query("""
                SELECT p.client, p.connections, p.topics, p.connected_at, p.last_event_id, p.queued_bytes
                FROM herald_presence p JOIN herald_nodes n ON n.node = p.node
                WHERE p.node <> \(nodeID) AND n.seen > now() - interval '2 seconds'
                  AND (\(filter) = '' OR p.client = \(filter))
                """, logger: logger).collect()
        }
        return try rows.map { row in
            let (client, connections, topics, connectedAt, lastEventID, queued) =
                try row.decode((String, Int32, String, Int64, Int64?, Int64).self)
            return ClientSummary(token: client, connections: Int(connections), topics: Self.topics(topics), connectedAt: connectedAt,
                                 lastEventID: lastEventID, queuedBytes: Int(queued))
        }
    }

    func closeEverywhere(token: String) async throws {
        let logger = self.logger
        _ = try await control.run(limit: Self.controlLimit) { connection in
            try await connection.query("SELECT pg_notify('herald', 'c' || \(token))", logger: logger).collect()
        }
    }

    // MARK: Closing

    private func pause(nanoseconds: UInt64) async {
        // Slept in short steps so that close() is never kept waiting long.
        var left = nanoseconds
        while left > 0, !lock.withLock({ closed }) {
            let step = min(left, 50_000_000)
            try? await Task.sleep(nanoseconds: step)
            left -= step
        }
    }

    func close() async {
        let (finished, started, waiting) = lock.withLock {
            closed = true
            defer { waiters = [] }
            return (runFinished, runStarted, waiters)
        }
        writerContinuation.finish()
        fetchContinuation.finish()
        for waiter in waiting { waiter.promise.succeed() }
        await listener.shutdown()
        if started {
            try? await finished?.futureResult.get()
        } else {
            finished?.succeed()
        }
        // Leave the directory at once rather than after the heartbeat times out.
        if let connection = try? await control.connection() {
            _ = try? await connection.query("DELETE FROM herald_presence WHERE node = \(nodeID)", logger: logger).collect()
            _ = try? await connection.query("DELETE FROM herald_nodes WHERE node = \(nodeID)", logger: logger).collect()
        }
        await writer.shutdown()
        await fetcher.shutdown()
        await reader.shutdown()
        await control.shutdown()
        await retention.shutdown()
    }
}

/// A flag set by one caller at a time (a retention pass in flight).
private struct ManagedFlag: @unchecked Sendable {
    private let storage = NIOLockedValueBox(false)
    /// Sets the flag; false when it was set already.
    func set() -> Bool { storage.withLockedValue { value in defer { value = true }; return !value } }
    func clear() { storage.withLockedValue { $0 = false } }
    var isSet: Bool { storage.withLockedValue { $0 } }
}
