import HeraldCore
import Testing

@Suite("SSEDecoder: the WHATWG event stream interpretation")
struct SSEDecoderTests {
    /// Decodes `input` all at once, one byte at a time, and split at every position; all
    /// must give the same messages (the decoder is incremental).
    func decodeEverySplit(_ input: String) -> [SSEMessage] {
        let bytes = Array(input.utf8)
        var whole = SSEDecoder()
        let expected = whole.decode(bytes)
        var drip = SSEDecoder()
        var dripped: [SSEMessage] = []
        for byte in bytes { dripped += drip.decode([byte]) }
        #expect(dripped == expected, "byte by byte")
        for split in 0...bytes.count {
            var decoder = SSEDecoder()
            let messages = decoder.decode(bytes[..<split]) + decoder.decode(bytes[split...])
            #expect(messages == expected, "split at \(split)")
        }
        return expected
    }

    func event(_ data: String, type: String = "message", id: String = "", hadID: Bool = false) -> SSEMessage {
        .event(ReceivedEvent(type: type, data: data, lastEventID: id, hadIDField: hadID))
    }

    @Test("The spec's examples")
    func specExamples() {
        #expect(decodeEverySplit("data: YHOO\ndata: +2\ndata: 10\n\n") == [event("YHOO\n+2\n10")])
        #expect(decodeEverySplit(": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n") == [
            .comment(" test stream"), event("first event", id: "1", hadID: true), event("second event", id: "", hadID: true),
            event(" third event", id: ""),
        ])
        #expect(decodeEverySplit("data\n\ndata\ndata\n\ndata:") == [event(""), event("\n")])
        #expect(decodeEverySplit("data:test\n\ndata: test\n\n") == [event("test"), event("test")])
    }

    @Test("CR, LF and CRLF all end lines, also when CR and LF arrive apart")
    func lineEndings() {
        #expect(decodeEverySplit("data: a\r\ndata: b\r\n\r\n") == [event("a\nb")])
        #expect(decodeEverySplit("data: a\rdata: b\r\r") == [event("a\nb")])
        #expect(decodeEverySplit("data: a\ndata: b\n\n") == [event("a\nb")])
        #expect(decodeEverySplit("data: a\r\n\rdata: b\n\r\n") == [event("a"), event("b")])
    }

    @Test("A leading BOM is dropped once; a BOM later is data")
    func bom() {
        #expect(decodeEverySplit("\u{FEFF}data: x\n\n") == [event("x")])
        #expect(decodeEverySplit("\u{FEFF}\u{FEFF}data: x\n\n") == [])
        #expect(decodeEverySplit("data: \u{FEFF}x\n\n") == [event("\u{FEFF}x")])
    }

    @Test("Event types, ids that persist, ids with NUL ignored, retry only when all digits")
    func fields() {
        #expect(decodeEverySplit("event: add\ndata: 1\n\ndata: 2\n\n") == [event("1", type: "add"), event("2")])
        #expect(decodeEverySplit("id: 5\ndata: a\n\ndata: b\n\n") == [event("a", id: "5", hadID: true), event("b", id: "5")])
        #expect(decodeEverySplit("id: 5\n\nid: 6\u{0}\ndata: a\n\n") == [event("a", id: "5")])
        #expect(decodeEverySplit("retry: 1500\nretry: 1x\nretry:\n\n") == [.retry(1500)])
        #expect(decodeEverySplit("data: no end") == [], "an unterminated event is not dispatched")
        #expect(decodeEverySplit("unknown: x\ndata: y\n\n") == [event("y")])
        #expect(decodeEverySplit("data: nul\u{0}inside\n\n") == [event("nul\u{0}inside")])
    }
}
