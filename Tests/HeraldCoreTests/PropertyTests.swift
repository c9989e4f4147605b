#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import HeraldCore
import PropertyBased
import Testing

/// Generated hostile input for every parser a request reaches: no crash, no hang, every
/// rejection a typed 4xx, and nothing a publisher sends can make a subscriber see a field
/// it did not set.
///
/// Inputs are built from fragments that matter to these grammars (field names, line ends
/// of all three kinds, NUL, quotes, escapes, percent escapes, surrogates, invalid UTF-8)
/// mixed with random bytes, so that most inputs get deep into a parser instead of failing
/// at the first byte.
@Suite("Property-based: parsers under generated hostile input")
struct PropertyTests {
    /// Inputs per property: 30 000 in the regular (debug) run; `HERALD_PROPERTY_COUNT=1000000
    /// swift test -c release --filter PropertyTests` for a long run.
    static let count = getenv("HERALD_PROPERTY_COUNT").flatMap { Int(String(cString: $0)) } ?? 30_000

    static let fragments: [[UInt8]] = [
        "data:", "data: ", "event:", "event: ", "id:", "id: 7", "retry:", "topic:", "topic: a", ":", " ", "\n", "\r", "\r\n",
        "\n\n", "\0", "{", "}", "[", "]", "\"", "\\", "\\n", "\\r", "\\u0000", "\\ud800", "\\udc00", "\\u2028", ",", ":", "data",
        "type", "topic", "topics", "null", "true", "1e999", "-0", "0.5", "=", "&", "%", "%0A", "%0D", "%00", "%ZZ", "%e2%80%a8",
        "+", "é", "\u{2028}", "\u{FEFF}", "a/b", "*", "a/*", "x", "quotes/AAPL", "retain", "data=", "type=", "topic=",
    ].map { Array($0.utf8) } + [[0xFF], [0xC3], [0xE2, 0x80], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80], [0xC0, 0xAF]]

    static var bytes: Generator<[UInt8], some SendableSequenceType> {
        Gen.frequency(
            (4, Gen.element(of: fragments).map { $0 ?? [] }),
            (1, Gen.uint8(in: 0...255).map { [$0] })
        ).array(of: 0...48).map { $0.flatMap { $0 } }
    }

    static let contentTypes: [String?] = [
        nil, "text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded", "application/x-ndjson",
        "application/json", "text/event-stream", "multipart/form-data; boundary=x", "garbage", "", ";;;",
        "TEXT/EVENT-STREAM", "application/x-ndjson; charset=latin1",
    ]

    /// What a conforming EventSource makes of data sent through the encoder: lines split on
    /// CRLF, CR and LF and joined with LF.
    static func normalized(_ data: String) -> String {
        var out = String.UnicodeScalarView()
        var afterCR = false
        for scalar in data.unicodeScalars {
            if scalar == "\n" && afterCR { afterCR = false; continue }
            afterCR = scalar == "\r"
            out.append(scalar == "\r" ? "\n" : scalar)
        }
        return String(out)
    }

    @Test("Publish bodies of every format: a 4xx or events that reach subscribers exactly as published",
          .timeLimit(.minutes(5)))
    func publishBodies() async {
        await propertyCheck(count: Self.count, input: Self.bytes, Gen.element(of: Self.contentTypes), Gen.bool) { body, contentType, direct in
            let parser = PublishParser(
                queryTopics: direct ? [] : ["q"], queryType: nil, isDirect: direct, maxEventBytes: 64)
            let drafts: [EventDraft]
            do {
                drafts = try parser.parse(body: body, contentType: contentType ?? nil)
            } catch let error as PublishError {
                #expect([400, 413, 415].contains(error.status.rawValue))
                return
            } catch {
                Issue.record("untyped error \(error)")
                return
            }
            #expect(!drafts.isEmpty)
            for draft in drafts {
                #expect(draft.data.utf8.count <= 64)
                if direct { #expect(draft.topics.isEmpty) } else { #expect(!draft.topics.isEmpty) }
                for topic in draft.topics { #expect((try? TopicRules.validate(topic: topic, forSubscription: false)) != nil) }
                // Field injection: what the subscriber decodes is one event with the id the
                // server gave, the type the publisher gave, and the data, nothing else.
                var wire: [UInt8] = []
                SSEEncoder.appendEvent(id: 42, type: draft.type, data: draft.data, to: &wire)
                var decoder = SSEDecoder()
                let messages = decoder.decode(wire)
                #expect(messages == [.event(ReceivedEvent(
                    type: draft.type ?? "message", data: Self.normalized(draft.data), lastEventID: "42", hadIDField: true))])
            }
        }
    }

    @Test("The encoder never lets data or a type add a field, whatever characters they hold")
    func encoderRoundTrip() async {
        let text = Self.bytes.map { String(decoding: $0, as: UTF8.self) }
        await propertyCheck(count: Self.count, input: text, text) { data, type in
            let validType = (try? TopicRules.validate(type: type)) != nil && !type.isEmpty
            var wire: [UInt8] = []
            SSEEncoder.appendEvent(id: 7, type: validType ? type : nil, data: data, to: &wire)
            var decoder = SSEDecoder()
            // Fed in two arbitrary pieces, as TCP may deliver it.
            let cut = wire.isEmpty ? 0 : (data.utf8.count * 7) % wire.count
            let messages = decoder.decode(wire[..<cut]) + decoder.decode(wire[cut...])
            #expect(messages == [.event(ReceivedEvent(
                type: validType ? type : "message", data: Self.normalized(data), lastEventID: "7", hadIDField: true))])
        }
    }

    @Test("JSON, forms, media types, Accept, event ids and topics: any input is parsed or refused, never a crash")
    func smallParsers() async {
        await propertyCheck(count: Self.count, input: Self.bytes) { bytes in
            let text = String(decoding: bytes, as: UTF8.self)
            if let value = try? JSON.parse(bytes: bytes) {
                // What parses re-serialises to JSON that parses to the same value.
                var out = ""
                value.write(to: &out)
                #expect((try? JSON.parse(out)) == value)
            }
            _ = try? FormURLEncoded.parse(bytes)
            _ = MediaType(text)
            _ = AcceptNegotiation.acceptsEventStream([text])
            _ = AcceptNegotiation.acceptsGzip([text])
            if let id = EventIDParser.parse(text) { #expect(String(id) == text || text.hasPrefix("0")) }
            if (try? TopicRules.validate(topic: text, forSubscription: true)) != nil {
                #expect(!text.isEmpty && !text.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7F })
                _ = TopicFilter(patterns: [text], clientToken: nil).matches(topic: text)
            }
        }
    }

    /// Fragments of HTTP header values: dates, numbers, hosts, signs and separators.
    static let headerFragments: [[UInt8]] = [
        "Sun", "Mon", "Sat", "Sunday", "-", "Nov-94", ",", " ", "06", "31", "29", "99", "00", "Nov", "Feb", "Dec", "1994", "2024", "-2147483648",
        "2147483647", "99999999999999999999", "9223372036854775808", "-", "+", "0", "1", ":", "GMT", "UTC", "08", "49", "60",
        "localhost", "127.0.0.1", "127", ".", "[", "]", "::1", "evil.example", "0x10", "1e9", "\t", "\0", "%", "é",
    ].map { Array($0.utf8) } + [[0xFF], [0xC3]]

    static var headerValues: Generator<String, some SendableSequenceType> {
        Gen.frequency(
            (6, Gen.element(of: headerFragments).map { $0 ?? [] }),
            (1, Gen.uint8(in: 0...255).map { [$0] })
        ).array(of: 0...12).map { String(decoding: $0.flatMap { $0 }, as: UTF8.self) }
    }

    @Test("HTTP dates, numbers and Host values: any text is parsed or refused without a trap; dates round-trip",
          .timeLimit(.minutes(5)))
    func headerParsers() async {
        await propertyCheck(count: Self.count, input: Self.headerValues) { text in
            if let seconds = HTTPDate.parse(text), text.utf8.count == 29 {
                // An IMF-fixdate that parses formats back to the same text, weekday aside (the
                // obsolete forms parse to the same instants, checked in the unit tests).
                #expect(HTTPDate.format(secondsSince1970: seconds).dropFirst(3) == text.dropFirst(3))
            }
            if let number = HTTPNumber.parse(text) {
                #expect(String(number) == text || text.hasPrefix("0"))
            }
            if let small = HTTPNumber.parse(text, maximum: 60) { #expect((0...60).contains(small)) }
            if LocalPublishGuard.isLoopbackHost(text) {
                let lowered = text.lowercased()
                #expect(lowered.contains("localhost") || lowered.contains("127.") || lowered.contains("::1") || lowered.contains("0:0:0:0:0:0:0:1"))
            }
            _ = LocalPublishGuard.refusal(host: text, origin: text, fetchSite: text, explicitOrigins: ["https://a.example"])
        }
        // And every second of years 1..9999 round-trips through format and parse.
        await propertyCheck(count: Self.count, input: Gen.int64(in: -62_135_596_800...253_402_300_799)) { seconds in
            #expect(HTTPDate.parse(HTTPDate.format(secondsSince1970: seconds)) == seconds)
        }
    }
}
