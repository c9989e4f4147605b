import HeraldCore
import Testing

@Suite("Accept negotiation, media types and form decoding")
struct HTTPParsingTests {
    @Test("text/event-stream must be listed itself with q > 0")
    func accept() {
        #expect(AcceptNegotiation.acceptsEventStream(["text/event-stream"]))
        #expect(AcceptNegotiation.acceptsEventStream(["Text/Event-Stream"]))
        #expect(AcceptNegotiation.acceptsEventStream(["text/html", "text/event-stream;q=0.1"]))
        #expect(AcceptNegotiation.acceptsEventStream(["application/json;q=0.9, text/event-stream ; q=1.0"]))
        #expect(AcceptNegotiation.acceptsEventStream(["text/event-stream; charset=utf-8"]))
        #expect(!AcceptNegotiation.acceptsEventStream([]))
        #expect(!AcceptNegotiation.acceptsEventStream(["*/*"]))
        #expect(!AcceptNegotiation.acceptsEventStream(["text/*"]))
        #expect(!AcceptNegotiation.acceptsEventStream(["text/event-stream;q=0"]))
        #expect(!AcceptNegotiation.acceptsEventStream(["text/event-stream;q=0.000"]))
        #expect(!AcceptNegotiation.acceptsEventStream(["text/event-stream;q=abc"]))
        #expect(!AcceptNegotiation.acceptsEventStream(["text/event-streamx"]))
    }

    @Test("Accept-Encoding: gzip explicitly or by *, unless q=0")
    func acceptEncoding() {
        #expect(AcceptNegotiation.acceptsGzip(["gzip, deflate, br"]))
        #expect(AcceptNegotiation.acceptsGzip(["*"]))
        #expect(!AcceptNegotiation.acceptsGzip(["gzip;q=0"]))
        #expect(!AcceptNegotiation.acceptsGzip(["identity"]))
        #expect(!AcceptNegotiation.acceptsGzip([]))
    }

    @Test("Media types: lower-cased essence, unquoted parameters")
    func mediaTypes() {
        let type = MediaType("Text/Plain; Charset=\"UTF-8\"; x=1")
        #expect(type?.essence == "text/plain")
        #expect(type?.parameters["charset"] == "UTF-8")
        #expect(MediaType("nonsense") == nil)
        #expect(MediaType("a/") == nil)
    }

    @Test("Form decoding: + is a space, percent escapes, repeated names kept in order, bad UTF-8 refused")
    func form() throws {
        let pairs = try FormURLEncoded.parse(Array("topic=a&topic=b%2Fc&data=hello+world%21&flag&empty=".utf8))
        #expect(pairs.map(\.name) == ["topic", "topic", "data", "flag", "empty"])
        #expect(pairs.map(\.value) == ["a", "b/c", "hello world!", "", ""])
        #expect(try FormURLEncoded.decode(Array("100%".utf8)) == "100%")
        #expect(try FormURLEncoded.decode(Array("%zz".utf8)) == "%zz")
        #expect(try FormURLEncoded.decode(Array("a+b".utf8), plusIsSpace: false) == "a+b")
        #expect(throws: ValidationError.self) { try FormURLEncoded.parse(Array("x=%FF".utf8)) }
        // Nothing to unescape: ASCII as is, other UTF-8 checked (raw bytes, slices of a target).
        let raw = Array("caf\u{E9} b\u{F6}rse".utf8)
        #expect(try FormURLEncoded.decode(raw) == "caf\u{E9} b\u{F6}rse")
        #expect(try FormURLEncoded.decode(raw[3...]) == "\u{E9} b\u{F6}rse")
        #expect(try FormURLEncoded.decode(Array("topic-42.quotes".utf8)[6...]) == "42.quotes")
        #expect(throws: ValidationError.self) { try FormURLEncoded.decode([0x61, 0xFF, 0x62]) }
        #expect(throws: ValidationError.self) { try FormURLEncoded.decode([0x61, 0xC3]) }
        #expect(throws: ValidationError.self) { try FormURLEncoded.parse([0x74, 0x3D, 0xE9, 0x26, 0x61]) }
    }
}
