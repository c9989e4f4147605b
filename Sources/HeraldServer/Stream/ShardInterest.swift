import HeraldCore

/// What the streams and polls of one shard subscribe to, kept by the hub under its lock so
/// that a publish can tell which shards to wake. It may say "wanted" for an event no one on
/// the shard matches (a wasted wake-up), never the reverse: a stream's interest is added in
/// the same lock section that fixes where the stream starts, and removed only once it is gone.
struct ShardInterest {
    /// Exact topics and direct-message keys (``LogKeys/direct(_:)``), with how many
    /// subscriptions on the shard name each.
    private var keys: [TopicKey: Int] = [:]
    /// Subscriptions that a key lookup cannot answer for (topic prefixes, `*`) and polls in
    /// progress (which read what the shard delivers while they are prepared over several
    /// ticks): while any exists, the shard wants everything.
    private var broad = 0
    /// The newest id the shard has pulled, or been let skip because it wanted none of the
    /// events up to it.
    var pulledThrough: Int64
    /// A wake-up was sent since the shard last pulled: it will pull everything new.
    var wakePending = false

    /// Batches larger than this wake every shard rather than being examined event by event
    /// under the hub's lock (a burst costs each shard one wake-up anyway).
    static let examinedEvents = 64

    init(pulledThrough: Int64) {
        self.pulledThrough = pulledThrough
    }

    /// What one stream or poll adds.
    enum Registration {
        case keys([TopicKey])
        case everything

        /// A stream's: its exact topics and its direct-message key, or everything when it
        /// has a prefix or `*`.
        init(streamFilter filter: TopicFilter) {
            guard filter.isExactOnly else {
                self = .everything
                return
            }
            self = .keys(filter.logKeys.map(TopicKey.init))
        }
    }

    mutating func add(_ registration: Registration) {
        switch registration {
        case .everything:
            broad += 1
        case .keys(let list):
            for key in list { keys[key, default: 0] += 1 }
        }
    }

    mutating func remove(_ registration: Registration) {
        switch registration {
        case .everything:
            broad -= 1
        case .keys(let list):
            for key in list {
                guard let count = keys[key] else { continue }
                keys[key] = count > 1 ? count - 1 : nil
            }
        }
    }

    /// Whether a subscription on the shard may match one of the `count` events of `batches`.
    func wants(_ batches: [CommittedBatch], count: Int) -> Bool {
        if broad > 0 || count > Self.examinedEvents { return true }
        if keys.isEmpty { return false }
        for batch in batches {
            for event in batch.events {
                if let client = event.client {
                    if keys[TopicKey(LogKeys.direct(client))] != nil { return true }
                    continue
                }
                for topic in event.topics where keys[TopicKey(topic)] != nil { return true }
            }
        }
        return false
    }
}
