import HeraldCore
import NIOCore

/// A long-poll request waiting on its shard for the first matching event (SPEC §4). Like a
/// stream it is confined to its event loop; unlike one it completes once and goes away.
final class PollWaiter {
    typealias Completion = (_ events: [StoredEvent], _ lastEventID: Int64, _ reset: Bool) -> Void

    let filter: TopicFilter
    var cursor: Int64
    private var completion: Completion?
    var timer: Scheduled<Void>?
    /// Called once when the poll is answered or abandoned.
    var onEnd: (() -> Void)?

    /// The most events one answer carries; the client polls again for the rest.
    static let maxEvents = 1000
    /// And about this many bytes of events (at least one event): a poll's answer is built
    /// whole in memory, so its size is bounded like a replay slice.
    static let maxBytes = 256 * 1024

    /// The longest prefix of `events` within ``maxEvents`` and ``maxBytes`` (at least one).
    static func bounded(_ events: [StoredEvent]) -> [StoredEvent] {
        var bytes = 0
        for (index, event) in events.enumerated() {
            bytes += event.data.utf8.count + 64
            if index + 1 >= maxEvents || bytes >= maxBytes { return Array(events[...index]) }
        }
        return events
    }

    init(filter: TopicFilter, cursor: Int64, completion: @escaping Completion) {
        self.filter = filter
        self.cursor = cursor
        self.completion = completion
    }

    var isDone: Bool { completion == nil }

    /// The connection went away: nothing will be answered (a store read still in flight
    /// finds the waiter done).
    func abandon() {
        timer?.cancel()
        timer = nil
        completion = nil
        end()
    }

    private func end() {
        guard let onEnd else { return }
        self.onEnd = nil
        onEnd()
    }

    /// Answers once; later calls do nothing.
    func finish(_ events: [StoredEvent], lastEventID: Int64, reset: Bool) {
        timer?.cancel()
        timer = nil
        guard let completion else { return }
        self.completion = nil
        end()
        completion(events, lastEventID, reset)
    }
}
