@testable import HeraldServer
import HeraldCore
import NIOCore
import Testing

/// The two encodings the publish path writes by hand (issue 15) must spell exactly what the
/// library code they replaced spelled: the chunk header `String(n, radix: 16)`, and the ids
/// answer `EndpointAnswer.json` of the same `JSONValue`.
@Suite("Hand-written encodings match the library spelling they replaced")
struct HandWrittenEncodingTests {
    static func hex(_ count: Int) -> String {
        var buffer = ByteBufferAllocator().buffer(capacity: 20)
        WireFormat.writeHexLength(count, to: &buffer)
        return String(buffer: buffer)
    }

    @Test("Chunk lengths in hex: every value to 70 000, the powers of 16 and their neighbours, the largest")
    func chunkLengths() {
        for count in 0...70_000 where Self.hex(count) != String(count, radix: 16) {
            Issue.record("\(count): \(Self.hex(count)) instead of \(String(count, radix: 16))")
            return
        }
        var edges = [Int.max, Int.max - 1]
        for shift in stride(from: 4, to: Int.bitWidth, by: 4) {
            edges += [(1 << shift) - 1, 1 << shift, (1 << shift) + 1]
        }
        for count in edges {
            #expect(Self.hex(count) == String(count, radix: 16), "\(count)")
        }
    }

    @Test("A chunk is the hex length, CRLF, the payload, CRLF; its unframed slice is the payload")
    func chunkFraming() {
        let payload = Array(repeating: UInt8(ascii: "x"), count: 300)
        let chunk = WireFormat.chunk(payload, allocator: ByteBufferAllocator())
        #expect(String(buffer: chunk) == "12c\r\n" + String(repeating: "x", count: 300) + "\r\n")
        #expect(Array(WireFormat.unframed(chunk, payloadLength: 300).readableBytesView) == payload)
        let empty = WireFormat.chunk([], allocator: ByteBufferAllocator())
        #expect(String(buffer: empty) == "0\r\n\r\n")
    }

    @Test("The ids answer is the JSON document EndpointAnswer.json makes, for none, one and many ids")
    func idsDocument() {
        let cases: [[Int64]] = [[], [0], [1], [9], [10], [1_796_104_885_277_770], [Int64.max], Array(1...40), [5, 1_000_000_000_000_000_000, 7]]
        for ids in cases {
            let expected = EndpointAnswer.json(.object([("ids", .array(ids.map { .string(String($0)) }))]), allocator: ByteBufferAllocator())
            let written = Responders.idsDocument(ids, allocator: ByteBufferAllocator())
            #expect(String(buffer: written) == String(buffer: expected.body!), "\(ids)")
        }
    }
}
