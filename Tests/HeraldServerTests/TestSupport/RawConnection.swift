import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A plain TCP connection to the server: send any bytes (well-formed or not), collect
/// everything that comes back, notice the close. The HTTP and SSE parsing in the tests is
/// done on top of it, so the server is exercised through real sockets only.
final class RawConnection: Sendable {
    private let channel: any Channel
    private let collector: Collector

    final class Collector: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        struct State {
            var bytes: [UInt8] = []
            var closed = false
        }
        let state = NIOLockedValueBox(State())
        let reading: Bool
        init(reading: Bool) { self.reading = reading }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let buffer = unwrapInboundIn(data)
            state.withLockedValue { $0.bytes.append(contentsOf: buffer.readableBytesView) }
        }

        func channelInactive(context: ChannelHandlerContext) {
            state.withLockedValue { $0.closed = true }
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            context.close(promise: nil)
        }
    }

    private init(channel: any Channel, collector: Collector) {
        self.channel = channel
        self.collector = collector
    }

    static let group = MultiThreadedEventLoopGroup.singleton

    /// Connects to `127.0.0.1:port`. With `reading: false` the connection never reads (a
    /// client that stops consuming: the kernel buffers fill and the server sees backlog).
    /// `sending` is written on the event loop as soon as the connection is up, not after the
    /// test's task resumes: under a loaded parallel run that can be later than a short
    /// request-head timeout, and the server would rightly have answered 408 and closed.
    static func connect(port: Int, reading: Bool = true, receiveBuffer: Int? = nil, sending initial: [UInt8] = []) async throws -> RawConnection {
        let collector = Collector(reading: reading)
        var bootstrap = ClientBootstrap(group: group)
            .channelOption(.autoRead, value: reading)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(collector) }
            }
        if let receiveBuffer {
            bootstrap = bootstrap.channelOption(.socketOption(.so_rcvbuf), value: SocketOptionValue(receiveBuffer))
        }
        let channel = try await bootstrap.connect(host: "127.0.0.1", port: port).flatMap { channel in
            guard !initial.isEmpty else { return channel.eventLoop.makeSucceededFuture(channel) }
            var buffer = channel.allocator.buffer(capacity: initial.count)
            buffer.writeBytes(initial)
            return channel.writeAndFlush(buffer).map { channel }
        }.get()
        return RawConnection(channel: channel, collector: collector)
    }

    func send(_ text: String) async throws {
        try await send(Array(text.utf8))
    }

    func send(_ bytes: [UInt8]) async throws {
        var buffer = channel.allocator.buffer(capacity: bytes.count)
        buffer.writeBytes(bytes)
        try await channel.writeAndFlush(buffer).get()
    }

    var received: [UInt8] { collector.state.withLockedValue { $0.bytes } }
    var isClosed: Bool { collector.state.withLockedValue { $0.closed } }

    /// Waits until `condition` holds for the bytes received so far (and the closed flag).
    @discardableResult
    func waitUntil(_ what: String, timeout: Duration = .seconds(10), _ condition: ([UInt8], Bool) -> Bool) async throws -> [UInt8] {
        let deadline = ContinuousClock.now + timeout
        while true {
            let (bytes, closed) = collector.state.withLockedValue { ($0.bytes, $0.closed) }
            if condition(bytes, closed) { return bytes }
            if ContinuousClock.now >= deadline { throw TestTimeout(what: what) }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    /// Waits for the server to close the connection and returns everything received.
    @discardableResult
    func waitForClose(timeout: Duration = .seconds(10)) async throws -> [UInt8] {
        try await waitUntil("the connection to close", timeout: timeout) { _, closed in closed }
    }

    /// Starts reading on a connection opened with `reading: false`.
    func startReading() async throws {
        try await channel.setOption(.autoRead, value: true).get()
        channel.read()
    }

    func close() async {
        try? await channel.close()
    }
}
