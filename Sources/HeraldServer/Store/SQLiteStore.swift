import Foundation
#if canImport(Glibc)
import Glibc
#endif
import HeraldCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SQLiteNIO

/// The durable history (`--store sqlite:PATH`): every event, the retained event of each
/// topic, the idempotency keys and the id sequence, in one SQLite file in WAL mode.
///
/// Writes go through one queue. Publishes that arrive while a transaction is being written
/// wait and are committed together in the next one (group commit): one fsync acknowledges a
/// whole burst, so a publisher at full speed is not limited to one fsync per request. A batch
/// is acknowledged (and becomes visible to subscribers) only after its transaction has
/// committed with `synchronous=FULL`, so an acknowledged event survives `kill -9` and power
/// loss, and an unacknowledged one is never seen by anyone.
///
/// Pruning (by count and by age) runs on the same queue in slices of at most
/// ``pruneSlice`` rows between publish transactions, so that it never holds publishers for
/// long.
///
/// The writer is a service: ``run()`` (started by the server after ``open(sink:cacheCapacity:freshStart:)``)
/// commits whatever is queued whenever it is woken, and ends after the last queued batch once
/// ``close()`` is called.
final class SQLiteStore: EventStore, @unchecked Sendable {
    /// A publish (or a retained-event clearing) waiting to be written.
    struct PendingBatch {
        var batch: CommittedBatch
        var promise: EventLoopPromise<Void>
    }

    /// The two connections, opened together: one writes, one reads replays (`query_only`),
    /// so a cold replay never waits behind a commit.
    private struct Connections {
        var writer: SQLiteConnection
        var reader: SQLiteConnection
    }

    static let pruneSlice = 5000
    /// Rows per INSERT statement (6 parameters each).
    static let insertRows = 500

    let path: String
    private let writerPool: NIOThreadPool
    private let readerPool: NIOThreadPool
    private let loop: any EventLoop
    private let logger: Logger
    private let historyLimit: Int
    private let retainedLimit: Int
    private let maxAgeMilliseconds: Int64?
    private let allocator = ByteBufferAllocator()
    private let wakeups: AsyncStream<Void>
    private let wakeupContinuation: AsyncStream<Void>.Continuation

    // Guarded by `lock`.
    private let lock = NIOLock()
    private var connections: Connections?
    /// The writer while `open` is still reading the file (before both connections are up).
    private var openWriter: SQLiteConnection?
    /// Whether ``run()`` has started (else ``close()`` has no writer to wait for).
    private var runStarted = false
    private var sink: (any CommittedEventSink)?
    private var queue: [PendingBatch] = []
    /// The newest id given out; runs ahead of the committed ones while batches wait.
    private var assignedThrough: Int64 = 0
    /// Completed when ``run()`` has finished (the last queued batch is answered); made
    /// when it starts.
    private var writerFinished: EventLoopPromise<Void>?
    private var closed = false
    /// Events in the file, for retention by count.
    private var eventCount = 0
    private var floor: Int64 = 0
    private var nextPrune = NIODeadline.now()
    /// A commit added retained rows: the next retention pass trims the table to the limit.
    private var retainedGrew = false
    /// The open descriptor holding the exclusive `flock` that keeps other processes out.
    private var lockDescriptor: Int32 = -1

    init(path: String, historyLimit: Int, retainedLimit: Int, maxAge: TimeAmount?, loop: any EventLoop, logger: Logger) {
        self.path = path
        self.historyLimit = historyLimit
        self.retainedLimit = max(1, retainedLimit)
        self.maxAgeMilliseconds = maxAge.map { $0.nanoseconds / 1_000_000 }
        self.loop = loop
        self.logger = logger
        self.writerPool = NIOThreadPool(numberOfThreads: 1)
        self.readerPool = NIOThreadPool(numberOfThreads: 1)
        (wakeups, wakeupContinuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    var description: String { "sqlite:\(path)" }
    var keepsHistoryBeyondCache: Bool { true }
    var storedEventCount: Int? { lock.withLock { eventCount } }

    // MARK: Opening

    /// Opens (or creates) the file and reads what a restarting server needs.
    /// - Parameter freshStart: where a new file's id sequence starts after.
    func open(sink: any CommittedEventSink, cacheCapacity: Int, freshStart: Int64) async throws -> StoreSnapshot {
        try lockFile()
        writerPool.start()
        readerPool.start()
        let writer = try await SQLiteConnection.open(storage: .file(path: path), threadPool: writerPool, logger: logger, on: loop)
        // Held where close() finds it from now on, so a failure below still closes it.
        lock.withLock { openWriter = writer }
        // busy_timeout first: a backup tool holding a read lock makes a statement wait a
        // little instead of failing at once with SQLITE_BUSY.
        for pragma in ["PRAGMA busy_timeout=5000", "PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL", "PRAGMA foreign_keys=OFF"] {
            _ = try await writer.query(pragma)
        }
        let mode = try await writer.query("PRAGMA journal_mode").first?.column("journal_mode")?.string
        guard mode?.lowercased() == "wal" else {
            throw StoreError("\(path): could not switch to WAL mode (journal_mode is \(mode ?? "unknown"))")
        }
        _ = try await writer.query("BEGIN IMMEDIATE")
        do {
            for statement in Self.schema { _ = try await writer.query(statement) }
            _ = try await writer.query(
                "INSERT OR IGNORE INTO meta(name, value) VALUES ('last_id', ?1), ('floor', ?1), ('format', 1)",
                [.integer(Int(freshStart))])
            _ = try await writer.query("COMMIT")
        } catch {
            _ = try? await writer.query("ROLLBACK")
            throw error
        }
        let reader = try await SQLiteConnection.open(storage: .file(path: path), threadPool: readerPool, logger: logger, on: loop)
        lock.withLock {
            connections = Connections(writer: writer, reader: reader)
            openWriter = nil
        }
        _ = try await reader.query("PRAGMA busy_timeout=5000")
        _ = try await reader.query("PRAGMA query_only=ON")

        var meta: [String: Int64] = [:]
        for row in try await writer.query("SELECT name, value FROM meta") {
            if let name = row.column("name")?.string, let value = row.column("value")?.integer { meta[name] = Int64(value) }
        }
        guard meta["format"] == 1, let lastID = meta["last_id"], let floor = meta["floor"] else {
            throw StoreError("\(path) is not a Herald store (or one of a newer format)")
        }
        let count = try await writer.query("SELECT count(*) AS n FROM events").first?.column("n")?.integer ?? 0
        let recentRows = try await writer.query(
            "SELECT id, topics, client, type, data, created FROM events WHERE id > ?1 ORDER BY id DESC LIMIT ?2",
            [.integer(Int(floor)), .integer(cacheCapacity)])
        let recent = try recentRows.reversed().map(event(from:))
        var retained: [(topic: String, event: StoredEvent)] = []
        for row in try await writer.query(
            "SELECT topic, id, topics, client, type, data, created FROM retained ORDER BY id DESC LIMIT ?1", [.integer(retainedLimit)]) {
            guard let topic = row.column("topic")?.string else { continue }
            retained.append((topic, try event(from: row)))
        }
        retained.reverse()
        var keys: [(key: String, ids: [Int64])] = []
        for row in try await writer.query("SELECT key, ids FROM idempotency ORDER BY newest") {
            guard let key = row.column("key")?.string, let ids = row.column("ids")?.string else { continue }
            keys.append((key, ids.split(separator: ",").compactMap { Int64($0) }))
        }
        lock.withLock {
            self.eventCount = count
            self.floor = floor
            self.assignedThrough = lastID
            self.sink = sink
            // From here on close() waits for run(), which the server starts next.
            self.writerFinished = loop.makePromise(of: Void.self)
        }
        return StoreSnapshot(lastID: lastID, floor: floor, recent: recent, eventCount: count, retained: retained, idempotency: keys)
    }

    /// Takes an exclusive `flock` on `PATH.lock`, so that a second Herald process on the same
    /// file refuses to start (two writers would hand out the same ids and miss each other's
    /// events). A file beside the database rather than the database itself: closing any
    /// descriptor of the database would release the POSIX locks SQLite holds on it in this
    /// process. The lock goes with the process, also on `kill -9`.
    private func lockFile() throws {
        let lockPath = path + ".lock"
        let descriptor = Glibc.open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else {
            throw StoreError("cannot open \(lockPath): \(String(cString: strerror(errno)))")
        }
        if flock(descriptor, LOCK_EX | LOCK_NB) != 0 {
            let reason = errno == EWOULDBLOCK
                ? "it is in use by another Herald process (a sqlite: store serves one process at a time; use postgres:// for several)"
                : String(cString: strerror(errno))
            Glibc.close(descriptor)
            throw StoreError("cannot use \(path): \(reason)")
        }
        lockDescriptor = descriptor
    }

    private static let schema = [
        """
        CREATE TABLE IF NOT EXISTS events(
            id INTEGER PRIMARY KEY, topics TEXT NOT NULL, client TEXT, type TEXT,
            data BLOB NOT NULL, created INTEGER NOT NULL)
        """,
        """
        CREATE TABLE IF NOT EXISTS retained(
            topic TEXT PRIMARY KEY, id INTEGER NOT NULL, topics TEXT NOT NULL, client TEXT, type TEXT,
            data BLOB NOT NULL, created INTEGER NOT NULL)
        """,
        "CREATE TABLE IF NOT EXISTS idempotency(key TEXT PRIMARY KEY, ids TEXT NOT NULL, newest INTEGER NOT NULL)",
        "CREATE INDEX IF NOT EXISTS idempotency_newest ON idempotency(newest)",
        "CREATE INDEX IF NOT EXISTS retained_id ON retained(id)",
        "CREATE TABLE IF NOT EXISTS meta(name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    ]

    /// Topics are stored joined by a line feed, which a topic can never contain.
    private static let topicSeparator: Character = "\n"

    private func event(from row: SQLiteRow) throws -> StoredEvent {
        guard let id = row.column("id")?.integer, let topics = row.column("topics")?.string,
              case .blob(let data)? = row.column("data"), let created = row.column("created")?.integer
        else { throw StoreError("\(path): a malformed event row") }
        return StoredEvent(
            id: Int64(id),
            topics: topics.isEmpty ? [] : topics.split(separator: Self.topicSeparator, omittingEmptySubsequences: false).map(String.init),
            client: row.column("client")?.string, type: row.column("type")?.string,
            data: String(buffer: data), created: Int64(created), allocator: allocator)
    }

    // MARK: Writing

    /// Gives the batch its ids and queues it; the future succeeds once it is committed and
    /// visible, or fails (nothing published).
    func append(_ request: AppendRequest, on loop: any EventLoop) -> EventLoopFuture<Appended> {
        let promise = loop.makePromise(of: Void.self)
        let ids: [Int64]? = lock.withLock {
            guard !closed else { return nil }
            // Ids are reserved now and queued in order, so the writer commits them in id
            // order. Ids of a batch whose commit fails are never seen by anyone: they leave a
            // gap rather than being given again.
            let events = request.events(after: &assignedThrough, allocator: allocator)
            queue.append(PendingBatch(
                batch: CommittedBatch(events: events, retain: request.retain, idempotencyKey: request.idempotencyKey),
                promise: promise))
            return events.map(\.id)
        }
        guard let ids else {
            promise.fail(StoreError("the store is closing"))
            return promise.futureResult.map { Appended(ids: [], repeated: false) }
        }
        wakeupContinuation.yield()
        return promise.futureResult.map { Appended(ids: ids, repeated: false) }
    }

    func clearRetained(topic: String, on loop: any EventLoop) -> EventLoopFuture<Void> {
        let promise = loop.makePromise(of: Void.self)
        let queued: Bool = lock.withLock {
            guard !closed else { return false }
            queue.append(PendingBatch(batch: CommittedBatch(events: [], retain: false, idempotencyKey: nil, clearRetained: topic),
                                      promise: promise))
            return true
        }
        if queued { wakeupContinuation.yield() } else { promise.fail(StoreError("the store is closing")) }
        return promise.futureResult
    }

    /// The writer: commits what is queued (group commit) and prunes between commits, each
    /// time it is woken, until ``close()``.
    func run() async {
        guard let finished = lock.withLock({ () -> EventLoopPromise<Void>? in
            runStarted = true
            return writerFinished
        }) else { return }
        for await _ in wakeups { await drain() }
        await drain()
        finished.succeed()
    }

    private func drain() async {
        while true {
            let group: [PendingBatch] = lock.withLock {
                let taken = queue
                queue.removeAll(keepingCapacity: true)
                return taken
            }
            if !group.isEmpty {
                await commit(group)
                continue
            }
            if await pruneStep() { continue }
            return
        }
    }

    private func commit(_ group: [PendingBatch]) async {
        guard let writer = lock.withLock({ connections?.writer }) else {
            for pending in group { pending.promise.fail(StoreError("the store is not open")) }
            return
        }
        do {
            _ = try await writer.query("BEGIN IMMEDIATE")
            var rows: [SQLiteData] = []
            var rowCount = 0
            // A topic's retained event after this group, or nil where the group cleared it.
            var retained: [TopicKey: StoredEvent?] = [:] // by bytes: NFC and NFD are two topics
            var keys: [SQLiteData] = []
            var keyCount = 0
            var lastID: Int64 = 0
            for batch in group.map(\.batch) {
                if let topic = batch.clearRetained {
                    retained[TopicKey(topic)] = .some(nil)
                    continue
                }
                for event in batch.events {
                    rows.append(contentsOf: row(for: event))
                    rowCount += 1
                    lastID = event.id
                    if rowCount == Self.insertRows {
                        try await insert(writer, "events(id, topics, client, type, data, created)", columns: 6, rows: rows)
                        rows.removeAll(keepingCapacity: true)
                        rowCount = 0
                    }
                    if batch.retain && event.client == nil {
                        for topic in event.topics { retained[TopicKey(topic)] = .some(event) }
                    }
                }
                if let key = batch.idempotencyKey {
                    keys.append(.text(key))
                    keys.append(.text(batch.events.map { String($0.id) }.joined(separator: ",")))
                    keys.append(.integer(Int(batch.events.last!.id)))
                    keyCount += 1
                }
            }
            if rowCount > 0 {
                try await insert(writer, "events(id, topics, client, type, data, created)", columns: 6, rows: rows)
            }
            if !retained.isEmpty {
                var values: [SQLiteData] = []
                for (topic, event) in retained {
                    guard let event else {
                        _ = try await writer.query("DELETE FROM retained WHERE topic = ?1", [.text(topic.name)])
                        continue
                    }
                    values.append(.text(topic.name))
                    values.append(contentsOf: row(for: event))
                }
                if !values.isEmpty {
                    try await insert(writer, "retained(topic, id, topics, client, type, data, created)", columns: 7, rows: values, replace: true)
                    lock.withLock { retainedGrew = true }
                }
            }
            if keyCount > 0 {
                try await insert(writer, "idempotency(key, ids, newest)", columns: 3, rows: keys, replace: true)
            }
            if lastID > 0 {
                _ = try await writer.query("UPDATE meta SET value = ?1 WHERE name = 'last_id'", [.integer(Int(lastID))])
            }
            _ = try await writer.query("COMMIT")
        } catch {
            _ = try? await writer.query("ROLLBACK")
            logger.error("store write failed; the publishes were not acknowledged", metadata: ["error": "\(error)"])
            for pending in group { pending.promise.fail(StoreError("the event store could not write: \(error)")) }
            return
        }
        let events = group.reduce(0) { $0 + $1.batch.events.count }
        let sink = lock.withLock {
            eventCount += events
            return self.sink
        }
        sink?.committed(group.map(\.batch))
        for pending in group { pending.promise.succeed() }
    }

    private func row(for event: StoredEvent) -> [SQLiteData] {
        var data = allocator.buffer(capacity: event.data.utf8.count)
        data.writeString(event.data)
        return [
            .integer(Int(event.id)),
            .text(event.topics.joined(separator: String(Self.topicSeparator))),
            event.client.map { .text($0) } ?? .null,
            event.type.map { .text($0) } ?? .null,
            .blob(data),
            .integer(Int(event.created)),
        ]
    }

    private func insert(_ writer: SQLiteConnection, _ table: String, columns: Int, rows: [SQLiteData], replace: Bool = false) async throws {
        let count = rows.count / columns
        var sql = replace ? "INSERT OR REPLACE INTO " : "INSERT INTO "
        sql += table
        sql += " VALUES "
        var parameter = 1
        for index in 0..<count {
            sql += index == 0 ? "(" : ",("
            for column in 0..<columns {
                if column > 0 { sql += "," }
                sql += "?\(parameter)"
                parameter += 1
            }
            sql += ")"
        }
        _ = try await writer.query(sql, rows)
    }

    // MARK: Retention

    /// Deletes one slice of events that are past the count or age limit. Returns true when
    /// it deleted something (there may be more).
    private func pruneStep() async -> Bool {
        let (count, floor, due, trimRetained, writer, sink) = lock.withLock {
            let trim = retainedGrew && NIODeadline.now() >= nextPrune
            if trim { retainedGrew = false }
            return (eventCount, self.floor, NIODeadline.now() >= nextPrune, trim, connections?.writer, self.sink)
        }
        guard due, let writer else { return false }
        if trimRetained {
            // At most --max-retained topics: the ones whose retained event is oldest go (the
            // hub has dropped them from memory already).
            do {
                _ = try await writer.query(
                    "DELETE FROM retained WHERE id < (SELECT id FROM retained ORDER BY id DESC LIMIT 1 OFFSET ?1)",
                    [.integer(retainedLimit - 1)])
            } catch {
                logger.error("trimming retained events failed; will retry", metadata: ["error": "\(error)"])
                lock.withLock { retainedGrew = true }
            }
        }
        do {
            var target = floor
            let excess = count - historyLimit
            if excess > 0 {
                let offset = min(excess, Self.pruneSlice) - 1
                if let id = try await writer.query(
                    "SELECT id FROM events ORDER BY id LIMIT 1 OFFSET ?1", [.integer(offset)]).first?.column("id")?.integer {
                    target = max(target, Int64(id))
                }
            }
            if let maxAge = maxAgeMilliseconds {
                let cutoff = WallClock.millisecondsSince1970() - maxAge
                let sql = "SELECT max(id) AS id FROM (SELECT id, created FROM events ORDER BY id LIMIT ?1) WHERE created < ?2"
                if let id = try await writer.query(sql, [.integer(Self.pruneSlice), .integer(Int(cutoff))]).first?.column("id")?.integer {
                    target = max(target, Int64(id))
                }
            }
            guard target > floor else {
                lock.withLock { nextPrune = .now() + .seconds(1) }
                return false
            }
            // Subscribers stop resuming into the range before its rows go.
            sink?.historyFloorAdvanced(to: target)
            _ = try await writer.query("BEGIN IMMEDIATE")
            let deleted = try await writer.query(
                "SELECT count(*) AS n FROM events WHERE id <= ?1", [.integer(Int(target))]).first?.column("n")?.integer ?? 0
            _ = try await writer.query("DELETE FROM events WHERE id <= ?1", [.integer(Int(target))])
            _ = try await writer.query("DELETE FROM idempotency WHERE newest <= ?1", [.integer(Int(target))])
            _ = try await writer.query("UPDATE meta SET value = ?1 WHERE name = 'floor'", [.integer(Int(target))])
            _ = try await writer.query("COMMIT")
            lock.withLock {
                eventCount -= deleted
                self.floor = target
            }
            return true
        } catch {
            _ = try? await writer.query("ROLLBACK")
            logger.error("store pruning failed; will retry", metadata: ["error": "\(error)"])
            lock.withLock { nextPrune = .now() + .seconds(5) }
            return false
        }
    }

    /// Asks for a retention pass soon (the server calls this once a second).
    func scheduleRetention() {
        wakeupContinuation.yield()
    }

    // MARK: Reading

    /// Events with `after < id <= through`, oldest first, at most `limit`, from the file.
    func events(after: Int64, through: Int64, limit: Int) -> EventLoopFuture<[StoredEvent]> {
        let promise = loop.makePromise(of: [StoredEvent].self)
        guard let reader = lock.withLock({ connections?.reader }) else {
            promise.fail(StoreError("the store is not open"))
            return promise.futureResult
        }
        promise.completeWithTask {
            let rows = try await reader.query(
                "SELECT id, topics, client, type, data, created FROM events WHERE id > ?1 AND id <= ?2 ORDER BY id LIMIT ?3",
                [.integer(Int(after)), .integer(Int(through)), .integer(limit)])
            return try rows.map(self.event(from:))
        }
        return promise.futureResult
    }

    // MARK: Closing

    /// Waits for queued writes, then closes the file (checkpointing the WAL).
    func close() async {
        let (finished, started) = lock.withLock {
            closed = true
            return (writerFinished, runStarted)
        }
        wakeupContinuation.finish()
        if started {
            try? await finished?.futureResult.get()
        } else {
            finished?.succeed() // opened, but the writer never ran: nothing queued can be committed
        }
        let (connections, openWriter) = lock.withLock { () -> (Connections?, SQLiteConnection?) in
            defer {
                self.connections = nil
                self.openWriter = nil
            }
            return (self.connections, self.openWriter)
        }
        try? await connections?.reader.close()
        try? await connections?.writer.close()
        try? await openWriter?.close()
        try? await writerPool.shutdownGracefully()
        try? await readerPool.shutdownGracefully()
        if lockDescriptor >= 0 {
            Glibc.close(lockDescriptor)
            lockDescriptor = -1
        }
    }
}

struct StoreError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
