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
    /// How this stream's bytes reach the client (see ``StreamSink``).
    private var sink = StreamSink()
    /// Whether the sink may write to the socket directly (cleartext HTTP/1.1, the stream
    /// handler first in its pipeline).
    private let direct: Bool

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
    static let notRetaining = Int64.max
    /// Whether the stream has written its first bytes. A stream written through its pipeline
    /// starts a tick after it is registered (once the HTTP handlers below it are gone); until
    /// then nothing may be written to it, so closing it just closes.
    var started = false
    /// When the subscriber's token expires (seconds since 1970), if it has one (SPEC §14).
    var expires: Double?
    var closed = false
    /// Whether the stream is in the shard's list of streams to flush after a batch.
    var awaitingFlush = false

    // Keep-alive list links and the time of the last write (maintained by the shard).
    var lastWrite: NIODeadline
    var older: StreamConnection?
    var newer: StreamConnection?

    init(shard: Shard, token: String, topics: [String], filter: TopicFilter, chunked: Bool, direct: Bool,
         connectedAt: Int64, cursor: Int64, now: NIODeadline, http2: Bool = false) {
        self.shard = shard
        if http2 { sink.frameForHTTP2() }
        self.direct = direct
        self.token = token
        self.topics = topics
        self.filter = filter
        self.chunked = chunked
        self.connectedAt = connectedAt
        self.cursor = cursor
        self.lastWrite = now
    }

    func handlerAdded(context: ChannelHandlerContext) {
        sink.attach(context, direct: direct)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        sink.detach()
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
    func write(_ buffer: ByteBuffer) { sink.write(buffer) }

    func write(_ buffer: ByteBuffer, promise: EventLoopPromise<Void>?) { sink.write(buffer, promise: promise) }

    @inline(__always)
    func flush() { sink.flush() }

    var isWritable: Bool { sink.isWritable }

    /// Bytes written to the channel but not yet to the socket.
    var queuedBytes: Int { sink.queuedBytes }

    /// Closes the stream; `graceful` lets what is queued go out and ends a chunked body
    /// properly first.
    func close(graceful: Bool) {
        guard !closed, let context = sink.context else { return }
        closed = true
        if graceful && started {
            sink.closeAfter(chunked ? context.channel.allocator.buffer(staticString: WireFormat.lastChunk)
                : context.channel.allocator.buffer(capacity: 0))
        } else {
            sink.close()
        }
    }
}
