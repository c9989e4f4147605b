import HeraldCore
import NIOCore

/// A published event as the server keeps it: metadata for matching and the listing APIs,
/// and its wire bytes, encoded once and shared by every subscriber.
///
/// `chunked` holds the event already framed as one HTTP/1.1 chunk (`<hex>\r\n...\r\n`), and
/// `plain` is a slice of the same storage without the framing (for close-delimited
/// streams). Writing either to a thousand sockets copies nothing: `ByteBuffer` is
/// copy-on-write and only the reference count moves.
public final class StoredEvent: HistoryEntry, Sendable {
    public let id: Int64
    /// Topics it was published to; empty for a direct message.
    public let topics: [String]
    /// The client token of a direct message.
    public let client: String?
    public let type: String?
    public let data: String
    /// When it was published, in milliseconds since 1970 (for `--history-max-age`).
    public let created: Int64
    let chunked: ByteBuffer
    let plain: ByteBuffer

    init(id: Int64, topics: [String], client: String?, type: String?, data: String, created: Int64, allocator: ByteBufferAllocator) {
        self.id = id
        self.created = created
        self.topics = topics
        self.client = client
        self.type = type
        self.data = data
        var bytes: [UInt8] = []
        bytes.reserveCapacity(data.utf8.count + 48)
        SSEEncoder.appendEvent(id: id, type: type, data: data, to: &bytes)
        self.chunked = WireFormat.chunk(bytes, allocator: allocator)
        self.plain = WireFormat.unframed(self.chunked, payloadLength: bytes.count)
    }

    /// Where the per-topic history files it: its topics, or its client's direct key.
    var logKeys: [String] { client.map { [LogKeys.direct($0)] } ?? topics }

    /// The bytes for a stream: framed as a chunk or plain.
    @inline(__always)
    func wire(chunked: Bool) -> ByteBuffer { chunked ? self.chunked : self.plain }
}

/// Chunked transfer framing, done by hand for the stream path: NIO's `HTTPResponseEncoder`
/// would frame every write to every subscriber separately (three writes and a fresh header
/// buffer each), where an event framed once can be written to every chunked stream as is.
enum WireFormat {
    static func chunk(_ payload: [UInt8], allocator: ByteBufferAllocator) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: payload.count + 20)
        writeHexLength(payload.count, to: &buffer)
        buffer.writeStaticString("\r\n")
        buffer.writeBytes(payload)
        buffer.writeStaticString("\r\n")
        return buffer
    }

    /// `count` in lower-case hex digits, as `String(count, radix: 16)` spells it, without
    /// building the string (every published event's chunk header is one).
    static func writeHexLength(_ count: Int, to buffer: inout ByteBuffer) {
        precondition(count >= 0)
        var shift = 0
        while shift < Int.bitWidth - 4 && count >> (shift + 4) != 0 { shift += 4 }
        while true {
            let digit = UInt8(truncatingIfNeeded: (count >> shift) & 0xF)
            buffer.writeInteger(digit < 10 ? 0x30 + digit : 0x57 + digit)
            if shift == 0 { break }
            shift -= 4
        }
    }

    /// The payload inside a chunk made by ``chunk(_:allocator:)``, sharing its storage.
    static func unframed(_ chunk: ByteBuffer, payloadLength: Int) -> ByteBuffer {
        let headerLength = chunk.readableBytes - payloadLength - 2
        return chunk.getSlice(at: chunk.readerIndex + headerLength, length: payloadLength)!
    }

    /// Frames `payload` for a stream: as a chunk when `chunked`, else as is.
    static func frame(_ payload: [UInt8], chunked: Bool, allocator: ByteBufferAllocator) -> ByteBuffer {
        if chunked { return chunk(payload, allocator: allocator) }
        var buffer = allocator.buffer(capacity: payload.count)
        buffer.writeBytes(payload)
        return buffer
    }

    /// The last chunk of a chunked body.
    static let lastChunk: StaticString = "0\r\n\r\n"
}
