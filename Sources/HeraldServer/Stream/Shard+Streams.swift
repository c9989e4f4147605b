import HeraldCore
import NIOCore

/// Opening a stream and catching it up: the retained phase, replay from the ring or the
/// store, resets, all paced by the stream's socket, until it goes live.
extension Shard {

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
        /// When the subscriber's token expires (seconds since 1970; SPEC §14).
        var expires: Double? = nil
        /// An HTTP/2 stream: its bytes go out as DATA frames (see ``StreamSink``).
        var http2 = false
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
        let interest = ShardInterest.Registration(streamFilter: request.filter)
        let (pending, opening) = hub.openStream(
            shardPosition: deliveredThrough, slot: slot, interest: interest, lastEventID: request.lastEventID, filter: request.filter)
        apply(pending)
        var registered = false
        defer { if !registered { hub.release(interest, slot: slot) } }

        let now = NIODeadline.now()
        let stream = StreamConnection(
            shard: self, token: request.token, topics: request.topics, filter: request.filter,
            chunked: request.chunked, direct: request.direct, connectedAt: WallClock.millisecondsSince1970(),
            cursor: deliveredThrough, now: now, http2: request.http2)

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
        // A token accepted within the leeway but already past its `exp` (SPEC §14): hello,
        // then herald.expired and the end at once, without retained events or a replay.
        let expiredAtOpen = request.expires.map { $0 <= WallClock.secondsSince1970() } ?? false
        if expiredAtOpen, let expires = request.expires {
            ControlEvents.appendExpired(exp: expires, to: &preamble)
            resetReason = nil
        }
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
        // An HTTP/2 stream channel has no options of this kind (it traps): its limit is the
        // connection's stream configuration, set from the same --max-queued-bytes.
        if !request.http2, let options = channel.syncOptions {
            let high = max(1, maxQueuedBytes)
            try options.setOption(ChannelOptions.writeBufferWaterMark, value: .init(low: high / 2, high: high))
        }

        streams[ObjectIdentifier(stream)] = stream
        registered = true // from here on, ``remove(_:)`` releases the interest
        index.insert(stream, filter: request.filter)
        appendToKeepAliveList(stream)
        if let expires = request.expires, !expiredAtOpen { scheduleExpiry(stream, at: expires) }

        let firstBytes = WireFormat.frame(preamble, chunked: request.chunked, allocator: channel.allocator)
        return {
            guard !stream.closed else { return }
            stream.started = true
            stream.write(firstBytes)
            if expiredAtOpen {
                stream.close(graceful: true)
                return
            }
            self.continueReplay(stream)
        }
    }

    /// Sends the next slice of a replay and, once the socket has taken it, the one after;
    /// when the replay reaches the shard's live position the stream goes live. Slices older
    /// than the ring come from the durable store, read off the event loop.
    func continueReplay(_ stream: StreamConnection) {
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
    func readStore(
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
    func continueRetained(_ stream: StreamConnection, after: Int64) {
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
    func pace(_ stream: StreamConnection) {
        let promise = eventLoop.makePromise(of: Void.self)
        stream.write(channelEmptyBuffer, promise: promise)
        stream.flush()
        markWritten(stream, at: .now())
        promise.futureResult.assumeIsolated().whenSuccess { self.continueReplay(stream) }
    }

    /// The history moved past a replaying stream: it missed events it can no longer get,
    /// so it is told to reload its state, as on connect: `herald.reset`, then the retained
    /// events (paced), then live.
    func truncateReplay(_ stream: StreamConnection) {
        var bytes: [UInt8] = []
        ControlEvents.appendReset(reason: .historyTruncated, lastEventID: String(stream.cursor), newest: deliveredThrough, to: &bytes)
        stream.write(WireFormat.frame(bytes, chunked: stream.chunked, allocator: hub.allocator))
        hub.metrics.resets.increment()
        stream.cursor = deliveredThrough
        // The whole retained state again, as on connect: a client reloads its state on a
        // reset. (A client too slow to finish a replay within the history window can be
        // reset again; each round still delivers, and it is paced by its own socket.)
        stream.retainedPosition = .min
        continueReplay(stream)
    }

    func sendReplay(_ stream: StreamConnection, events: [StoredEvent], reachedPosition: Int64) {
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
}
