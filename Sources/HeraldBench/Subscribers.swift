import Histogram
import NIOCore
import NIOPosix

/// Per-event-loop counters and latency histogram. Each subscriber handler touches only the
/// one of its own loop, so recording needs no lock; the totals are read on each loop at the end.
final class LoopStats: @unchecked Sendable {
    // Confined to its event loop (see above).
    var latencyMicros = Histogram<UInt64>(highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: .three)
    var deliveries = 0
    var established = 0
    var failed = 0
    var lastDeliveryNanos: UInt64 = 0
}

/// What one stream received: a bitmap over the publisher's sequence numbers, so missing and
/// duplicated events can be counted exactly. Loop-confined like `LoopStats`.
final class StreamRecord: @unchecked Sendable {
    let index: Int
    let topic: Int
    var words: [UInt64] = []
    var received = 0
    var duplicates = 0
    var lastID: [UInt8] = []
    var established = false
    var channel: (any Channel)?

    init(index: Int, topic: Int) {
        self.index = index
        self.topic = topic
    }

    @inline(__always)
    func mark(_ seq: Int) {
        let word = seq >> 6
        if word >= words.count { words.append(contentsOf: repeatElement(0, count: word - words.count + 64)) }
        let bit = UInt64(1) << UInt64(seq & 63)
        if words[word] & bit != 0 {
            duplicates += 1
        } else {
            words[word] |= bit
            received += 1
        }
    }

    func has(_ seq: Int) -> Bool {
        let word = seq >> 6
        return word < words.count && words[word] & (UInt64(1) << UInt64(seq & 63)) != 0
    }
}

/// The channel handler of one subscriber connection.
final class SubscriberHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let record: StreamRecord
    let stats: LoopStats
    let request: ByteBuffer
    var reader = StreamReader()

    init(record: StreamRecord, stats: LoopStats, request: ByteBuffer) {
        self.record = record
        self.stats = stats
        self.request = request
    }

    func channelActive(context: ChannelHandlerContext) {
        record.channel = context.channel
        context.writeAndFlush(wrapOutboundOut(request), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        let record = self.record
        let stats = self.stats
        reader.feed(buffer, onHead: { status in
            if status == 200 {
                record.established = true
                stats.established += 1
            } else {
                stats.failed += 1
            }
        }, onEvent: { seq, sent in
            let now = Clock.nowNanoseconds()
            record.mark(seq)
            stats.deliveries += 1
            stats.lastDeliveryNanos = now
            _ = stats.latencyMicros.record(now > sent ? (now - sent) / 1000 : 0)
        })
        record.lastID = reader.lastID
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !record.established && reader.status == 0 { stats.failed += 1 }
        record.channel = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
