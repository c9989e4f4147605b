import HeraldCore
import NIOCore

/// One open event stream: the channel handler that owns the socket once the response head
/// is out, and at the same time the subscriber record its shard indexes.
///
/// It is deliberately small (a few words and the filter) because a server holds hundreds of
/// thousands of them: no task, no async stream, no closure, no timer per stream. Everything
/// here is touched only on the channel's event loop, by the handler itself or its shard.
final class StreamConnection: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    unowned let shard: Shard
    let token: String
    /// The subscription topics as requested (for `/clients`).
    let topics: [String]
    let filter: TopicFilter
    let chunked: Bool
    /// Milliseconds since 1970 when the stream opened.
    let connectedAt: Int64
    private(set) var context: ChannelHandlerContext?
    /// The channel's core, for the per-event write and flush. The stream handler is first in
    /// its pipeline, so a write through its context only passes the head handler on the way
    /// to the same `write0`; calling the core directly skips that hop and its reference
    /// counting, which a profile of 1 000 streams at 100 events/s put at ~6 % of the CPU
    /// (one write and one flush per stream per event).
    private var core: (any ChannelCore)?

    /// Highest id this stream has been sent (or, while replaying, examined). Live delivery
    /// skips ids at or below it, which also de-duplicates events with several topics.
    var cursor: Int64
    /// Highest id actually written to this stream, nil before the first.
    var lastSentID: Int64?
    /// While true the stream is catching up from history, paced by the socket, and live
    /// delivery leaves it alone.
    var replaying = false
    /// During the retained phase of a stream's start (the retained events with ids up to
    /// `cursor` come first, paced like a replay): the position reached among them;
    /// ``notRetaining`` otherwise. (Plain `Int64`s with sentinels: an optional would cost
    /// each of a million streams 8 more bytes of padding.)
    var retainedPosition: Int64 = StreamConnection.notRetaining
    /// The position up to which this stream has been sent the retained state (`.min`: never).
    /// After a reset only what changed since is sent again, so a slow client of a large
    /// retained set is not sent all of it over and over.
    var retainedThrough: Int64 = .min
    static let notRetaining = Int64.max
    var closed = false
    /// Whether the stream is in the shard's list of streams to flush after a batch.
    var awaitingFlush = false

    // Keep-alive list links and the time of the last write (maintained by the shard).
    var lastWrite: NIODeadline
    var older: StreamConnection?
    var newer: StreamConnection?

    init(shard: Shard, token: String, topics: [String], filter: TopicFilter, chunked: Bool,
         connectedAt: Int64, cursor: Int64, now: NIODeadline) {
        self.shard = shard
        self.token = token
        self.topics = topics
        self.filter = filter
        self.chunked = chunked
        self.connectedAt = connectedAt
        self.cursor = cursor
        self.lastWrite = now
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.core = context.channel._channelCore
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        self.core = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // A stream only listens for the peer closing; whatever else the client sends (a
        // pipelined request it should not have sent) is dropped.
    }

    func channelInactive(context: ChannelHandlerContext) {
        shard.remove(self)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Resets and broken pipes end up here; the close that follows unregisters us.
        context.close(promise: nil)
    }

    @inline(__always)
    func write(_ buffer: ByteBuffer) {
        core?.write0(NIOAny(buffer), promise: nil)
    }

    func write(_ buffer: ByteBuffer, promise: EventLoopPromise<Void>?) {
        guard let context else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        context.write(NIOAny(buffer), promise: promise)
    }

    func flush() {
        core?.flush0()
    }

    var isWritable: Bool { context?.channel.isWritable ?? false }

    /// Bytes written to the channel but not yet to the socket.
    var queuedBytes: Int {
        guard let channel = context?.channel, let options = channel.syncOptions else { return 0 }
        return (try? options.getOption(ChannelOptions.bufferedWritableBytes)) ?? 0
    }

    /// Closes the stream; `graceful` ends a chunked body properly first.
    func close(graceful: Bool) {
        guard !closed, let context else { return }
        closed = true
        if graceful {
            // Let what is queued go out, end a chunked body properly, then close.
            let last = chunked ? context.channel.allocator.buffer(staticString: WireFormat.lastChunk)
                : context.channel.allocator.buffer(capacity: 0)
            context.writeAndFlush(NIOAny(last)).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        } else {
            context.close(promise: nil)
        }
    }
}
