import HeraldCore
import NIOCore

/// Long polls (`GET /poll`, SPEC §4) on a shard: answered at once from history or the
/// retained set, read in bounded slices, or parked until a matching event is delivered.
extension Shard {

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
        // A poll in progress makes its shard want every event until it is answered or gone:
        // its preparation spans ticks and reads up to what the shard has delivered.
        let (pending, opening) = hub.openStream(
            shardPosition: deliveredThrough, slot: slot, interest: .everything, lastEventID: request.lastEventID, filter: request.filter)
        apply(pending)
        let waiter = PollWaiter(filter: request.filter, cursor: deliveredThrough, completion: completion)
        let hub = self.hub, slot = self.slot
        waiter.onEnd = { hub.release(.everything, slot: slot) }
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
    func collectRetained(for waiter: PollWaiter, through: Int64, after: Int64, collected: [StoredEvent] = [],
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
    func scanForPoll(_ waiter: PollWaiter, after: Int64, timeout: TimeAmount) {
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
    func wait(_ waiter: PollWaiter, timeout: TimeAmount) {
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

    func answerWaiters(_ events: [StoredEvent]) {
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
}
