import Foundation
import HeraldCore
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing

/// The fast path's hand-written request reader (``PlainPostRequest``): what it takes, what it
/// leaves to the general path, and, for generated and mutated requests, that whatever it
/// takes NIO's own HTTP parser reads exactly the same way (method, target, header lines,
/// body, and where the request ends). A disagreement there would be request smuggling.
@Suite("PlainPostRequest: the publish fast path's reader agrees with NIO's parser")
struct PlainPostRequestTests {
    static func scan(_ text: String, maxHeadBytes: Int = 16_384, maxBodyBytes: Int = 1_048_576) -> PlainPostRequest.Scan {
        scan(Array(text.utf8), maxHeadBytes: maxHeadBytes, maxBodyBytes: maxBodyBytes)
    }

    static func scan(_ bytes: [UInt8], maxHeadBytes: Int = 16_384, maxBodyBytes: Int = 1_048_576) -> PlainPostRequest.Scan {
        bytes.withUnsafeBytes { PlainPostRequest.scan($0, maxHeadBytes: maxHeadBytes, maxBodyBytes: maxBodyBytes) }
    }

    static let plain = "POST /events?topic=a HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"

    @Test("A plain publish is read: target, header lines in order, body, end")
    func plainPublish() throws {
        guard case .request(let request) = Self.scan(Self.plain) else {
            Issue.record("not read")
            return
        }
        #expect(request.target == "/events?topic=a")
        #expect(request.path == "/events")
        #expect(request.fields.map(\.name) == ["Host", "Content-Type", "Content-Length"])
        #expect(request.fields.map(\.value) == ["127.0.0.1", "text/plain", "5"])
        #expect(request.bodyLength == 5)
        #expect(request.end == Self.plain.utf8.count)
        #expect(Array(Self.plain.utf8)[request.bodyOffset...] == Array("hello".utf8)[...])
    }

    @Test("Every prefix of a plain publish is incomplete (the head's end known once it is in)")
    func prefixes() {
        let bytes = Array(Self.plain.utf8)
        let headEnd = bytes.count - 5
        for length in 0..<bytes.count {
            guard case .incomplete(let head) = Self.scan(Array(bytes[..<length])) else {
                Issue.record("prefix of \(length) bytes not incomplete")
                continue
            }
            #expect((head != nil) == (length >= headEnd), "\(length)")
            if let head { #expect(head.target == "/events?topic=a" && head.bodyLength == 5 && head.end == bytes.count) }
        }
    }

    @Test("A pipelined request after it starts where this one ends")
    func pipelined() {
        let two = Self.plain + "GET /health HTTP/1.1\r\n\r\n"
        guard case .request(let request) = Self.scan(two) else {
            Issue.record("not read")
            return
        }
        #expect(request.end == Self.plain.utf8.count)
    }

    @Test("Everything outside the plain shape is left to the general path")
    func leftAlone() {
        let cases: [String] = [
            "GET /events HTTP/1.1\r\n\r\n",
            "post /events HTTP/1.1\r\n\r\n",
            "POST  /events HTTP/1.1\r\n\r\n",
            "POST events HTTP/1.1\r\n\r\n",
            "POST /events HTTP/1.0\r\n\r\n",
            "POST /events HTTP/1.1\n\n",
            "POST /ev\u{7F}ents HTTP/1.1\r\n\r\n",
            "POST /events HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "POST /events HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            "POST /events HTTP/1.1\r\nContent-Length: +1\r\n\r\nx",
            "POST /events HTTP/1.1\r\nContent-Length: 1 1\r\n\r\nx",
            "POST /events HTTP/1.1\r\nContent-Length:\r\n\r\n",
            "POST /events HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx",
            "POST /events HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
            "POST /events HTTP/1.1\r\nConnection: close\r\n\r\n",
            "POST /events HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\n\r\n",
            "POST /events HTTP/1.1\r\nIdempotency-Key: k\r\n\r\n",
            "POST /events HTTP/1.1\r\nProxy-Connection: close\r\n\r\n",
            "POST /events HTTP/1.1\r\nproxy-connection: keep-alive\r\n\r\n",
            "POST /events HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "POST /events HTTP/1.1\r\nHost: a,b\r\n\r\n",
            "POST /events HTTP/1.1\r\nHost : a\r\n\r\n",
            "POST /events HTTP/1.1\r\n: a\r\n\r\n",
            "POST /events HTTP/1.1\r\nX(: a\r\n\r\n",
            "POST /events HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
            "POST /events HTTP/1.1\r\nX: a\rb\r\n\r\n",
            "POST /events HTTP/1.1\r\nX: a\nb\r\n\r\n",
            "POST /events HTTP/1.1\r\nX: a\0b\r\n\r\n",
            "POST /events HTTP/1.1\r\nX: caf\u{E9}\r\n\r\n",
            "POST /events HTTP/1.1\r\nX: a\r\r\n\r\n",
            "POST /events HTTP/1.1\r\n\rx",
        ]
        for text in cases {
            guard case .other = Self.scan(text) else {
                Issue.record("taken: \(text.debugDescription)")
                continue
            }
        }
    }

    @Test("Limits: head, body, target and header count")
    func limits() {
        #expect(isOther(Self.scan(Self.plain, maxHeadBytes: 40)))
        #expect(isOther(Self.scan(Self.plain, maxBodyBytes: 4)))
        let longTarget = "POST /events?x=" + String(repeating: "a", count: 8200) + " HTTP/1.1\r\n\r\n"
        #expect(isOther(Self.scan(longTarget, maxHeadBytes: 100_000)))
        let manyFields = "POST /events HTTP/1.1\r\n" + String(repeating: "X: 1\r\n", count: 65) + "\r\n"
        #expect(isOther(Self.scan(manyFields)))
        // A head still arriving past its limit is not waited for.
        #expect(isOther(Self.scan("POST /events HTTP/1.1\r\nX: " + String(repeating: "a", count: 200), maxHeadBytes: 100)))
    }

    func isOther(_ scan: PlainPostRequest.Scan) -> Bool {
        if case .other = scan { return true }
        return false
    }

    // MARK: Against NIO's parser

    static let names = ["Host", "host", "Content-Type", "Content-Length", "content-length", "Authorization", "Origin", "X-A", "Sec-Fetch-Site",
                        "Transfer-Encoding", "Connection", "Proxy-Connection", "Expect", "Idempotency-Key", "Upgrade", "Accept", "X_B",
                         "x!#$%&'*+-.^_`|~1", "Keep-Alive", "TE", "Trailer"]
    static let values = ["", " ", "127.0.0.1", "localhost:8080", "text/plain", "0", "5", "12", "007", "+5", "5, 5", "chunked", "keep-alive",
                         "close", "Keep-Alive", "100-continue", "a\tb", "  padded  ", "\t", "Bearer k", "http://o.example", "a,b"]
    static let fragments: [[UInt8]] = [
        "\r\n", "\n", "\r", "\0", " ", "\t", ":", "\r\n\r\n", "Content-Length: 3\r\n", "Transfer-Encoding: chunked\r\n", "POST ",
        "HTTP/1.1", "HTTP/1.0", "/", "?", "é", "\u{7F}",
    ].map { Array($0.utf8) } + [[0xFF], [0x80], [0x7F]]

    static func generate(using rng: inout SplitMix64) -> [UInt8] {
        var text = "POST /events?topic=\(Int.random(in: 0...99, using: &rng)) HTTP/1.1\r\n"
        var bodyLength = Int.random(in: 0...12, using: &rng)
        for _ in 0..<Int.random(in: 0...6, using: &rng) {
            let name = names.randomElement(using: &rng)!
            var value = values.randomElement(using: &rng)!
            if name.lowercased() == "content-length" && Bool.random(using: &rng) { value = String(bodyLength) }
            text += "\(name):\(Bool.random(using: &rng) ? " " : "")\(value)\r\n"
        }
        if Int.random(in: 0..<4, using: &rng) > 0 { text += "Content-Length: \(bodyLength)\r\n" }
        text += "\r\n"
        if Int.random(in: 0..<5, using: &rng) == 0 { bodyLength = Int.random(in: 0...14, using: &rng) }
        var bytes = Array(text.utf8) + (0..<bodyLength).map { _ in UInt8.random(in: 0x20...0x7E, using: &rng) }
        if Int.random(in: 0..<4, using: &rng) == 0 {
            bytes += Array("POST /events HTTP/1.1\r\nContent-Length: 1\r\n\r\nx".utf8) // pipelined
        }
        // Mutations: bytes changed, fragments inserted, ranges cut.
        for _ in 0..<Int.random(in: 0...3, using: &rng) where !bytes.isEmpty {
            let at = Int.random(in: 0..<bytes.count, using: &rng)
            switch Int.random(in: 0..<3, using: &rng) {
            case 0: bytes[at] = UInt8.random(in: 0...255, using: &rng)
            case 1: bytes.insert(contentsOf: fragments.randomElement(using: &rng)!, at: at)
            default: bytes.removeSubrange(at..<min(bytes.count, at + Int.random(in: 1...4, using: &rng)))
            }
        }
        return bytes
    }

    /// What NIO's decoder makes of `bytes`: the parts of the first request, or the error.
    static func nioParts(_ bytes: [UInt8]) -> (parts: [HTTPServerRequestPart], error: (any Error)?) {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .dropBytes)))
        defer { _ = try? channel.finish() }
        var parts: [HTTPServerRequestPart] = []
        do {
            try channel.writeInbound(ByteBuffer(bytes: bytes))
        } catch {
            while let part = try? channel.readInbound(as: HTTPServerRequestPart.self) { parts.append(part) }
            return (parts, error)
        }
        while let part = try? channel.readInbound(as: HTTPServerRequestPart.self) { parts.append(part) }
        return (parts, nil)
    }

    @Test("Generated and mutated requests: whatever the reader takes, NIO reads identically", .timeLimit(.minutes(5)))
    func agreesWithNIO() {
        let seed = ProcessInfo.processInfo.environment["CI"] != nil ? 20_261_201 : UInt64.random(in: 0...UInt64.max)
        print("PlainPostRequestTests seed \(seed)")
        var rng = SplitMix64(state: seed)
        var taken = 0
        for round in 0..<100_000 {
            let bytes = Self.generate(using: &rng)
            guard case .request(let request) = Self.scan(bytes) else { continue }
            taken += 1
            let request1 = Array(bytes[..<request.end])
            let (parts, error) = Self.nioParts(request1)
            let context = "round \(round), seed \(seed): \(String(decoding: bytes, as: UTF8.self).debugDescription)"
            #expect(error == nil, "NIO refused what the fast path took: \(String(describing: error)) — \(context)")
            guard parts.count >= 2, case .head(let head) = parts[0], case .end = parts[parts.count - 1] else {
                Issue.record("NIO did not read one whole request: \(parts) — \(context)")
                continue
            }
            #expect(head.method == .POST, "\(context)")
            #expect(head.version == .http1_1, "\(context)")
            // The fast path keeps the connection after its answer: NIO must too.
            #expect(head.isKeepAlive, "\(context)")
            #expect(head.uri == request.target, "\(context)")
            let nioFields = head.headers.map { ($0.name, $0.value) }
            #expect(nioFields.map(\.0) == request.fields.map(\.name), "\(context)")
            #expect(nioFields.map(\.1) == request.fields.map(\.value), "\(context)")
            var body: [UInt8] = []
            for part in parts.dropFirst().dropLast() {
                if case .body(let chunk) = part { body += chunk.readableBytesView }
            }
            #expect(body == Array(bytes[request.bodyOffset..<request.end]), "\(context)")
            #expect(parts.count == (request.bodyLength > 0 ? 3 : 2) || request.bodyLength > 0, "\(context)")
        }
        // The generator must reach the reader's accepting side often, or this proves little.
        #expect(taken > 10_000, "only \(taken) generated requests were taken")
    }
}
