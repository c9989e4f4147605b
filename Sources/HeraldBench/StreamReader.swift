import NIOCore

/// Reads one SSE response as cheaply as possible: HTTP head, chunked framing, then only the
/// `id:` and `data:` lines, from which it takes the publisher's sequence number and send time.
/// A load tool that parses slower than the server writes would measure itself.
struct StreamReader {
    enum Phase { case head, chunkSize, chunkData(remaining: Int), chunkDataEnd, body, failed }

    var phase = Phase.head
    var status = 0
    private var chunked = false
    private var headBytes: [UInt8] = []
    private var sizeLine: [UInt8] = []
    private var line: [UInt8] = []
    private var lineTooLong = false
    /// The last `id:` value, as the server wrote it (sent back as Last-Event-ID).
    var lastID: [UInt8] = []

    init() {
        line.reserveCapacity(64)
    }

    /// Feeds bytes; calls `onEvent(seq, sentNanoseconds)` for every data line of the
    /// bench's format (`<seq> <ns> <padding>`), `onHead(status)` once the head is read.
    mutating func feed(_ buffer: ByteBuffer, onHead: (Int) -> Void, onEvent: (Int, UInt64) -> Void) {
        buffer.withUnsafeReadableBytes { raw in
            var index = 0
            let count = raw.count
            while index < count {
                switch phase {
                case .failed:
                    return
                case .head:
                    headBytes.append(raw[index])
                    index += 1
                    let n = headBytes.count
                    if n >= 4 && headBytes[n - 4] == 13 && headBytes[n - 3] == 10 && headBytes[n - 2] == 13 && headBytes[n - 1] == 10 {
                        parseHead()
                        onHead(status)
                        if status != 200 { phase = .failed; return }
                        phase = chunked ? .chunkSize : .body
                    }
                case .chunkSize:
                    let byte = raw[index]
                    index += 1
                    if byte == 10 {
                        var size = 0
                        for digit in sizeLine {
                            let value: Int
                            switch digit {
                            case 48...57: value = Int(digit - 48)
                            case 97...102: value = Int(digit - 87)
                            case 65...70: value = Int(digit - 55)
                            default: value = -1
                            }
                            if value < 0 { break }
                            size = size * 16 + value
                        }
                        sizeLine.removeAll(keepingCapacity: true)
                        phase = size == 0 ? .failed : .chunkData(remaining: size)
                    } else if byte != 13 {
                        sizeLine.append(byte)
                    }
                case .chunkData(let remaining):
                    let take = min(remaining, count - index)
                    scan(raw, from: index, to: index + take, onEvent: onEvent)
                    index += take
                    phase = remaining - take == 0 ? .chunkDataEnd : .chunkData(remaining: remaining - take)
                case .chunkDataEnd:
                    // The CRLF after a chunk's data.
                    if raw[index] == 10 { phase = .chunkSize }
                    index += 1
                case .body:
                    scan(raw, from: index, to: count, onEvent: onEvent)
                    index = count
                }
            }
        }
    }

    private mutating func parseHead() {
        let text = String(decoding: headBytes, as: UTF8.self).lowercased()
        let parts = text.split(separator: " ", maxSplits: 2)
        status = parts.count > 1 ? Int(parts[1]) ?? 0 : 0
        chunked = text.contains("transfer-encoding: chunked")
        headBytes = []
    }

    private mutating func scan(_ raw: UnsafeRawBufferPointer, from start: Int, to end: Int, onEvent: (Int, UInt64) -> Void) {
        var index = start
        while index < end {
            let byte = raw[index]
            index += 1
            if byte == 10 {
                finishLine(onEvent: onEvent)
            } else if line.count < 64 {
                line.append(byte)
            }
        }
    }

    private mutating func finishLine(onEvent: (Int, UInt64) -> Void) {
        defer { line.removeAll(keepingCapacity: true) }
        // "data: <seq> <ns>"
        if line.count > 6 && line[0] == 100 && line[1] == 97 && line[2] == 116 && line[3] == 97 && line[4] == 58 {
            var index = line[5] == 32 ? 6 : 5
            var seq = 0
            var digits = 0
            while index < line.count, line[index] >= 48, line[index] <= 57 {
                seq = seq * 10 + Int(line[index] - 48)
                index += 1
                digits += 1
            }
            guard digits > 0, index < line.count, line[index] == 32 else { return }
            index += 1
            var sent: UInt64 = 0
            while index < line.count, line[index] >= 48, line[index] <= 57 {
                sent = sent * 10 + UInt64(line[index] - 48)
                index += 1
            }
            onEvent(seq, sent)
        } else if line.count > 3 && line[0] == 105 && line[1] == 100 && line[2] == 58 {
            lastID = Array(line[(line[3] == 32 ? 4 : 3)...])
            if lastID.last == 13 { lastID.removeLast() }
        }
    }
}
