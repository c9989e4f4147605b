import Atomics
import HeraldCore
import Logging
import NIOCore

/// The streams of one event loop, and fan-out to them.
///
/// Each event loop owns one shard: its streams, its topic index and its keep-alive list are
/// touched only on that loop, so nothing here takes a lock. A publish costs each shard one
/// `execute` (and a burst of publishes still one), not one hop per connection; the shard then
/// writes the shared, pre-encoded buffers of the new events to every matching stream and
/// flushes each stream once per batch.
///
/// `@unchecked Sendable`: every mutable property is confined to `eventLoop` (checked with
/// `assertInEventLoop` in debug builds); only `deliveryScheduled` is touched from other
/// threads, and it is atomic.
final class Shard: @unchecked Sendable {
    let eventLoop: any EventLoop
    unowned let hub: Hub
    private let logger: Logger
    private let keepAliveInterval: TimeAmount
    private let maxQueuedBytes: Int
    private let keepAliveComment: (chunked: ByteBuffer, plain: ByteBuffer)

    /// The newest id this shard has handed to its live streams.
    private(set) var deliveredThrough: Int64
    private var index = TopicIndex<StreamConnection>()
    private var streams: [ObjectIdentifier: StreamConnection] = [:]
    private var waiters: [ObjectIdentifier: PollWaiter] = [:]
    private let deliveryScheduled = ManagedAtomic<Bool>(false)
    private var toFlush: [StreamConnection] = []

    // Keep-alive: streams in order of their last write, oldest first. A write moves a
    // stream to the end, so one timer per loop finds every silent stream at the front.
    private var oldest: StreamConnection?
    private var newest: StreamConnection?
    private var keepAliveTimer: Scheduled<Void>?
    private let channelEmptyBuffer = ByteBuffer()

    /// Replay batches: about this many bytes per socket write round.
    static let replayBatchBytes = 64 * 1024
    static let replayBatchScan = 8192
    static let replayBatchEvents = 1024

    init(eventLoop: any EventLoop, hub: Hub, startingAt position: Int64, keepAlive: TimeAmount, maxQueuedBytes: Int, logger: Logger) {
        self.maxQueuedBytes = maxQueuedBytes
        self.eventLoop = eventLoop
        self.hub = hub
        self.deliveredThrough = position
        self.keepAliveInterval = keepAlive
        self.logger = logger
        var comment: [UInt8] = []
        SSEEncoder.appendComment("", to: &comment)
        self.keepAliveComment = (
            WireFormat.chunk(comment, allocator: hub.allocator),
            WireFormat.frame(comment, chunked: false, allocator: hub.allocator)
        )
    }

    /// Moves the shard's position before any stream opens (a durable store continues its
    /// sequence where the last run stopped).
    func reposition(to position: Int64) {
        eventLoop.assertInEventLoop()
        deliveredThrough = position
    }

    // MARK: Live delivery

    /// Called by publishers on any thread: makes sure one delivery run is queued.
    func scheduleDelivery() {
        if deliveryScheduled.compareExchange(expected: false, desired: true, ordering: .sequentiallyConsistent).exchanged {
            eventLoop.execute { self.deliverPending() }
        }
    }

    private func deliverPending() {
        deliveryScheduled.store(false, ordering: .sequentiallyConsistent)
        let pending = hub.events(after: deliveredThrough)
        apply(pending)
    }

    /// Delivers a pulled batch to the live streams and advances the shard position.
    private func apply(_ pending: Hub.Pending) {
        eventLoop.assertInEventLoop()
        if pending.missed {
            // This loop fell more than a whole history behind the publishers (it was
            // blocked for a long time). Its live streams may have missed events; closing
            // them makes each reconnect and resume or reset from its own Last-Event-ID.
            logger.warning("shard fell behind the history; closing its live streams", metadata: [
                "herald.shard.position": "\(deliveredThrough)", "herald.history.newest": "\(pending.newest)",
            ])
            for stream in streams.values where !stream.replaying { stream.close(graceful: false) }
        }
        deliveredThrough = max(deliveredThrough, pending.newest)
        guard !pending.events.isEmpty else { return }
        if !streams.isEmpty { deliver(pending.events) }
        if !waiters.isEmpty { answerWaiters(pending.events) }
    }

    private func deliver(_ events: [StoredEvent]) {
        var deliveries: Int64 = 0
        var bytes: Int64 = 0
        for event in events {
            index.forEachMatch(topics: event.topics, client: event.client) { stream in
                guard !stream.replaying, !stream.closed, event.id > stream.cursor else { return }
                stream.cursor = event.id
                stream.lastSentID = event.id
                let wire = event.wire(chunked: stream.chunked)
                stream.write(wire)
                deliveries += 1
                bytes += Int64(wire.readableBytes)
                if !stream.awaitingFlush {
                    stream.awaitingFlush = true
                    toFlush.append(stream)
                }
            }
        }
        guard !toFlush.isEmpty else { return }
        let now = NIODeadline.now()
        for stream in toFlush {
            stream.awaitingFlush = false
            stream.flush()
            markWritten(stream, at: now)
            checkBacklog(stream)
        }
        toFlush.removeAll(keepingCapacity: true)
        hub.metrics.eventsDelivered.increment(by: deliveries)
        hub.metrics.bytesSent.increment(by: bytes)
    }

    /// The slow-consumer policy: a live stream whose unsent output is over
    /// `--max-queued-bytes` after a flush is closed (it resumes from history when it
    /// reconnects), so it can never hold memory without bound or slow anyone else.
    private func checkBacklog(_ stream: StreamConnection) {
        if !stream.replaying && !stream.closed && !stream.isWritable {
            logger.info("closing slow consumer", metadata: ["herald.client": "\(stream.token)"])
            hub.metrics.slowConsumerDisconnects.increment()
            stream.close(graceful: false)
        }
    }

    // MARK: Long-polling

    /// What the HTTP layer hands over for `GET /poll`.
    struct PollRequest {
        var filter: TopicFilter
        var lastEventID: String?
        var timeout: TimeAmount
    }

    /// Starts a long poll: answers at once when events (or a reset) are due, else waits on
    /// this shard until a matching event is delivered or the timeout passes. Returns the
    /// waiter so a closing connection can cancel it.
    func poll(_ request: PollRequest, completion: @escaping PollWaiter.Completion) -> PollWaiter {
        eventLoop.assertInEventLoop()
        let (pending, opening) = hub.openStream(
            shardPosition: deliveredThrough, lastEventID: request.lastEventID, filter: request.filter)
        apply(pending)
        let waiter = PollWaiter(filter: request.filter, cursor: deliveredThrough, completion: completion)
        switch opening {
        case .fresh:
            let through = deliveredThrough
            collectRetained(for: waiter, through: through, after: .min) { retained in
                if !retained.isEmpty {
                    waiter.finish(retained, lastEventID: through, reset: false)
                } else {
                    self.wait(waiter, timeout: request.timeout)
                }
            }
        case .resume(let after):
            hub.metrics.replays.increment()
            scanForPoll(waiter, after: after, timeout: request.timeout)
        case .reset:
            hub.metrics.resets.increment()
            let through = deliveredThrough
            collectRetained(for: waiter, through: through, after: .min) { retained in
                waiter.finish(retained, lastEventID: through, reset: true)
            }
        }
        return waiter
    }

    /// The retained events matching a poll (up to ``PollWaiter/maxEvents``), read in bounded
    /// slices; between slices the loop serves others and the hub's lock is free.
    private func collectRetained(for waiter: PollWaiter, through: Int64, after: Int64, collected: [StoredEvent] = [],
                                 _ completion: @escaping ([StoredEvent]) -> Void) {
        guard !waiter.isDone else { return }
        let batch = hub.retainedBatch(
            after: after, through: through, filter: waiter.filter, maxBytes: PollWaiter.maxBytes,
            maxEvents: PollWaiter.maxEvents - collected.count, maxScan: Self.replayBatchScan)
        let all = PollWaiter.bounded(collected + batch.events)
        if batch.finished || all.count < collected.count + batch.events.count || all.count >= PollWaiter.maxEvents {
            completion(all)
            return
        }
        eventLoop.assumeIsolated().execute {
            self.collectRetained(for: waiter, through: through, after: batch.position, collected: all, completion)
        }
    }

    /// A resuming poll: the events after `after` that match, read in bounded slices (from
    /// the ring, or from a durable store when older); answers with the first slice that has
    /// any, or waits once it reaches the live position.
    private func scanForPoll(_ waiter: PollWaiter, after: Int64, timeout: TimeAmount) {
        guard !waiter.isDone else { return }
        let batch = hub.replayBatch(
            after: after, through: deliveredThrough, filter: waiter.filter,
            maxBytes: PollWaiter.maxBytes, maxEvents: PollWaiter.maxEvents, maxScan: Self.replayBatchScan)
        if batch.truncated {
            hub.metrics.resets.increment()
            let through = deliveredThrough
            collectRetained(for: waiter, through: through, after: .min) { waiter.finish($0, lastEventID: through, reset: true) }
            return
        }
        if let storeThrough = batch.fromStoreThrough {
            let store = hub.store
            // Older than the ring: answer from the store with what matches in the next slice
            // (possibly nothing, with the position reached, so the client goes on).
            readStore(store, after: after, through: storeThrough, limit: PollWaiter.maxEvents, filter: waiter.filter) { result in
                switch result {
                case .failure:
                    waiter.finish([], lastEventID: after, reset: false)
                case .success(.truncated):
                    self.hub.metrics.resets.increment()
                    let through = self.deliveredThrough
                    self.collectRetained(for: waiter, through: through, after: .min) { waiter.finish($0, lastEventID: through, reset: true) }
                case .success(.slice(let matching, let reached)):
                    let bounded = PollWaiter.bounded(matching)
                    waiter.finish(bounded, lastEventID: bounded.count < matching.count ? bounded.last!.id : reached, reset: false)
                }
            }
            return
        }
        if !batch.events.isEmpty {
            waiter.finish(batch.events, lastEventID: batch.position, reset: false)
            return
        }
        if batch.position < deliveredThrough {
            // The scan limit was reached with nothing matching yet: go on after other work.
            eventLoop.assumeIsolated().execute { self.scanForPoll(waiter, after: batch.position, timeout: timeout) }
            return
        }
        waiter.cursor = max(waiter.cursor, batch.position)
        wait(waiter, timeout: timeout)
    }

    /// Parks a poll until a matching event is delivered or `timeout` passes.
    private func wait(_ waiter: PollWaiter, timeout: TimeAmount) {
        guard !waiter.isDone else { return }
        if waiter.cursor < deliveredThrough {
            // Events were delivered while this poll was being prepared over several ticks.
            scanForPoll(waiter, after: waiter.cursor, timeout: timeout)
            return
        }
        if timeout <= .zero {
            waiter.finish([], lastEventID: deliveredThrough, reset: false)
            return
        }
        let key = ObjectIdentifier(waiter)
        waiters[key] = waiter
        waiter.timer = eventLoop.assumeIsolated().scheduleTask(in: timeout) {
            self.waiters[key] = nil
            waiter.finish([], lastEventID: waiter.cursor, reset: false)
        }
    }

    /// A waiting poll whose connection went away.
    func cancel(_ waiter: PollWaiter) {
        eventLoop.assertInEventLoop()
        waiters[ObjectIdentifier(waiter)] = nil
        waiter.abandon()
    }

    private func answerWaiters(_ events: [StoredEvent]) {
        for (key, waiter) in waiters {
            var matched: [StoredEvent] = []
            for event in events where event.id > waiter.cursor && waiter.filter.matches(topics: event.topics, client: event.client) {
                matched.append(event)
                if matched.count == PollWaiter.maxEvents { break }
            }
            matched = PollWaiter.bounded(matched)
            guard let last = matched.last else { continue }
            waiters[key] = nil
            waiter.finish(matched, lastEventID: last.id, reset: false)
        }
    }

    // MARK: Opening streams

    /// What the HTTP layer hands over when a subscription request is valid.
    struct StreamRequest {
        var token: String
        var topics: [String]
        var filter: TopicFilter
        var lastEventID: String?
        var paddingBytes: Int?
        var chunked: Bool
        var retryMilliseconds: Int
        /// Whether the stream may write to the socket directly (cleartext HTTP/1.1; see
        /// ``StreamSink``), or must write through its pipeline (TLS, HTTP/2).
        var direct: Bool
    }

    /// Turns the connection of `context` into an event stream, once its response head is
    /// written. Runs on this shard's loop, inside the HTTP handler's read, so that
    /// registering the stream and computing where it starts happen in one tick with no
    /// event in between.
    ///
    /// - Returns: the stream's start, which writes its first bytes and begins its replay.
    ///   A direct stream starts at once (call it right away); one written through its
    ///   pipeline starts once the HTTP handlers below it are gone. Until it starts, live
    ///   delivery leaves it alone, and its replay covers whatever was published meanwhile.
    func open(_ request: StreamRequest, httpContext context: ChannelHandlerContext) throws -> () -> Void {
        eventLoop.assertInEventLoop()
        let (pending, opening) = hub.openStream(
            shardPosition: deliveredThrough, lastEventID: request.lastEventID, filter: request.filter)
        apply(pending)

        let now = NIODeadline.now()
        let stream = StreamConnection(
            shard: self, token: request.token, topics: request.topics, filter: request.filter,
            chunked: request.chunked, direct: request.direct, connectedAt: WallClock.millisecondsSince1970(),
            cursor: deliveredThrough, now: now)

        var preamble: [UInt8] = []
        SSEEncoder.appendRetry(milliseconds: request.retryMilliseconds, to: &preamble)
        if let padding = request.paddingBytes {
            SSEEncoder.appendPadding(minimumBytes: padding, to: &preamble)
        }
        var resumed = false
        var resetReason: ResetReason?
        switch opening {
        case .fresh:
            // The retained events up to here first, paced like a replay.
            stream.retainedPosition = .min
            stream.replaying = true
        case .resume(let after):
            resumed = true
            stream.cursor = after
            stream.replaying = true // until start() has caught it up
            hub.metrics.replays.increment()
        case .reset(let reason):
            resetReason = reason
            stream.retainedPosition = .min
            stream.replaying = true
            hub.metrics.resets.increment()
        }
        ControlEvents.appendHello(client: request.token, topics: request.topics, resumed: resumed, to: &preamble)
        if let resetReason {
            ControlEvents.appendReset(reason: resetReason, lastEventID: request.lastEventID ?? "", newest: deliveredThrough, to: &preamble)
        }

        // Take the socket over. A direct stream handler goes first in the pipeline (its
        // writes reach the socket directly); one written through the pipeline goes last,
        // above TLS or HTTP/2 framing. The HTTP codec is removed on the next tick (a stream
        // only needs to notice the peer closing). The write-buffer watermark is the
        // slow-consumer limit.
        let channel = context.channel
        try context.pipeline.syncOperations.addHandler(stream, position: request.direct ? .first : .last)
        if let options = channel.syncOptions {
            let high = max(1, maxQueuedBytes)
            try options.setOption(ChannelOptions.writeBufferWaterMark, value: .init(low: high / 2, high: high))
        }

        streams[ObjectIdentifier(stream)] = stream
        index.insert(stream, filter: request.filter)
        appendToKeepAliveList(stream)

        let firstBytes = WireFormat.frame(preamble, chunked: request.chunked, allocator: channel.allocator)
        return {
            guard !stream.closed else { return }
            stream.write(firstBytes)
            self.continueReplay(stream)
        }
    }

    /// Sends the next slice of a replay and, once the socket has taken it, the one after;
    /// when the replay reaches the shard's live position the stream goes live. Slices older
    /// than the ring come from the durable store, read off the event loop.
    private func continueReplay(_ stream: StreamConnection) {
        eventLoop.assertInEventLoop()
        guard stream.replaying, !stream.closed else { return }
        if stream.retainedPosition != StreamConnection.notRetaining {
            continueRetained(stream, after: stream.retainedPosition)
            return
        }
        let batch = hub.replayBatch(
            after: stream.cursor, through: deliveredThrough, filter: stream.filter,
            maxBytes: Self.replayBatchBytes, maxEvents: Self.replayBatchEvents, maxScan: Self.replayBatchScan)
        if batch.truncated {
            truncateReplay(stream)
            return
        }
        if let storeThrough = batch.fromStoreThrough {
            let store = hub.store
            let after = stream.cursor
            readStore(store, after: after, through: storeThrough, limit: Self.replayBatchEvents, filter: stream.filter) { result in
                guard stream.replaying, !stream.closed, stream.cursor == after else { return }
                switch result {
                case .failure(let error):
                    self.logger.error("replay from the store failed; closing the stream so it resumes", metadata: ["error": "\(error)"])
                    stream.close(graceful: false)
                case .success(.truncated):
                    self.truncateReplay(stream)
                case .success(.slice(let matching, let reached)):
                    self.sendReplay(stream, events: matching, reachedPosition: reached)
                }
            }
            return
        }
        sendReplay(stream, events: batch.events, reachedPosition: batch.position)
    }

    enum StoreSlice {
        /// The matching events of the slice, and the position the slice covers.
        case slice([StoredEvent], reached: Int64)
        /// Pruning deleted rows after `after` while they were read: a gap, so a reset.
        case truncated
    }

    /// Reads the events after `after` (up to `through`, at most `limit`) from the durable
    /// store off the event loop, and hands what matches `filter` back on this loop.
    private func readStore(
        _ store: any EventStore, after: Int64, through: Int64, limit: Int, filter: TopicFilter,
        _ completion: @escaping (Result<StoreSlice, any Error>) -> Void
    ) {
        store.events(after: after, through: through, limit: limit)
            .hop(to: eventLoop).assumeIsolated().whenComplete { result in
                completion(result.map { events in
                    if self.hub.historyFloor > after { return .truncated }
                    let reached = events.count < limit ? through : events.last!.id
                    return .slice(events.filter { filter.matches(topics: $0.topics, client: $0.client) }, reached: reached)
                })
            }
    }

    /// The retained phase of a stream's start (no Last-Event-ID, or after a reset): the
    /// retained events with ids up to `stream.cursor`, in slices paced by the socket like a
    /// replay, so that a `*` subscriber of many retained topics costs neither a long hold of
    /// the hub's lock nor memory for all of them at once. Then the stream replays what was
    /// published meanwhile and goes live.
    private func continueRetained(_ stream: StreamConnection, after: Int64) {
        let batch = hub.retainedBatch(
            after: after, through: stream.cursor, filter: stream.filter,
            maxBytes: Self.replayBatchBytes, maxEvents: Self.replayBatchEvents, maxScan: Self.replayBatchScan)
        var bytes: Int64 = 0
        for event in batch.events {
            let wire = event.wire(chunked: stream.chunked)
            stream.write(wire)
            bytes += Int64(wire.readableBytes)
            stream.lastSentID = max(stream.lastSentID ?? event.id, event.id)
        }
        hub.metrics.bytesSent.increment(by: bytes)
        if batch.finished {
            stream.retainedPosition = StreamConnection.notRetaining
            stream.retainedThrough = stream.cursor
            if stream.cursor >= deliveredThrough {
                stream.replaying = false
                stream.flush()
                if !batch.events.isEmpty { markWritten(stream, at: .now()) }
            } else {
                pace(stream)
            }
            return
        }
        stream.retainedPosition = batch.position
        if batch.events.isEmpty {
            eventLoop.assumeIsolated().execute { self.continueReplay(stream) }
        } else {
            pace(stream)
        }
    }

    /// Flushes and continues the stream's replay once the socket has taken what was written.
    private func pace(_ stream: StreamConnection) {
        let promise = eventLoop.makePromise(of: Void.self)
        stream.write(channelEmptyBuffer, promise: promise)
        stream.flush()
        markWritten(stream, at: .now())
        promise.futureResult.assumeIsolated().whenSuccess { self.continueReplay(stream) }
    }

    /// The history moved past a replaying stream: it missed events it can no longer get,
    /// so it is told to reload its state, as on connect: `herald.reset`, then the retained
    /// events (paced), then live.
    private func truncateReplay(_ stream: StreamConnection) {
        var bytes: [UInt8] = []
        ControlEvents.appendReset(reason: .historyTruncated, lastEventID: String(stream.cursor), newest: deliveredThrough, to: &bytes)
        stream.write(WireFormat.frame(bytes, chunked: stream.chunked, allocator: hub.allocator))
        hub.metrics.resets.increment()
        stream.cursor = deliveredThrough
        // The retained state again, as on connect; a stream that already got it up to some
        // position gets only what changed after it.
        stream.retainedPosition = stream.retainedThrough
        continueReplay(stream)
    }

    private func sendReplay(_ stream: StreamConnection, events: [StoredEvent], reachedPosition: Int64) {
        var bytes: Int64 = 0
        for event in events {
            let wire = event.wire(chunked: stream.chunked)
            stream.write(wire)
            bytes += Int64(wire.readableBytes)
            stream.lastSentID = event.id
        }
        stream.cursor = reachedPosition
        hub.metrics.eventsDelivered.increment(by: Int64(events.count))
        hub.metrics.bytesSent.increment(by: bytes)
        if reachedPosition >= deliveredThrough {
            stream.replaying = false
            stream.flush()
            if !events.isEmpty { markWritten(stream, at: .now()) }
            return
        }
        if events.isEmpty {
            // Nothing matched in this slice of the history: look at the next one after
            // other work on the loop has had its turn.
            eventLoop.assumeIsolated().execute { self.continueReplay(stream) }
            return
        }
        pace(stream)
    }

    // MARK: Closing

    func remove(_ stream: StreamConnection) {
        eventLoop.assertInEventLoop()
        guard streams.removeValue(forKey: ObjectIdentifier(stream)) != nil else { return }
        stream.closed = true
        index.remove(stream, filter: stream.filter)
        removeFromKeepAliveList(stream)
        hub.openStreams.wrappingDecrement(ordering: .relaxed)
    }

    /// Closes every stream of `token`; returns how many there were.
    func close(token: String) -> Int {
        eventLoop.assertInEventLoop()
        var count = 0
        for stream in streams.values where stream.token == token && !stream.closed {
            stream.close(graceful: true)
            count += 1
        }
        return count
    }

    /// Graceful shutdown: every stream gets a `retry:` hint spread over the grace period and
    /// is closed at a random moment within it, so clients do not all reconnect at once.
    func closeAll(spreadOver grace: TimeAmount, retryMilliseconds: Int) {
        eventLoop.assertInEventLoop()
        keepAliveTimer?.cancel()
        keepAliveTimer = nil
        for stream in streams.values {
            let delay = TimeAmount.nanoseconds(grace.nanoseconds > 0 ? Int64.random(in: 0...grace.nanoseconds) : 0)
            let retry = retryMilliseconds + Int(delay.nanoseconds / 1_000_000)
            eventLoop.assumeIsolated().scheduleTask(in: delay) {
                guard !stream.closed else { return }
                var bytes: [UInt8] = []
                SSEEncoder.appendComment("server shutting down", to: &bytes)
                SSEEncoder.appendRetry(milliseconds: retry, to: &bytes)
                stream.write(WireFormat.frame(bytes, chunked: stream.chunked, allocator: self.hub.allocator))
                stream.close(graceful: true)
            }
        }
    }

    // MARK: Client listing

    struct StreamInfo {
        var token: String
        var topics: [String]
        var connectedAt: Int64
        var lastEventID: Int64?
        var queuedBytes: Int
    }

    func streamInfos(token: String?) -> [StreamInfo] {
        eventLoop.assertInEventLoop()
        var infos: [StreamInfo] = []
        for stream in streams.values where !stream.closed && (token == nil || stream.token == token) {
            infos.append(StreamInfo(
                token: stream.token, topics: stream.topics, connectedAt: stream.connectedAt,
                lastEventID: stream.lastSentID, queuedBytes: stream.queuedBytes))
        }
        return infos
    }

    func tokens() -> Set<String> {
        eventLoop.assertInEventLoop()
        var tokens = Set<String>()
        for stream in streams.values where !stream.closed { tokens.insert(stream.token) }
        return tokens
    }

    // MARK: Keep-alive

    private func appendToKeepAliveList(_ stream: StreamConnection) {
        stream.older = newest
        stream.newer = nil
        if let newest { newest.newer = stream } else { oldest = stream }
        newest = stream
        if keepAliveTimer == nil { armKeepAlive() }
    }

    private func removeFromKeepAliveList(_ stream: StreamConnection) {
        if let older = stream.older { older.newer = stream.newer } else if oldest === stream { oldest = stream.newer }
        if let newer = stream.newer { newer.older = stream.older } else if newest === stream { newest = stream.older }
        stream.older = nil
        stream.newer = nil
    }

    private func markWritten(_ stream: StreamConnection, at now: NIODeadline) {
        stream.lastWrite = now
        guard newest !== stream, !stream.closed else { return }
        removeFromKeepAliveList(stream)
        appendToKeepAliveList(stream)
    }

    private func armKeepAlive() {
        guard keepAliveTimer == nil, let oldest else { return }
        keepAliveTimer = eventLoop.scheduleTask(deadline: oldest.lastWrite + keepAliveInterval) {
            self.keepAliveTimer = nil
            self.sendKeepAlives()
        }
    }

    private func sendKeepAlives() {
        let now = NIODeadline.now()
        // A millisecond of slack so a timer that fires a hair early still counts.
        let due = now - keepAliveInterval + .milliseconds(1)
        while let stream = oldest, stream.lastWrite <= due {
            stream.write(stream.chunked ? keepAliveComment.chunked : keepAliveComment.plain)
            stream.flush()
            markWritten(stream, at: now)
            checkBacklog(stream)
        }
        armKeepAlive()
    }
}
