import HeraldCore
import Testing

@Suite("SSEEncoder: golden bytes")
struct SSEEncoderTests {
    func encode(id: Int64?, type: String?, data: String) -> String {
        var bytes: [UInt8] = []
        SSEEncoder.appendEvent(id: id, type: type, data: data, to: &bytes)
        return String(decoding: bytes, as: UTF8.self)
    }

    @Test("An event is id:, event:, one data: line per line, and a blank line")
    func fields() {
        #expect(encode(id: 7, type: "quote", data: "hello") == "id: 7\nevent: quote\ndata: hello\n\n")
        #expect(encode(id: nil, type: nil, data: "x") == "data: x\n\n")
        #expect(encode(id: 9_007_199_254_740_991, type: nil, data: "max") == "id: 9007199254740991\ndata: max\n\n")
        #expect(encode(id: 0, type: nil, data: "zero") == "id: 0\ndata: zero\n\n")
    }

    @Test("Data splits on LF, CR and CRLF; empty and trailing-newline data survive a round trip")
    func lineBreaks() {
        #expect(encode(id: nil, type: nil, data: "a\nb") == "data: a\ndata: b\n\n")
        #expect(encode(id: nil, type: nil, data: "a\rb") == "data: a\ndata: b\n\n")
        #expect(encode(id: nil, type: nil, data: "a\r\nb") == "data: a\ndata: b\n\n")
        #expect(encode(id: nil, type: nil, data: "a\n\rb") == "data: a\ndata:\ndata: b\n\n")
        #expect(encode(id: nil, type: nil, data: "") == "data:\n\n")
        #expect(encode(id: nil, type: nil, data: "end\n") == "data: end\ndata:\n\n")
        #expect(encode(id: nil, type: nil, data: "\n") == "data:\ndata:\n\n")
        #expect(encode(id: nil, type: nil, data: " leading space") == "data:  leading space\n\n")
    }

    @Test("Injection attempts stay inside data: lines")
    func injection() {
        let text = encode(id: 1, type: nil, data: "x\nid: 666\r\nevent: evil\rretry: 1\n\ndata: y")
        #expect(text == "id: 1\ndata: x\ndata: id: 666\ndata: event: evil\ndata: retry: 1\ndata:\ndata: data: y\n\n")
    }

    @Test("retry:, comments and padding")
    func controlLines() {
        var bytes: [UInt8] = []
        SSEEncoder.appendRetry(milliseconds: 3000, to: &bytes)
        SSEEncoder.appendComment("", to: &bytes)
        SSEEncoder.appendComment("two\nlines", to: &bytes)
        #expect(String(decoding: bytes, as: UTF8.self) == "retry: 3000\n\n:\n: two\n: lines\n")
        var padding: [UInt8] = []
        SSEEncoder.appendPadding(minimumBytes: 2048, to: &padding)
        #expect(padding.count == 2048)
        #expect(padding.first == UInt8(ascii: ":") && padding.last == 0x0A)
    }

    @Test("Encoding then decoding gives back the data, for any text")
    func roundTrip() {
        var generator = SystemRandomNumberGenerator()
        let alphabet: [String] = ["a", "b", " ", ":", "\n", "\r", "\r\n", "é", "🚀", "data:", "id:", "\u{0}"]
        for _ in 0..<500 {
            let data = (0..<Int.random(in: 0...12, using: &generator)).map { _ in alphabet.randomElement(using: &generator)! }.joined()
            var bytes: [UInt8] = []
            SSEEncoder.appendEvent(id: 5, type: "t", data: data, to: &bytes)
            var decoder = SSEDecoder()
            let messages = decoder.decode(bytes)
            let expected = data.replacingOccurrences(of: "\r\n", with: "\n").replacingOccurrences(of: "\r", with: "\n")
            #expect(messages == [.event(ReceivedEvent(type: "t", data: expected, lastEventID: "5", hadIDField: true))], "\(data.debugDescription)")
        }
    }
}

import Foundation
