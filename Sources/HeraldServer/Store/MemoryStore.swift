import HeraldCore
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// `--store memory`: the ring is the whole history, so this store only gives ids and hands
/// every batch to the hub at once. Its sequence starts above every id an earlier run can
/// have given (the clock in microseconds), so a pre-restart `Last-Event-ID` is recognised as
/// unknown instead of being replayed wrongly.
final class MemoryStore: EventStore, @unchecked Sendable {
    // `lastID` and `sink` are guarded by `lock`. Ids are given and batches handed to the sink
    // under it, so batches reach the hub in id order.
    private let lock = NIOLock()
    private var lastID: Int64
    private var sink: (any CommittedEventSink)?
    private let allocator: ByteBufferAllocator

    init(startingAfter start: Int64, allocator: ByteBufferAllocator) {
        self.lastID = start
        self.allocator = allocator
    }

    var description: String { "memory" }
    var keepsHistoryBeyondCache: Bool { false }
    var storedEventCount: Int? { nil }
    var commitsInline: Bool { true }

    func open(sink: any CommittedEventSink, cacheCapacity: Int, freshStart: Int64) async throws -> StoreSnapshot {
        lock.withLock {
            self.sink = sink
            return .empty(startingAfter: lastID)
        }
    }

    func append(_ batch: AppendRequest, on loop: any EventLoop) -> EventLoopFuture<Appended> {
        loop.makeSucceededFuture(commit(batch))
    }

    func appendInline(_ batch: AppendRequest) -> Appended? {
        commit(batch)
    }

    private func commit(_ batch: AppendRequest) -> Appended {
        let ids: [Int64] = lock.withLock {
            let events = batch.events(after: &lastID, allocator: allocator)
            sink?.committed([CommittedBatch(events: events, retain: batch.retain, idempotencyKey: batch.idempotencyKey)])
            return events.map(\.id)
        }
        return Appended(ids: ids, repeated: false)
    }

    func clearRetained(topic: String, on loop: any EventLoop) -> EventLoopFuture<Void> {
        lock.withLock {
            sink?.committed([CommittedBatch(events: [], retain: false, idempotencyKey: nil, clearRetained: topic)])
        }
        return loop.makeSucceededVoidFuture()
    }

    func events(after: Int64, through: Int64, limit: Int) -> EventLoopFuture<[StoredEvent]> {
        // Never asked: the hub reads the store only when it keeps history beyond the ring.
        MultiThreadedEventLoopGroup.singleton.any().makeFailedFuture(StoreError("the memory store's history is the ring"))
    }

    func scheduleRetention() {}

    func run() async {}

    func close() async {}
}
