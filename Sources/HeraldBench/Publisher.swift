import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL

/// Publishes `<seq> <send-ns> <padding>` bodies at a fixed rate over a few keep-alive
/// connections (pipelined, with a cap on requests in flight), and records which sequence
/// numbers the server acknowledged with a 2xx.
final class Publisher: @unchecked Sendable {
    struct Target: Sendable {
        var host: String
        var port: Int
        /// Path template with `{topic}`.
        var pathTemplate: String
        var headers: [(String, String)]
        var topics: [String]
        var payloadBytes: Int
        /// TLS client context (`--tls`), or nil for cleartext.
        var tls: NIOSSLContext? = nil
    }

    let target: Target
    let loop: any EventLoop
    // Loop-confined state (everything below is touched on `loop` only).
    private var connections: [PublishConnection] = []
    private var nextSeq = 0
    private var startNanos: UInt64 = 0
    private var timer: RepeatedTask?
    private let acknowledged = NIOLockedValueBox<[Int]>([])
    private let failures = NIOLockedValueBox(0)

    init(target: Target, loop: any EventLoop) {
        self.target = target
        self.loop = loop
    }

    func connect(count: Int) async throws {
        for _ in 0..<count {
            let connection = PublishConnection(publisher: self)
            _ = try await ClientBootstrap(group: loop)
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer { [tls = target.tls] channel in
                    channel.eventLoop.makeCompletedFuture {
                        if let tls { try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: tls, serverHostname: nil)) }
                        try channel.pipeline.syncOperations.addHandler(connection)
                    }
                }
                .connect(host: target.host, port: target.port).get()
            try await loop.submit { self.connections.append(connection) }.get()
        }
    }

    /// Sequence numbers start at `firstSeq`; publishes `rate` per second for `seconds`.
    func run(rate: Double, seconds: Double, firstSeq: Int) async throws {
        let total = Int(rate * seconds)
        let done = loop.makePromise(of: Void.self)
        try await loop.submit {
            self.nextSeq = firstSeq
            self.startNanos = Clock.nowNanoseconds()
            self.timer = self.loop.scheduleRepeatedTask(initialDelay: .zero, delay: .milliseconds(1)) { task in
                let elapsed = Double(Clock.nowNanoseconds() - self.startNanos) / 1e9
                let due = min(total, Int(elapsed * rate) + 1)
                while self.nextSeq - firstSeq < due {
                    guard let connection = self.connections.min(by: { $0.inFlight < $1.inFlight }), connection.inFlight < 256 else { break }
                    connection.send(seq: self.nextSeq)
                    self.nextSeq += 1
                }
                if self.nextSeq - firstSeq >= total {
                    task.cancel()
                    done.succeed(())
                }
            }
        }.get()
        try await done.futureResult.get()
        // Wait for the answers.
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            let pending = try await loop.submit { self.connections.reduce(0) { $0 + $1.inFlight } }.get()
            if pending == 0 { break }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    var acknowledgedSeqs: [Int] { acknowledged.withLockedValue { $0 } }
    var failureCount: Int { failures.withLockedValue { $0 } }

    func answered(seq: Int, ok: Bool) {
        if ok { acknowledged.withLockedValue { $0.append(seq) } } else { failures.withLockedValue { $0 += 1 } }
    }

    func close() async {
        let connections = try? await loop.submit { self.connections.compactMap(\.channel) }.get()
        for channel in connections ?? [] { try? await channel.close() }
    }

    func body(for seq: Int) -> String {
        var text = "\(seq) \(Clock.nowNanoseconds()) "
        if text.utf8.count < target.payloadBytes {
            text += String(repeating: "x", count: target.payloadBytes - text.utf8.count)
        }
        return text
    }
}

/// One keep-alive publishing connection; answers are matched to requests in order.
final class PublishConnection: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    unowned let publisher: Publisher
    var channel: (any Channel)?
    private var context: ChannelHandlerContext?
    private var pending: [Int] = []
    private var pendingStart = 0
    private var buffer: [UInt8] = []

    init(publisher: Publisher) {
        self.publisher = publisher
    }

    var inFlight: Int { pending.count - pendingStart }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.channel = context.channel
    }

    func send(seq: Int) {
        guard let context else {
            publisher.answered(seq: seq, ok: false)
            return
        }
        let target = publisher.target
        let topic = target.topics[seq % target.topics.count]
        let body = publisher.body(for: seq)
        var head = "POST \(target.pathTemplate.replacingOccurrences(of: "{topic}", with: topic)) HTTP/1.1\r\nHost: \(target.host)\r\n"
        for (name, value) in target.headers { head += "\(name): \(value)\r\n" }
        head += "Content-Type: text/plain\r\nContent-Length: \(body.utf8.count)\r\n\r\n"
        var out = context.channel.allocator.buffer(capacity: head.utf8.count + body.utf8.count)
        out.writeString(head)
        out.writeString(body)
        pending.append(seq)
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data)
        buffer.append(contentsOf: bytes.readableBytesView)
        // Parse as many complete responses as there are (Content-Length bodies).
        while true {
            guard let headEnd = find(buffer) else { break }
            let head = String(decoding: buffer[..<headEnd], as: UTF8.self)
            let status = Int(head.split(separator: " ").dropFirst().first ?? "") ?? 0
            var length = 0
            for line in head.split(separator: "\r\n") where line.lowercased().hasPrefix("content-length:") {
                length = Int(line.dropFirst(15).trimmingCharacters(in: " ")) ?? 0
            }
            guard buffer.count >= headEnd + 4 + length else { break }
            buffer.removeFirst(headEnd + 4 + length)
            guard pendingStart < pending.count else { continue }
            let seq = pending[pendingStart]
            pendingStart += 1
            if pendingStart > 4096 {
                pending.removeFirst(pendingStart)
                pendingStart = 0
            }
            publisher.answered(seq: seq, ok: (200..<300).contains(status))
        }
    }

    private func find(_ bytes: [UInt8]) -> Int? {
        guard bytes.count >= 4 else { return nil }
        for index in 0...(bytes.count - 4) where bytes[index] == 13 && bytes[index + 1] == 10 && bytes[index + 2] == 13 && bytes[index + 3] == 10 {
            return index
        }
        return nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        for seq in pending[pendingStart...] { publisher.answered(seq: seq, ok: false) }
        pending = []
        pendingStart = 0
        self.context = nil
    }
}

extension Substring {
    func trimmingCharacters(in set: Character) -> String {
        var slice = self
        while slice.first == set { slice.removeFirst() }
        while slice.last == set { slice.removeLast() }
        return String(slice)
    }
}

