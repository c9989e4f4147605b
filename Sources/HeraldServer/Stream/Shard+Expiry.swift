import HeraldCore
import NIOCore

/// Subscriber tokens expire (SPEC §14): when a stream's token reaches its `exp` (no leeway
/// here), the stream gets `event: herald.expired` and is closed. One timer per loop, armed
/// for the next expiry due, not one per stream.
extension Shard {
    /// Orders streams by expiry, latest first (ties by identity, so one can be found again).
    private static func isLater(_ a: StreamConnection, than b: StreamConnection) -> Bool {
        let (x, y) = (a.expires ?? 0, b.expires ?? 0)
        return x != y ? x > y : ObjectIdentifier(a) > ObjectIdentifier(b)
    }

    /// Where `stream` belongs in ``expiries`` (binary search).
    private func expiryIndex(of stream: StreamConnection) -> Int {
        var low = 0
        var high = expiries.count
        while low < high {
            let mid = (low + high) / 2
            if Self.isLater(expiries[mid], than: stream) { low = mid + 1 } else { high = mid }
        }
        return low
    }

    func scheduleExpiry(_ stream: StreamConnection, at expires: Double) {
        eventLoop.assertInEventLoop()
        stream.expires = expires
        expiries.insert(stream, at: expiryIndex(of: stream))
        armExpiryTimer()
    }

    func removeExpiry(_ stream: StreamConnection) {
        let index = expiryIndex(of: stream)
        if index < expiries.count, expiries[index] === stream { expiries.remove(at: index) }
    }

    private func armExpiryTimer() {
        guard let next = expiries.last?.expires else { return }
        if let due = expiryTimerDue, due <= next, expiryTimer != nil { return }
        expiryTimer?.cancel()
        let delay = max(0, next - WallClock.secondsSince1970())
        // Capped at a day, so a far-off expiry never overflows a deadline.
        let nanoseconds = Int64(min(delay, 86_400) * 1_000_000_000)
        expiryTimerDue = next
        expiryTimer = eventLoop.assumeIsolated().scheduleTask(in: .nanoseconds(nanoseconds)) { self.expireDue() }
    }

    private func expireDue() {
        expiryTimer = nil
        expiryTimerDue = nil
        let now = WallClock.secondsSince1970()
        var notStarted: [StreamConnection] = []
        while let stream = expiries.last, let expires = stream.expires, expires <= now {
            expiries.removeLast()
            guard !stream.closed else { continue }
            // A stream whose start has not run yet (its head still going out through the
            // pipeline) gets its notice once it has.
            guard stream.started else {
                notStarted.append(stream)
                continue
            }
            var bytes: [UInt8] = []
            ControlEvents.appendExpired(exp: expires, to: &bytes)
            stream.write(WireFormat.frame(bytes, chunked: stream.chunked, allocator: hub.allocator))
            stream.close(graceful: true)
        }
        for stream in notStarted { expiries.insert(stream, at: expiryIndex(of: stream)) }
        if !notStarted.isEmpty {
            expiryTimerDue = now
            expiryTimer = eventLoop.assumeIsolated().scheduleTask(in: .milliseconds(20)) { self.expireDue() }
            return
        }
        armExpiryTimer()
    }
}
