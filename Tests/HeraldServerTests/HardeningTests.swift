import Foundation
import HeraldCore
import HeraldServer
import Testing

/// SPEC §16: each attack of issue 9 against a real server over sockets, while a normal
/// client keeps being served. Memory is read from /proc (the server runs in this process;
/// the attacking clients use blocking sockets whose unsent bytes sit in the kernel, not in
/// this process). The attacks would cost hundreds of MB without the fixes; the bounds leave
/// room for the other suites running beside this one.
@Suite("Hardening: hostile clients and limits (SPEC §16)", .serialized, .timeLimit(.minutes(3)))
struct HardeningTests {
    static let megabyte = 1 << 20

    /// `count` clients that send `request` and then never read (with small receive buffers).
    static func nonReaders(_ count: Int, port: Int, sending request: String) async -> [BlockingSocket] {
        await onThread {
            var sockets: [BlockingSocket] = []
            for _ in 0..<count {
                guard let socket = try? BlockingSocket(port: port) else { continue }
                socket.shrinkReceiveBuffer()
                socket.send(request)
                sockets.append(socket)
            }
            return sockets
        }
    }

    /// A normal client is still served: `/health` answers 200.
    static func expectHealthy(_ port: Int, _ what: String = "") async throws {
        let health = try await HTTPTestClient.get(port, "/health")
        #expect(health.status == 200, "health \(what)")
    }

    @Test("An absurd If-Modified-Since date is ignored, never a crash")
    func absurdDates() async throws {
        try await withServer { server in
            let dates = [
                "Sun, 06 Nov -2147483648 08:49:37 GMT", "Sun, 06 Nov 99999999999999999999 08:49:37 GMT",
                "Sun, 99 Nov 1994 99:99:99 GMT", "Sun, 31 Feb 2024 00:00:00 GMT",
                "-1", "", "Sun, 06 Nov 2147483647 08:49:37 GMT", "Sun, 06 Nov 0000 00:00:00 GMT",
            ]
            for date in dates {
                let response = try await HTTPTestClient.get(server.port, "/index.html", headers: [("If-Modified-Since", date)])
                #expect(response.status == 200, "If-Modified-Since: \(date)")
            }
            let fresh = try await HTTPTestClient.get(server.port, "/index.html")
            let modified = try #require(fresh.header("last-modified"))
            #expect(try await HTTPTestClient.get(server.port, "/index.html", headers: [("If-Modified-Since", modified)]).status == 304)
            try await Self.expectHealthy(server.port)
        }
    }

    @Test("A client that pipelines requests and never reads stops being read: answers do not pile up (general and fast path)",
          arguments: ["GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                      "POST /events?topic=flood HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nx"])
    func pipelinedNonReader(text: String) async throws {
        try await withServer({ $0.maxQueuedBytes = 256 * 1024 }) { server in
            let port = server.port
            // `GET /metrics` is answered at once with a few KB built afresh each time; a plain
            // publish is read and answered by the fast path, many per read.
            let request = Array(text.utf8)
            let flood = Array([[UInt8]](repeating: request, count: 40 * Self.megabyte / request.count).joined())
            let before = residentBytes()
            let sent = await onThread { () -> Int in
                guard let socket = try? BlockingSocket(port: port, timeoutSeconds: 1) else { return -1 }
                socket.shrinkReceiveBuffer()
                defer { socket.close() }
                return socket.send(flood, until: .now + .seconds(16))
            }
            try await Self.expectHealthy(port, "during the flood")
            let grown = residentBytes() - before
            print("pipelined flood: \(sent / 1024) KB of requests taken, RSS +\(grown / 1024) KB")
            // With back-pressure the server stops reading once 256 KB of answers wait (the
            // kernel's socket buffers hold a few MB more): measured +5 MB. Without, it reads
            // and answers for the whole 16 s and keeps every unread answer: measured +60 MB in
            // a debug build (the report: 1.2 GB from a release build over a longer run).
            #expect(sent > 0)
            #expect(grown < 32 * Self.megabyte, "RSS grew by \(grown / Self.megabyte) MB")
        }
    }

    @Test("A body on a route that takes none is not read: answered from the head, then closed")
    func bodiesOnBodilessRoutes() async throws {
        try await withServer { server in
            let cases: [(String, Int)] = [
                ("PUT /events HTTP/1.1", 405), ("POST /poll HTTP/1.1", 405), ("GET /health HTTP/1.1", 200),
                ("GET /index.html HTTP/1.1", 200), ("DELETE /clients/some_token HTTP/1.1", 404), ("OPTIONS /events HTTP/1.1", 204),
            ]
            for (line, status) in cases {
                // The body is announced but never sent: the answer must not wait for it.
                let connection = try await RawConnection.connect(port: server.port)
                try await connection.send("\(line)\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n\r\nabc")
                let bytes = try await connection.waitUntil("an answer to \(line)", timeout: .seconds(5)) { bytes, _ in
                    HTTPResponseParser.parse(bytes, closed: false) != nil
                }
                let response = try #require(HTTPResponseParser.parse(bytes, closed: false)?.0)
                #expect(response.status == status, "\(line)")
                #expect(response.header("connection")?.lowercased() == "close", "\(line)")
                try await connection.waitForClose(timeout: .seconds(5))
                await connection.close()
            }
            // Chunked, unauthorised: refused from the head too.
            let chunked = try await RawConnection.connect(port: server.port)
            try await chunked.send("POST /events?topic=a HTTP/1.1\r\nHost: evil.example\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123")
            let refusal = try await chunked.waitUntil("the 403", timeout: .seconds(5)) { bytes, _ in HTTPResponseParser.parse(bytes, closed: false) != nil }
            #expect(HTTPResponseParser.parse(refusal, closed: false)?.0.status == 403)
            await chunked.close()

            // 300 such requests at once, each announcing 1 MB and sending 512 KB of it:
            // nothing is buffered (before: up to --max-body-bytes per connection, no auth).
            let before = residentBytes()
            let port = server.port
            let body = [UInt8](repeating: 0x61, count: 512 * 1024)
            let sockets = await onThread { () -> [BlockingSocket] in
                var sockets: [BlockingSocket] = []
                for index in 0..<300 {
                    guard let socket = try? BlockingSocket(port: port, timeoutSeconds: 5) else { continue }
                    let line = index % 2 == 0 ? "POST /poll" : "PUT /events"
                    socket.send("\(line) HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n\r\n")
                    socket.send(body, until: .now + .seconds(1))
                    sockets.append(socket)
                }
                return sockets
            }
            let grown = residentBytes() - before
            let answered = await onThread { () -> Int in
                var answered = 0
                for socket in sockets {
                    let (bytes, _) = socket.read { HTTPResponseParser.parse($0, closed: false) != nil }
                    if HTTPResponseParser.parse(bytes, closed: false)?.0.status == 405 { answered += 1 }
                    socket.close()
                }
                return answered
            }
            #expect(answered == 300)
            #expect(grown < 60 * Self.megabyte, "RSS grew by \(grown / Self.megabyte) MB for 150 MB of unwanted bodies")
            try await Self.expectHealthy(server.port)
        }
    }

    @Test("Keyless publishing: a foreign Host, an unlisted Origin or a cross-site fetch is 403; local tools pass")
    func keylessPublishingIsLocalOnly() async throws {
        try await withServer({ $0.corsOrigins = ["*", "https://admin.example"] }) { server in
            let port = server.port
            func publish(_ headers: [(String, String)], host: String = "127.0.0.1:\(port)") async throws -> Int {
                let connection = try await RawConnection.connect(port: port)
                var head = "POST /events?topic=csrf HTTP/1.1\r\nHost: \(host)\r\nContent-Type: text/plain\r\nContent-Length: 1\r\nConnection: close\r\n"
                for (name, value) in headers { head += "\(name): \(value)\r\n" }
                try await connection.send(head + "\r\nx")
                let bytes = try await connection.waitUntil("an answer") { bytes, closed in HTTPResponseParser.parse(bytes, closed: closed) != nil || closed }
                await connection.close()
                return HTTPResponseParser.parse(bytes, closed: true)?.0.status ?? 0
            }
            // DNS rebinding: the page's own name reaches 127.0.0.1.
            #expect(try await publish([], host: "evil.example:\(port)") == 403)
            #expect(try await publish([], host: "127.0.0.1.evil.example") == 403)
            #expect(try await publish([], host: "localhost.evil.example") == 403)
            // A simple cross-site form or text/plain POST.
            #expect(try await publish([("Origin", "https://evil.example")]) == 403)
            #expect(try await publish([("Origin", "null")]) == 403)
            #expect(try await publish([("Sec-Fetch-Site", "cross-site")]) == 403)
            // Local tools and listed origins.
            #expect(try await publish([]) == 200)
            #expect(try await publish([], host: "localhost:\(port)") == 200)
            #expect(try await publish([], host: "[::1]:\(port)") == 200)
            #expect(try await publish([], host: "127.0.0.2") == 200)
            #expect(try await publish([("Sec-Fetch-Site", "same-origin")]) == 200)
            #expect(try await publish([("Origin", "https://admin.example"), ("Sec-Fetch-Site", "cross-site")]) == 200)
            // /clients and DELETE /events follow the same rule.
            let list = try await HTTPTestClient.get(port, "/clients", headers: [("Origin", "https://evil.example")])
            #expect(list.status == 403)
            let delete = try await HTTPTestClient.request(port: port, method: "DELETE", path: "/clients/some_token",
                                                          headers: [("Sec-Fetch-Site", "cross-site")])
            #expect(delete.status == 403)
            #expect(try await HTTPTestClient.get(port, "/clients").status == 200)
        }
        // With a key, the key is the authorisation: the Host rule does not apply.
        try await withServer({ $0.publishKeys = ["k"] }) { server in
            let response = try await HTTPTestClient.request(
                port: server.port, method: "POST", path: "/events?topic=a",
                headers: [("Authorization", "Bearer k"), ("Origin", "https://elsewhere.example")], body: Array("x".utf8))
            #expect(response.status == 200)
        }
    }

    @Test("Closing thousands of streams of one topic is linear: the loop keeps serving")
    func closingManyStreamsOfOneTopic() async throws {
        ProcessLimits.raiseOpenFiles() // both ends of 2000 connections live in this process
        try await withServer({ $0.eventLoopThreads = 1 }) { server in
            let port = server.port
            let count = 2000
            let sockets = await onThread { () -> [BlockingSocket] in
                var sockets: [BlockingSocket] = []
                for _ in 0..<count {
                    guard let socket = try? BlockingSocket(port: port) else { break }
                    socket.send("GET /events?topic=popular HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
                    sockets.append(socket)
                }
                for socket in sockets { _ = socket.read { String(decoding: $0, as: UTF8.self).contains("herald.hello") } }
                return sockets
            }
            #expect(sockets.count == count)
            try await eventually("every stream to be open") { try await metricValue(port, "herald_streams_open") == Double(count) }
            await onThread { for socket in sockets { socket.close() } }
            try await Self.expectHealthy(port, "while the streams close")
            try await eventually("every stream to be gone") { try await metricValue(port, "herald_streams_open") == 0 }
            // The topic's set is empty again: a new subscriber still gets events.
            let client = try await SSEClient.open(port: port, path: "/events?topic=popular")
            _ = try await client.hello()
            _ = try await HTTPTestClient.publish(port, "/events?topic=popular", body: "still here")
            #expect(try await client.waitForDataEvents(1).first?.data == "still here")
            await client.close()
        }
    }

    @Test("--max-retained keeps the newest retained topics; DELETE /events?topic= clears one")
    func retainedLimitAndDelete() async throws {
        try await withServer({ $0.maxRetained = 100 }) { server in
            let port = server.port
            var lines = ""
            for number in 0..<150 { lines += "{\"topic\":\"r/\(number)\",\"data\":\"v\(number)\"}\n" }
            _ = try await HTTPTestClient.publish(port, "/events?retain=1", body: lines, contentType: "application/x-ndjson")
            let poll = try await HTTPTestClient.get(port, "/poll?topic=r/*&timeout=0")
            guard case .array(let events)? = poll.json?["events"] else { Issue.record("no events: \(poll.text)"); return }
            let data = events.compactMap { event -> String? in if case .string(let text)? = event["data"] { return text } else { return nil } }
            #expect(data == (50..<150).map { "v\($0)" })

            #expect(try await HTTPTestClient.request(port: port, method: "DELETE", path: "/events?topic=r/149").status == 204)
            #expect(try await HTTPTestClient.request(port: port, method: "DELETE", path: "/events?topic=r/149").status == 404)
            #expect(try await HTTPTestClient.request(port: port, method: "DELETE", path: "/events?topic=r/0").status == 404)
            #expect(try await HTTPTestClient.request(port: port, method: "DELETE", path: "/events?topic=r/*").status == 400)
            let stream = try await SSEClient.open(port: port, path: "/events?topic=r/148&topic=r/149")
            let got = try await stream.waitForDataEvents(1)
            #expect(got.map(\.data) == ["v148"])
            await stream.close()
        }
    }

    @Test("Retained events go to '*' subscribers paced by their sockets: non-readers hold no backlog, publishers are not held")
    func retainedSentPaced() async throws {
        try await withServer { server in
            let port = server.port
            let payload = String(repeating: "x", count: 1000)
            for batch in 0..<20 {
                var lines = ""
                for number in 0..<1000 { lines += "{\"topic\":\"big/\(batch)/\(number)\",\"data\":\"\(payload)\"}\n" }
                _ = try await HTTPTestClient.publish(port, "/events?retain=1", body: lines, contentType: "application/x-ndjson")
            }
            // A reading subscriber gets all 20 000, in id order.
            let reader = try await SSEClient.open(port: port, path: "/events?topic=*")
            let all = try await reader.waitForDataEvents(20_000, timeout: .seconds(60))
            #expect(all.count == 20_000)
            #expect(all.map { Int64($0.lastEventID)! } == all.map { Int64($0.lastEventID)! }.sorted())
            await reader.close()

            let before = residentBytes()
            let sockets = await Self.nonReaders(
                150, port: port, sending: "GET /events?topic=* HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
            // They read nothing (not even a hello): wait until every stream is open, its head and
            // first events waiting in its socket. (Watched from the client side: /metrics, which
            // visits every shard, can take seconds to answer while the shards pace 150 replays.)
            try await eventually("all \(sockets.count) streams to be open", timeout: .seconds(30), interval: .milliseconds(10)) {
                sockets.allSatisfy { $0.hasBytesWaiting() }
            }
            // Kept: then a server that handed each subscriber all 20 000 retained events at once
            // gets a second to hold them. The check is that memory does not grow, and no event
            // marks "it would have grown by now".
            try await Task.sleep(for: .seconds(1))
            // Publishing goes on while 150 subscribers sit on 20 MB of retained events each.
            let ids = try await HTTPTestClient.publish(port, "/events?topic=big/new", body: "after")
            #expect(ids.count == 1)
            let grown = residentBytes() - before
            print("retained to 150 non-readers: RSS +\(grown / 1024) KB")
            // Measured: under 1 MB paced; +18.7 MB for 50 such subscribers (so ~56 MB for 150)
            // when each is handed all 20 000 at once.
            #expect(grown < 20 * Self.megabyte, "RSS grew by \(grown / Self.megabyte) MB")
            try await Self.expectHealthy(port)
            await onThread { for socket in sockets { socket.close() } }
        }
    }

    @Test("Large static files are streamed: 20 non-reading downloads hold no copies; the file arrives whole")
    func staticFilesStreamed() async throws {
        let root = TestServer.makePublicFolder()
        let size = 20 * Self.megabyte + 12_345
        var content = [UInt8](repeating: 0, count: size)
        for index in stride(from: 0, to: size, by: 4096) { content[index] = UInt8(truncatingIfNeeded: index / 4096) }
        try Data(content).write(to: URL(fileURLWithPath: root).appendingPathComponent("big.bin"))
        try await withServer({ $0.publicDirectory = root }) { server in
            let port = server.port
            let whole = try await HTTPTestClient.request(port: port, path: "/big.bin", timeout: .seconds(60))
            #expect(whole.status == 200)
            #expect(whole.header("content-length") == String(size))
            #expect(whole.body == content)

            let before = residentBytes()
            let sockets = await Self.nonReaders(20, port: port, sending: "GET /big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            // Wait until every download is being answered: the file's first bytes wait in each socket.
            try await eventually("all \(sockets.count) downloads to be answered", timeout: .seconds(30), interval: .milliseconds(10)) {
                sockets.allSatisfy { $0.hasBytesWaiting() }
            }
            // Kept: then a server that held a copy of the file per download gets two seconds to
            // read them in. The check is that memory does not grow, and no event marks "it would
            // have grown by now".
            try await Task.sleep(for: .seconds(2))
            let grown = residentBytes() - before
            #expect(grown < 100 * Self.megabyte, "RSS grew by \(grown / Self.megabyte) MB for 20 downloads of 20 MB")
            try await Self.expectHealthy(port)
            await onThread { for socket in sockets { socket.close() } }
        }
    }

    @Test("Redirects use the normalised path (no //host); a directory without an index is 404")
    func redirectsAndDirectories() async throws {
        let root = TestServer.makePublicFolder()
        let url = URL(fileURLWithPath: root)
        try FileManager.default.createDirectory(at: url.appendingPathComponent("sub"), withIntermediateDirectories: true)
        try "<p>sub</p>".write(to: url.appendingPathComponent("sub/index.html"), atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(at: url.appendingPathComponent("bare"), withIntermediateDirectories: true)
        try await withServer({ $0.publicDirectory = root }) { server in
            for path in ["//sub", "///sub", "/sub", "//sub?x=1"] {
                let response = try await HTTPTestClient.get(server.port, path)
                #expect(response.status == 301, "\(path)")
                let location = response.header("location") ?? ""
                #expect(location.hasPrefix("/sub/") && !location.hasPrefix("//"), "\(path) -> \(location)")
            }
            #expect(try await HTTPTestClient.get(server.port, "/bare").status == 404)
            #expect(try await HTTPTestClient.get(server.port, "/bare/").status == 404)
        }
    }

    @Test("A sqlite: file is used by one process at a time; the second is refused naming the file")
    func sqliteFileIsExclusive() async throws {
        try await withStoreFolder { path in
            try await withServer({ $0.store = .sqlite(path: path) }) { first in
                var second = TestServer.configuration { $0.store = .sqlite(path: path) }
                second.port = 0
                do {
                    _ = try await withServer(configuration: second) { _ in Issue.record("a second server opened \(path)") }
                } catch {
                    #expect("\(error)".contains(path) && "\(error)".contains("in use"), "\(error)")
                }
                // The first one is unharmed.
                let ids = try await HTTPTestClient.publish(first.port, "/events?topic=a", body: "x")
                #expect(ids.count == 1)
            }
        }
    }

    @Test("Topics compare by bytes: café in NFC and in NFD are two topics")
    func topicsCompareByBytes() async throws {
        try await withServer { server in
            let nfc = "caf\u{E9}"
            let nfd = "cafe\u{301}"
            let encodedNFC = "caf%C3%A9"
            let encodedNFD = "cafe%CC%81"
            let client = try await SSEClient.open(port: server.port, path: "/events?topic=\(encodedNFC)")
            _ = try await client.hello()
            _ = try await HTTPTestClient.publish(server.port, "/events?topic=\(encodedNFD)", body: "nfd")
            _ = try await HTTPTestClient.publish(server.port, "/events?topic=\(encodedNFC)", body: "nfc")
            let got = try await client.waitForDataEvents(1)
            // A marker on the NFC topic comes next: the NFD event did not arrive before it.
            let marker = try await HTTPTestClient.publish(server.port, "/events?topic=\(encodedNFC)", body: "marker")[0]
            let untilMarker = try await client.waitForDataEvents(through: marker)
            #expect(got.map(\.data) == ["nfc"])
            #expect(untilMarker.dropLast().map(\.data) == ["nfc"], "\(nfc) got \(nfd)'s event")
            await client.close()
            // A prefix matches by bytes too: cafe* matches the NFD topic only.
            let prefix = try await SSEClient.open(port: server.port, path: "/events?topic=cafe*", headers: [("Accept", "text/event-stream")])
            _ = try await prefix.hello()
            _ = try await HTTPTestClient.publish(server.port, "/events?topic=\(encodedNFC)", body: "nfc2")
            _ = try await HTTPTestClient.publish(server.port, "/events?topic=\(encodedNFD)", body: "nfd2")
            #expect(try await prefix.waitForDataEvents(1).map(\.data) == ["nfd2"])
            await prefix.close()
        }
    }

    @Test("A resuming /poll with a prefix filter scans the history in slices and finds a late match")
    func pollScansInSlices() async throws {
        try await withServer({ $0.historyCapacity = 60_000 }) { server in
            let port = server.port
            let line = "{\"topic\":\"noise\",\"data\":1}\n"
            var first: Int64 = 0
            for _ in 0..<5 {
                let ids = try await HTTPTestClient.publish(port, "/events", body: String(repeating: line, count: 10_000),
                                                           contentType: "application/x-ndjson")
                if first == 0 { first = ids[0] }
            }
            let match = try await HTTPTestClient.publish(port, "/events?topic=wanted/1", body: "found")
            let poll = try await HTTPTestClient.get(port, "/poll?topic=wanted/*&lastEventId=\(first)&timeout=5")
            #expect(poll.status == 200)
            #expect(poll.text.contains("\"data\":\"found\""), "\(poll.text.prefix(300))")
            #expect(poll.json?["lastEventId"] == .string(String(match[0])))
        }
    }

    @Test("NDJSON with CRLF line ends is accepted")
    func ndjsonCRLF() async throws {
        try await withServer { server in
            let client = try await SSEClient.open(port: server.port, path: "/events?topic=crlf")
            _ = try await client.hello()
            let ids = try await HTTPTestClient.publish(
                server.port, "/events", body: "{\"topic\":\"crlf\",\"data\":\"a\"}\r\n\r\n{\"topic\":\"crlf\",\"data\":\"b\"}\r\n",
                contentType: "application/x-ndjson")
            #expect(ids.count == 2)
            #expect(try await client.waitForDataEvents(2).map(\.data) == ["a", "b"])
            await client.close()
        }
    }

    @Test("Thousands of pipelined requests behind a slow answer are all answered, in order")
    func pipelinedBehindAsyncAnswer() async throws {
        try await withServer { server in
            let port = server.port
            // /metrics answers after a hop to every shard; the /health requests behind it are
            // handed over one by one from inside the write of each answer's end.
            let count = 6000
            let burst = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                + String(repeating: "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", count: count)
            let answers = await onThread { () -> Int in
                guard let socket = try? BlockingSocket(port: port, timeoutSeconds: 20) else { return -1 }
                defer { socket.close() }
                socket.send(burst)
                let marker = Array("HTTP/1.1 200".utf8)
                var found = 0
                var scanned = 0
                _ = socket.read { bytes in
                    while let index = HTTPResponseParser.find(marker, in: bytes, from: scanned) {
                        found += 1
                        scanned = index + marker.count
                    }
                    return found >= count + 1
                }
                return found
            }
            #expect(answers == count + 1)
            try await Self.expectHealthy(port)
        }
    }

    @Test("The unwanted body's timer never splices a 408 into an answer")
    func bodyTimerAfterAnswer() async throws {
        try await withServer({ $0.requestBodyTimeout = .milliseconds(300) }) { server in
            let connection = try await RawConnection.connect(port: server.port)
            // A poll that answers after 1 s, announcing a body it does not need (and sending it).
            try await connection.send("GET /poll?topic=quiet&timeout=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1\r\n\r\nx")
            let bytes = try await connection.waitUntil("the poll's answer", timeout: .seconds(5)) { bytes, closed in
                HTTPResponseParser.parse(bytes, closed: closed) != nil || closed
            }
            let text = String(decoding: bytes, as: UTF8.self)
            #expect(text.hasPrefix("HTTP/1.1 200"), "\(text.prefix(200))")
            // A status line, not the digits: ids are time-based and may contain "408".
            #expect(!text.contains("HTTP/1.1 408"), "\(text.prefix(400))")
            #expect(!text.contains("Request Timeout"), "\(text.prefix(400))")
            await connection.close()
        }
    }

    @Test("Retained events of NFC and NFD topics stay apart in a sqlite: store, also after a restart")
    func retainedByBytesInSQLite() async throws {
        try await withStoreFolder { path in
            let configure: (inout HeraldConfiguration) -> Void = { $0.store = .sqlite(path: path) }
            try await withServer(configure) { server in
                // In one batch, so both land in one commit group.
                let body = "{\"topic\":\"caf\u{E9}\",\"data\":\"nfc\"}\n{\"topic\":\"cafe\u{301}\",\"data\":\"nfd\"}\n"
                _ = try await HTTPTestClient.publish(server.port, "/events?retain=1", body: body, contentType: "application/x-ndjson")
            }
            try await withServer(configure) { server in
                for (encoded, expected) in [("caf%C3%A9", "nfc"), ("cafe%CC%81", "nfd")] {
                    let poll = try await HTTPTestClient.get(server.port, "/poll?topic=\(encoded)&timeout=0")
                    guard case .array(let events)? = poll.json?["events"] else { Issue.record("\(poll.text)"); continue }
                    #expect(events.count == 1 && events.first?["data"] == .string(expected), "\(encoded): \(poll.text)")
                }
            }
        }
    }
}
