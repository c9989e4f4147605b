import Foundation
@testable import HeraldServer
import NIOCore
import NIOEmbedded
import NIOHTTP1
import NIOPosix
import Testing

/// The HTTP/1.1 handler on an `EmbeddedChannel`: real NIO codecs and Herald's handler, no
/// socket, and time moved by hand, so the timeouts are tested exactly, without waiting.
@Suite("HTTPHandler on EmbeddedChannel: answers, keep-alive, timeouts, unwanted bodies")
struct HTTPHandlerEmbeddedTests {
    struct Harness {
        let channel: EmbeddedChannel
        let pool: NIOThreadPool
        let metrics: HeraldMetrics

        /// - Parameter fastPath: with the publish fast path in front of the decoder, as the
        ///   server installs it with the memory store.
        init(fastPath: Bool = false, _ configure: (inout HeraldConfiguration) -> Void = { _ in }) throws {
            var configuration = HeraldConfiguration()
            configuration.logger = TestServer.quietLogger()
            configuration.publicDirectory = "/nonexistent-herald-public"
            configure(&configuration)
            let metrics = HeraldMetrics()
            self.metrics = metrics
            let hub = Hub(store: MemoryStore(startingAfter: 1000, allocator: ByteBufferAllocator()), capacity: 100,
                          startingAfter: 1000, maxRetained: 10, metrics: metrics)
            pool = NIOThreadPool(numberOfThreads: 1)
            let server = ServerContext(configuration: configuration, hub: hub, metrics: metrics, fileThreadPool: pool)
            channel = EmbeddedChannel()
            let responders = Responders(server: server)
            let handlers = try HTTP1Handlers.install(
                on: channel, maxHeaderBytes: configuration.maxHeaderBytes,
                fastPath: fastPath ? PublishFastPath(server: server, responders: responders) : nil)
            try channel.pipeline.syncOperations.addHandler(HTTPHandler(server: server, responders: responders, handlers: handlers))
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 40_000)).wait()
        }

        func send(_ text: String) throws {
            try channel.writeInbound(ByteBuffer(string: text))
        }

        /// Everything written to the socket so far, as text.
        func output() throws -> String {
            var text = ""
            while let buffer = try channel.readOutbound(as: ByteBuffer.self) {
                text += String(buffer: buffer)
            }
            return text
        }

        var isOutputShut: Bool { !channel.isActive }

        func advance(by amount: TimeAmount) {
            channel.embeddedEventLoop.advanceTime(by: amount)
        }

        func finish() {
            _ = try? channel.finish()
        }

        /// Requests read and answered by the fast path so far.
        var fastPathCount: Int {
            let text = String(decoding: metrics.render(), as: UTF8.self)
            guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("herald_publish_fast_path_requests_total ") }) else { return 0 }
            return Int(Double(line.split(separator: " ")[1]) ?? -1)
        }
    }

    static let publish = "POST /events?topic=a HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"

    @Test("Pipelined requests are answered in order on one kept connection")
    func pipelining() throws {
        let harness = try Harness()
        defer { harness.finish() }
        try harness.send("GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nPUT /health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\nGET /nope/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        harness.channel.embeddedEventLoop.run()
        let text = try harness.output()
        let statuses = text.components(separatedBy: "HTTP/1.1 ").dropFirst().map { $0.prefix(3) }
        #expect(statuses == ["200", "405", "200"] || statuses == ["200", "405", "404"], "\(text)")
        #expect(text.contains("{\"status\":\"ok\"}\n"))
        #expect(!text.lowercased().contains("connection: close"))
        #expect(harness.channel.isActive)
    }

    /// A harness with a 10 s head timeout and a 30 s body timeout, for the body-timer tests.
    static func bodyTimed(fastPath: Bool) throws -> Harness {
        try Harness(fastPath: fastPath) {
            $0.requestHeadTimeout = .seconds(10)
            $0.requestBodyTimeout = .seconds(30)
        }
    }

    @Test("A connection that sends no complete head gets 408 after exactly the head timeout")
    func headTimeout() throws {
        let harness = try Harness { $0.requestHeadTimeout = .seconds(10) }
        defer { harness.finish() }
        try harness.send("GET /health HTTP/1.1\r\nHost: 127")
        harness.advance(by: .milliseconds(9_999))
        #expect(try harness.output().isEmpty)
        harness.advance(by: .milliseconds(1))
        let text = try harness.output()
        #expect(text.hasPrefix("HTTP/1.1 408 Request Timeout"), "\(text)")
        #expect(text.contains("Connection: close"))
    }

    @Test("Keep-alive re-arms the head timer after each answer (a publish: on the fast path too)", arguments: [false, true])
    func keepAliveRearms(fastPath: Bool) throws {
        let harness = try Harness(fastPath: fastPath) { $0.requestHeadTimeout = .seconds(10) }
        defer { harness.finish() }
        harness.advance(by: .seconds(8))
        try harness.send(Self.publish)
        #expect(try harness.output().hasPrefix("HTTP/1.1 200"))
        #expect(harness.fastPathCount == (fastPath ? 1 : 0))
        harness.advance(by: .seconds(8)) // 16 s after connecting, 8 s after the answer
        #expect(try harness.output().isEmpty)
        harness.advance(by: .seconds(2))
        #expect(try harness.output().hasPrefix("HTTP/1.1 408"))
    }

    @Test("A body that stalls is answered 408 after the body timeout (not the head timeout) on either path", arguments: [false, true])
    func bodyTimeout(fastPath: Bool) throws {
        let harness = try Self.bodyTimed(fastPath: fastPath)
        defer { harness.finish() }
        harness.advance(by: .seconds(9)) // the head comes just within its limit
        try harness.send("POST /events?topic=a HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\nabc")
        harness.advance(by: .seconds(29))
        #expect(try harness.output().isEmpty)
        harness.advance(by: .seconds(1))
        let text = try harness.output()
        #expect(text.hasPrefix("HTTP/1.1 408"), "\(text)")
        #expect(text.contains("body did not arrive within 30 s"), "\(text)")
    }

    @Test("A publish in pieces within the body timeout is read whole and answered, on either path", arguments: [false, true])
    func bodyInPieces(fastPath: Bool) throws {
        let harness = try Self.bodyTimed(fastPath: fastPath)
        defer { harness.finish() }
        try harness.send("POST /events?topic=a HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/pl")
        harness.advance(by: .seconds(5))
        try harness.send("ain\r\nContent-Length: 10\r\n\r\nabc")
        harness.advance(by: .seconds(20)) // past the head timeout: the head is in, the body's limit applies
        #expect(try harness.output().isEmpty)
        try harness.send("defghij")
        let text = try harness.output()
        #expect(text.hasPrefix("HTTP/1.1 200 OK"), "\(text)")
        #expect(text.contains("\"ids\":["))
        #expect(harness.fastPathCount == (fastPath ? 1 : 0))
        // And the connection is idle again: the head timer runs from the answer.
        harness.advance(by: .seconds(10))
        #expect(try harness.output().hasPrefix("HTTP/1.1 408"))
    }

    @Test("A body trickled past the fast path's patience goes to the general path with its first deadline, not a new one")
    func trickledBodyKeepsItsDeadline() throws {
        let harness = try Self.bodyTimed(fastPath: true)
        defer { harness.finish() }
        try harness.send("POST /events?topic=a HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\na")
        for _ in 0..<PublishFastPath.maxPieces {
            harness.advance(by: .seconds(1))
            try harness.send("b")
        }
        // Handed over 16 s after the head; its body's limit still runs from the head.
        harness.advance(by: .milliseconds(13_999))
        #expect(try harness.output().isEmpty)
        harness.advance(by: .milliseconds(1))
        let text = try harness.output()
        #expect(text.hasPrefix("HTTP/1.1 408"), "\(text)")
        #expect(text.contains("body did not arrive within 30 s"), "\(text)")
        #expect(harness.fastPathCount == 0)
    }

    @Test("Pipelined publishes and a request the fast path does not take: answered in order")
    func fastPathPipelining() throws {
        let harness = try Harness(fastPath: true)
        defer { harness.finish() }
        try harness.send(Self.publish + Self.publish + "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" + Self.publish)
        harness.channel.embeddedEventLoop.run()
        let text = try harness.output()
        let statuses = text.components(separatedBy: "HTTP/1.1 ").dropFirst().map { $0.prefix(3) }
        #expect(statuses == ["200", "200", "200", "200"], "\(text)")
        #expect(text.components(separatedBy: "\"ids\"").count == 4, "\(text)")
        #expect(text.contains("{\"status\":\"ok\"}\n"))
        #expect(harness.fastPathCount == 2)
        #expect(harness.channel.isActive)
    }

    @Test("A body on a route that takes none: answered from the head, closed after, no 408 spliced in later")
    func unwantedBody() throws {
        let harness = try Harness { $0.requestBodyTimeout = .seconds(30) }
        defer { harness.finish() }
        try harness.send("GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n\r\nabc")
        let text = try harness.output()
        #expect(text.hasPrefix("HTTP/1.1 200"), "\(text)")
        #expect(text.contains("Connection: close"))
        try harness.send(String(repeating: "x", count: 10_000))
        harness.advance(by: .seconds(31))
        #expect(!(try harness.output()).contains("HTTP/1.1 408"))
    }

    @Test("Garbage after a valid request: its answer first, then 400 and close")
    func garbageAfterRequest() throws {
        let harness = try Harness()
        defer { harness.finish() }
        try? harness.send("GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n\u{1}\u{2} nonsense\r\n\r\n")
        harness.channel.embeddedEventLoop.run()
        let text = try harness.output()
        let first = text.range(of: "HTTP/1.1 200")
        let second = text.range(of: "HTTP/1.1 400")
        #expect(first != nil && second != nil && first!.lowerBound < second!.lowerBound, "\(text)")
    }
}
