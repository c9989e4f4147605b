import HeraldCore

/// A parsed HTTP response.
struct HTTPResponse: Sendable {
    var status: Int
    var headers: [(String, String)]
    var body: [UInt8]

    func header(_ name: String) -> String? {
        headers.first { $0.0.lowercased() == name.lowercased() }?.1
    }

    func headers(_ name: String) -> [String] {
        headers.filter { $0.0.lowercased() == name.lowercased() }.map(\.1)
    }

    var text: String { String(decoding: body, as: UTF8.self) }

    var json: JSONValue? { try? JSON.parse(bytes: body) }
}

/// Parses HTTP/1.1 responses out of raw bytes (Content-Length, chunked, or close-delimited).
enum HTTPResponseParser {
    /// Parses the first response in `bytes`; returns it and how many bytes it used, or nil
    /// when more bytes are needed. `closed` lets a close-delimited body end.
    static func parse(_ bytes: [UInt8], closed: Bool, requestMethod: String = "GET") -> (HTTPResponse, Int)? {
        guard let headEnd = find([13, 10, 13, 10], in: bytes) else { return nil }
        let headText = String(decoding: bytes[..<headEnd], as: UTF8.self)
        var lines = headText.components(separatedBy: "\r\n")
        let statusLine = lines.removeFirst().split(separator: " ")
        guard statusLine.count >= 2, let status = Int(statusLine[1]) else { return nil }
        var headers: [(String, String)] = []
        for line in lines {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers.append((String(line[..<colon]), line[line.index(after: colon)...].trimmingSpaces()))
        }
        var response = HTTPResponse(status: status, headers: headers, body: [])
        let bodyStart = headEnd + 4
        if requestMethod == "HEAD" || status == 204 || status == 304 || (100..<200).contains(status) {
            return (response, bodyStart)
        }
        if let length = response.header("content-length").flatMap(Int.init) {
            guard bytes.count - bodyStart >= length else { return nil }
            response.body = Array(bytes[bodyStart..<(bodyStart + length)])
            return (response, bodyStart + length)
        }
        if response.header("transfer-encoding")?.lowercased() == "chunked" {
            var decoder = ChunkedDecoder()
            let body = decoder.decode(Array(bytes[bodyStart...]))
            guard decoder.finished else { return closed ? nil : nil }
            response.body = body
            return (response, bodyStart + decoder.consumed)
        }
        guard closed else { return nil }
        response.body = Array(bytes[bodyStart...])
        return (response, bytes.count)
    }

    /// The response head and the (de-chunked) body received so far, for streams.
    static func streamBody(_ bytes: [UInt8]) -> (head: HTTPResponse, body: [UInt8])? {
        guard let headEnd = find([13, 10, 13, 10], in: bytes),
              let (head, _) = parse(Array(bytes[..<(headEnd + 4)]) + [], closed: true, requestMethod: "HEAD")
        else { return nil }
        let rest = Array(bytes[(headEnd + 4)...])
        if head.header("transfer-encoding")?.lowercased() == "chunked" {
            var decoder = ChunkedDecoder()
            return (head, decoder.decode(rest))
        }
        return (head, rest)
    }

    static func find(_ needle: [UInt8], in haystack: [UInt8], from start: Int = 0) -> Int? {
        guard haystack.count >= needle.count else { return nil }
        var index = start
        while index <= haystack.count - needle.count {
            if haystack[index] == needle[0] && Array(haystack[index..<(index + needle.count)]) == needle { return index }
            index += 1
        }
        return nil
    }
}

/// Decodes a chunked body; `finished` once the last chunk and trailers were read.
struct ChunkedDecoder {
    var finished = false
    var consumed = 0

    mutating func decode(_ bytes: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        var index = 0
        while index < bytes.count {
            guard let lineEnd = HTTPResponseParser.find([13, 10], in: bytes, from: index) else { break }
            let sizeText = String(decoding: bytes[index..<lineEnd], as: UTF8.self).split(separator: ";").first ?? ""
            guard let size = Int(sizeText.trimmingSpaces(), radix: 16) else { break }
            let dataStart = lineEnd + 2
            if size == 0 {
                guard let end = HTTPResponseParser.find([13, 10], in: bytes, from: dataStart) else { break }
                finished = true
                consumed = end + 2
                return out
            }
            guard bytes.count >= dataStart + size + 2 else { break }
            out.append(contentsOf: bytes[dataStart..<(dataStart + size)])
            index = dataStart + size + 2
            consumed = index
        }
        return out
    }
}

/// One-shot HTTP requests over a fresh connection each (`Connection: close`).
enum HTTPTestClient {
    static func request(
        port: Int, method: String = "GET", path: String, headers: [(String, String)] = [], body: [UInt8] = [],
        timeout: Duration = .seconds(10)
    ) async throws -> HTTPResponse {
        var head = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nConnection: close\r\n"
        for (name, value) in headers { head += "\(name): \(value)\r\n" }
        if !body.isEmpty || method == "POST" || method == "PUT" { head += "Content-Length: \(body.count)\r\n" }
        head += "\r\n"
        let connection = try await RawConnection.connect(port: port, sending: Array(head.utf8) + body)
        let bytes = try await connection.waitUntil("a response to \(method) \(path)", timeout: timeout) { bytes, closed in
            HTTPResponseParser.parse(bytes, closed: closed, requestMethod: method) != nil || closed
        }
        await connection.close()
        guard let (response, _) = HTTPResponseParser.parse(bytes, closed: true, requestMethod: method) else {
            throw TestTimeout(what: "a parsable response to \(method) \(path) (got \(bytes.count) bytes)")
        }
        return response
    }

    static func get(_ port: Int, _ path: String, headers: [(String, String)] = []) async throws -> HTTPResponse {
        try await request(port: port, path: path, headers: headers)
    }

    /// Publishes and returns the response (200 with ids, or an error).
    static func post(_ port: Int, _ path: String, body: String, contentType: String? = "text/plain",
                     headers: [(String, String)] = []) async throws -> HTTPResponse {
        var all = headers
        if let contentType { all.append(("Content-Type", contentType)) }
        return try await request(port: port, method: "POST", path: path, headers: all, body: Array(body.utf8))
    }

    /// Publishes and returns the assigned ids, failing the test on a non-200.
    static func publish(_ port: Int, _ path: String, body: String, contentType: String? = "text/plain",
                        headers: [(String, String)] = []) async throws -> [Int64] {
        let response = try await post(port, path, body: body, contentType: contentType, headers: headers)
        guard response.status == 200, case .array(let items)? = response.json?["ids"] else {
            throw PublishFailed(status: response.status, body: response.text)
        }
        return items.compactMap { item in
            if case .string(let text) = item { return Int64(text) } else { return nil }
        }
    }
}

struct PublishFailed: Error, CustomStringConvertible {
    var status: Int
    var body: String
    var description: String { "publish failed: \(status) \(body)" }
}
