import HeraldCore
import HeraldServer
import Testing

/// Streams written through their pipeline (the path TLS and HTTP/2 streams take), forced on
/// cleartext HTTP/1.1 so it is tested over real sockets today: the same bytes, order and
/// guarantees as the direct path.
@Suite("Stream sink: streams written through the pipeline behave as direct ones", .timeLimit(.minutes(2)))
struct StreamSinkTests {
    @Test("Head, hello, retained, live events, replay, many subscribers, and a graceful close, all through the pipeline")
    func throughPipeline() async throws {
        try await withServer({ $0.streamsThroughPipeline = true }) { server in
            let port = server.port
            _ = try await HTTPTestClient.publish(port, "/events?topic=p/state&retain=1", body: "current")
            let client = try await SSEClient.open(port: port, path: "/events?topic=p/*&client=pipeline_client")
            let head = try await client.head()
            #expect(head.status == 200)
            #expect(head.header("transfer-encoding") == "chunked")
            #expect(head.header("content-type") == "text/event-stream; charset=utf-8")
            _ = try await client.hello()
            #expect(try await client.waitForDataEvents(1).map(\.data) == ["current"])

            var published: [Int64] = []
            for number in 0..<50 { published += try await HTTPTestClient.publish(port, "/events?topic=p/live", body: "e\(number)") }
            let live = try await client.waitForDataEvents(51)
            #expect(live.dropFirst().map(\.data) == (0..<50).map { "e\($0)" })

            // A second stream resumes from the middle and replays exactly what came after.
            let resumed = try await SSEClient.open(
                port: port, path: "/events?topic=p/live",
                headers: [("Accept", "text/event-stream"), ("Last-Event-ID", String(published[24]))])
            let replayed = try await resumed.waitForDataEvents(25)
            #expect(replayed.map(\.data) == (25..<50).map { "e\($0)" })
            await resumed.close()

            // DELETE closes it gracefully: the chunked body ends properly.
            #expect(try await HTTPTestClient.request(port: port, method: "DELETE", path: "/clients/pipeline_client").status == 204)
            let bytes = try await client.connection.waitForClose()
            #expect(String(decoding: bytes, as: UTF8.self).hasSuffix("0\r\n\r\n"))
        }
    }
}
