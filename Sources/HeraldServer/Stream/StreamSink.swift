import NIOCore
import NIOHTTP2

/// How a stream's bytes reach its client: the seam between the fan-out (which hands every
/// stream the same pre-encoded event buffers) and the transport under the stream.
///
/// Two ways, chosen when the stream opens:
/// - **Direct** (cleartext HTTP/1.1, the measured fast path): the stream handler is first in
///   its pipeline and nothing below it transforms bytes, so writes and flushes go straight to
///   the channel's core (`_channelCore.write0`/`flush0`). A write through the handler's context
///   would pass only the pipeline's head handler on its way to the same `write0`; skipping
///   that hop and its reference counting measured ~5-6 % less CPU at 1 000 streams × 100
///   events/s (one write and one flush per stream per event). NIO documents `_channelCore`
///   as meant for its own use: this type is the only place Herald touches it, and only for a
///   pipeline whose first handler is the stream itself.
/// - **Through the pipeline**: every write goes through the stream handler's context, so
///   handlers below it (TLS; an HTTP/2 stream's framing) see the bytes.
///
/// `chunked` says which view of a stored event the stream takes: chunk-framed for chunked
/// HTTP/1.1, the bare SSE bytes otherwise (close-delimited HTTP/1.x, or a transport that
/// frames by itself). Both views share one buffer (see `StoredEvent`).
///
/// A value inside `StreamConnection` (no object of its own: a server holds hundreds of
/// thousands of streams); confined to the stream's event loop.
struct StreamSink {
    private(set) var context: ChannelHandlerContext?
    /// Set on the direct path only.
    private var core: (any ChannelCore)?
    /// Set on an HTTP/2 stream: its writes are wrapped as DATA frames, and its unsent bytes
    /// are counted here (an HTTP/2 stream channel cannot say: it traps on the option).
    private var http2: HTTP2Pending?

    init() {}

    /// This stream is an HTTP/2 stream (SPEC §13).
    mutating func frameForHTTP2() {
        http2 = HTTP2Pending()
    }

    /// Binds the sink to its handler's context once the handler is in the pipeline.
    mutating func attach(_ context: ChannelHandlerContext, direct: Bool) {
        self.context = context
        self.core = direct ? context.channel._channelCore : nil
    }

    mutating func detach() {
        context = nil
        core = nil
    }

    @inline(__always)
    func write(_ buffer: ByteBuffer) {
        if let core {
            core.write0(NIOAny(buffer), promise: nil)
        } else if let http2 {
            writeFrame(buffer, counter: http2, promise: nil)
        } else {
            context?.write(NIOAny(buffer), promise: nil)
        }
    }

    /// A write whose completion matters (replay pacing).
    func write(_ buffer: ByteBuffer, promise: EventLoopPromise<Void>?) {
        guard let context else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        if let http2 {
            writeFrame(buffer, counter: http2, promise: promise)
        } else {
            context.write(NIOAny(buffer), promise: promise)
        }
    }

    /// One DATA frame on an HTTP/2 stream, counted until the stream channel has passed it on.
    private func writeFrame(_ buffer: ByteBuffer, counter: HTTP2Pending, promise: EventLoopPromise<Void>?, endStream: Bool = false) {
        guard let context else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        let size = buffer.readableBytes
        counter.bytes += size
        let written = promise ?? context.eventLoop.makePromise(of: Void.self)
        written.futureResult.assumeIsolated().whenComplete { _ in counter.bytes -= size }
        context.write(NIOAny(HTTP2Frame.FramePayload.data(.init(data: .byteBuffer(buffer), endStream: endStream))), promise: written)
    }

    @inline(__always)
    func flush() {
        if let core {
            core.flush0()
        } else {
            context?.flush()
        }
    }

    /// False once unsent output is over the channel's high watermark (--max-queued-bytes).
    var isWritable: Bool { context?.channel.isWritable ?? false }

    /// Bytes written but not yet taken by the socket (on HTTP/2: by the stream's window).
    var queuedBytes: Int {
        if let http2 { return http2.bytes }
        guard let channel = context?.channel, let options = channel.syncOptions else { return 0 }
        return (try? options.getOption(ChannelOptions.bufferedWritableBytes)) ?? 0
    }

    /// Writes `last` (the end of a chunked body, or nothing) after what is queued, then closes.
    func closeAfter(_ last: ByteBuffer) {
        guard let context else { return }
        if let http2 {
            // HTTP/2: the stream ends with END_STREAM (a close alone would reset it).
            let done = context.eventLoop.makePromise(of: Void.self)
            writeFrame(last, counter: http2, promise: done, endStream: true)
            context.flush()
            done.futureResult.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
            return
        }
        context.writeAndFlush(NIOAny(last)).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }

    func close() {
        context?.close(promise: nil)
    }
}

/// The unsent bytes of one HTTP/2 event stream (a class: write completions update it).
/// Confined to the stream's event loop, like the sink.
final class HTTP2Pending: @unchecked Sendable {
    var bytes = 0
}
