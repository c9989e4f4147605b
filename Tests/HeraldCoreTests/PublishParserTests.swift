import HeraldCore
import Testing

@Suite("Publish body parsers")
struct PublishParserTests {
    let parser = PublishParser(queryTopics: ["q"], queryType: nil, isDirect: false, maxEventBytes: 64)

    func parse(_ body: String, _ type: String?, parser: PublishParser? = nil) throws(PublishError) -> [EventDraft] {
        try (parser ?? self.parser).parse(body: Array(body.utf8), contentType: type)
    }

    @Test("The common Content-Type spellings, matched before the media-type parse, mean what the parse says")
    func contentTypeFastPath() throws {
        for spelling in ["text/plain", "text/plain; charset=utf-8", "application/json", "application/octet-stream",
                         "application/x-ndjson", "text/event-stream", "application/x-www-form-urlencoded"] {
            // A leading space skips the exact match, so the general parse answers.
            #expect(try PublishParser.format(contentType: spelling) == PublishParser.format(contentType: " " + spelling), "\(spelling)")
        }
    }

    func failure(_ body: String, _ type: String?, parser: PublishParser? = nil) -> PublishError? {
        do {
            _ = try parse(body, type, parser: parser)
            return nil
        } catch {
            return error
        }
    }

    @Test("Raw bodies are one event, byte for byte, whatever the content type")
    func raw() throws {
        #expect(try parse("a\nb\n", nil) == [EventDraft(topics: ["q"], type: nil, data: "a\nb\n")])
        #expect(try parse("{\"json\": true}", "application/json") == [EventDraft(topics: ["q"], type: nil, data: "{\"json\": true}")])
        #expect(try parse("", "text/plain; charset=UTF-8") == [EventDraft(topics: ["q"], type: nil, data: "")])
        #expect(try parse("x", "text/plain; charset=\"us-ascii\"").count == 1)
        #expect(failure("x", "text/plain; charset=iso-8859-1")?.status == .unsupportedMediaType)
    }

    @Test("Invalid UTF-8 is a 400")
    func invalidUTF8() {
        do {
            _ = try parser.parse(body: [0x61, 0xC3], contentType: nil)
            Issue.record("accepted invalid UTF-8")
        } catch {
            #expect(error.status == .badRequest)
        }
    }

    @Test("Form bodies need data; topics and type come from fields")
    func form() throws {
        let drafts = try parse("topic=x&topic=y&type=t&data=a+b", "application/x-www-form-urlencoded")
        #expect(drafts == [EventDraft(topics: ["x", "y"], type: "t", data: "a b")])
        let error = failure("hello", "application/x-www-form-urlencoded")
        #expect(error?.status == .badRequest)
        #expect(error?.detail.contains("Content-Type: text/plain") == true)
    }

    @Test("NDJSON: per-line topics and types, JSON data compacted, null, blank lines, errors name the line")
    func ndjson() throws {
        let body = "{\"topic\":\"a\",\"data\":\"s\"}\r\n\n  \n{\"topic\":[\"b\",\"c\"],\"type\":\"t\",\"data\":{\"k\": [1, 2.0]}}\n{\"data\":null}"
        #expect(try parse(body, "application/x-ndjson") == [
            EventDraft(topics: ["a"], type: nil, data: "s"),
            EventDraft(topics: ["b", "c"], type: "t", data: "{\"k\":[1,2.0]}"),
            EventDraft(topics: ["q"], type: nil, data: "null"),
        ])
        #expect(failure("{\"data\":1}\n{\"topic\":\"a\"}", "application/x-ndjson")?.detail.hasPrefix("NDJSON line 2") == true)
        #expect(failure("[1]", "application/x-ndjson")?.detail.contains("line 1") == true)
        #expect(failure("{\"topic\":5,\"data\":1}", "application/x-ndjson")?.status == .badRequest)
        #expect(failure("\n\n", "application/x-ndjson")?.detail.contains("no event") == true)
    }

    @Test("SSE bodies: events by blank lines, topic: overrides, last event may end the body, no data is a 400")
    func eventStream() throws {
        let body = "event: e1\ndata: a\ndata: b\nid: 9\nretry: 1\nx-unknown: y\n\n: comment only\n\ntopic: t1\ntopic: t2\ndata:\n\r\ndata: end"
        #expect(try parse(body, "text/event-stream") == [
            EventDraft(topics: ["q"], type: "e1", data: "a\nb"),
            EventDraft(topics: ["t1", "t2"], type: nil, data: ""),
            EventDraft(topics: ["q"], type: nil, data: "end"),
        ])
        let error = failure("data: ok\n\nevent: x\n\ndata: z\n", "text/event-stream")
        #expect(error?.status == .badRequest)
        #expect(error?.detail.contains("line 3") == true)
    }

    @Test("Topics, types and sizes are validated; the query type is the default")
    func validation() throws {
        let typed = PublishParser(queryTopics: ["q"], queryType: "dflt", isDirect: false, maxEventBytes: 4)
        #expect(try parse("event: own\ndata: 1\n\ndata: 2", "text/event-stream", parser: typed).map(\.type) == ["own", "dflt"])
        #expect(failure("ééé", nil, parser: typed)?.status == .payloadTooLarge, "6 UTF-8 bytes over a 4-byte limit")
        #expect(try parse("éé", nil, parser: typed).count == 1)
        let noTopics = PublishParser(queryTopics: [], queryType: nil, isDirect: false, maxEventBytes: 64)
        #expect(failure("x", nil, parser: noTopics)?.detail.contains("topic") == true)
        #expect(failure("topic: a*\ndata: x", "text/event-stream")?.status == .badRequest)
        #expect(failure("event: herald.x\ndata: x", "text/event-stream")?.status == .badRequest)
        let badType = PublishParser(queryTopics: ["q"], queryType: "a\nb", isDirect: false, maxEventBytes: 64)
        #expect(failure("x", nil, parser: badType)?.detail.contains("type") == true)
        let direct = PublishParser(queryTopics: [], queryType: nil, isDirect: true, maxEventBytes: 64)
        #expect(try parse("topic: ignored\ndata: x", "text/event-stream", parser: direct) == [EventDraft(topics: [], type: nil, data: "x")])
    }
}
