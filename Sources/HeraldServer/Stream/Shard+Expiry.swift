import HeraldCore
import NIOCore

/// Subscriber tokens expire (SPEC §14): when a stream's token reaches its `exp` (no leeway
/// here), the stream gets `event: herald.expired` and is closed. One timer per loop, armed
/// for the next second in which a token expires, not one per stream.
extension Shard {
    /// The second a token expiring at `expires` is enforced in: rounded up (never early),
    /// clamped so that any `exp` a token may carry converts without a trap.
    static func expirySecond(_ expires: Double) -> Int64 {
        guard expires.isFinite else { return expires < 0 ? 0 : Int64.max / 2 }
        return Int64(min(max(expires.rounded(.up), 0), Double(Int64.max / 2)))
    }

    /// Index of `second` in ``expirySeconds``, or where it would go.
    private func secondIndex(_ second: Int64) -> Int {
        if let last = expirySeconds.last, last < second { return expirySeconds.count } // the usual case
        var low = 0
        var high = expirySeconds.count
        while low < high {
            let mid = (low + high) / 2
            if expirySeconds[mid] < second { low = mid + 1 } else { high = mid }
        }
        return low
    }

    func scheduleExpiry(_ stream: StreamConnection, at expires: Double) {
        eventLoop.assertInEventLoop()
        stream.expires = expires
        let second = Self.expirySecond(expires)
        if expiryBuckets[second] == nil {
            expirySeconds.insert(second, at: secondIndex(second))
        }
        expiryBuckets[second, default: [:]][ObjectIdentifier(stream)] = stream
        armExpiryTimer()
    }

    func removeExpiry(_ stream: StreamConnection) {
        guard let expires = stream.expires else { return }
        let second = Self.expirySecond(expires)
        guard var bucket = expiryBuckets[second] else { return }
        bucket[ObjectIdentifier(stream)] = nil
        if bucket.isEmpty {
            expiryBuckets[second] = nil
            let index = secondIndex(second)
            if index < expirySeconds.count, expirySeconds[index] == second { expirySeconds.remove(at: index) }
        } else {
            expiryBuckets[second] = bucket
        }
    }

    private func armExpiryTimer() {
        guard let next = expirySeconds.first else { return }
        if let due = expiryTimerDue, due <= next, expiryTimer != nil { return }
        expiryTimer?.cancel()
        let delay = max(0, Double(next) - WallClock.secondsSince1970())
        // Capped at a day, so a far-off expiry never overflows a deadline (it re-arms then).
        expiryTimerDue = next
        expiryTimer = eventLoop.assumeIsolated().scheduleTask(in: .nanoseconds(Int64(min(delay, 86_400) * 1_000_000_000))) {
            self.expireDue()
        }
    }

    private func expireDue() {
        expiryTimer = nil
        expiryTimerDue = nil
        let now = WallClock.secondsSince1970()
        var waitingForStart = false
        while let second = expirySeconds.first, Double(second) <= now {
            expirySeconds.removeFirst()
            let bucket = expiryBuckets.removeValue(forKey: second) ?? [:]
            var notStarted: [ObjectIdentifier: StreamConnection] = [:]
            for (id, stream) in bucket where !stream.closed {
                // A stream whose start has not run yet (its head still going out through the
                // pipeline) gets its notice once it has.
                guard stream.started else {
                    notStarted[id] = stream
                    continue
                }
                stream.expires = nil // out of the buckets already
                var bytes: [UInt8] = []
                ControlEvents.appendExpired(exp: Double(second), to: &bytes)
                stream.write(WireFormat.frame(bytes, chunked: stream.chunked, allocator: hub.allocator))
                stream.close(graceful: true)
            }
            if !notStarted.isEmpty {
                expiryBuckets[second] = notStarted
                expirySeconds.insert(second, at: 0)
                waitingForStart = true
                break
            }
        }
        if waitingForStart {
            expiryTimerDue = expirySeconds.first
            expiryTimer = eventLoop.assumeIsolated().scheduleTask(in: .milliseconds(20)) { self.expireDue() }
            return
        }
        armExpiryTimer()
    }
}
