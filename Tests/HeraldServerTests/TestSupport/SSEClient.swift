import HeraldCore

/// An event-stream subscriber over a raw connection: sends the GET, then decodes the
/// (de-chunked) body with the spec-conformant `SSEDecoder` from HeraldCore.
final class SSEClient: Sendable {
    let connection: RawConnection

    private init(connection: RawConnection) {
        self.connection = connection
    }

    static func open(port: Int, path: String, headers: [(String, String)] = [("Accept", "text/event-stream")],
                     version: String = "HTTP/1.1", reading: Bool = true, receiveBuffer: Int? = nil) async throws -> SSEClient {
        var head = "GET \(path) \(version)\r\nHost: 127.0.0.1:\(port)\r\n"
        for (name, value) in headers { head += "\(name): \(value)\r\n" }
        head += "\r\n"
        let connection = try await RawConnection.connect(
            port: port, reading: reading, receiveBuffer: receiveBuffer, sending: Array(head.utf8))
        return SSEClient(connection: connection)
    }

    /// The response head, once it has arrived.
    func head(timeout: Duration = .seconds(10)) async throws -> HTTPResponse {
        let bytes = try await connection.waitUntil("the stream's response head", timeout: timeout) { bytes, closed in
            HTTPResponseParser.find([13, 10, 13, 10], in: bytes) != nil || closed
        }
        guard let (head, _) = HTTPResponseParser.streamBody(bytes) else {
            throw TestTimeout(what: "a response head (connection closed)")
        }
        return head
    }

    /// Raw body bytes so far (after de-chunking).
    var body: [UInt8] {
        HTTPResponseParser.streamBody(connection.received)?.body ?? []
    }

    /// Every message decoded so far.
    var messages: [SSEMessage] {
        var decoder = SSEDecoder()
        return decoder.decode(body)
    }

    /// Dispatched events so far (excluding comments and retry hints).
    var events: [ReceivedEvent] {
        messages.compactMap { if case .event(let event) = $0 { return event } else { return nil } }
    }

    /// Events other than the server's `herald.*` control events.
    var dataEvents: [ReceivedEvent] {
        events.filter { !$0.type.hasPrefix("herald.") }
    }

    /// Waits until `condition` holds for the decoded messages.
    @discardableResult
    func waitFor(_ what: String, timeout: Duration = .seconds(10), _ condition: ([SSEMessage]) -> Bool) async throws -> [SSEMessage] {
        var decoder = SSEDecoder()
        var decodedUpTo = 0
        var messages: [SSEMessage] = []
        let deadline = ContinuousClock.now + timeout
        while true {
            let body = self.body
            if body.count > decodedUpTo {
                messages += decoder.decode(body[decodedUpTo...])
                decodedUpTo = body.count
            }
            if condition(messages) { return messages }
            if ContinuousClock.now >= deadline { throw TestTimeout(what: what) }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    /// Waits until `count` non-control events have arrived and returns them.
    func waitForDataEvents(_ count: Int, timeout: Duration = .seconds(10)) async throws -> [ReceivedEvent] {
        let messages = try await waitFor("\(count) events", timeout: timeout) { messages in
            Self.dataEvents(in: messages).count >= count
        }
        return Self.dataEvents(in: messages)
    }

    /// Waits for the data event with id `id` and returns every data event up to and
    /// including it. For negative checks: publish a marker event the stream must receive
    /// after the ones expected, and anything unwanted the server sent before it is in the list
    /// (the server delivers in id order).
    func waitForDataEvents(through id: Int64, timeout: Duration = .seconds(10)) async throws -> [ReceivedEvent] {
        let marker = String(id)
        let messages = try await waitFor("the event with id \(id)", timeout: timeout) { messages in
            Self.dataEvents(in: messages).contains { $0.lastEventID == marker }
        }
        let events = Self.dataEvents(in: messages)
        let end = events.firstIndex { $0.lastEventID == marker }!
        return Array(events[...end])
    }

    /// Waits for the `herald.hello` event and returns its JSON.
    func hello(timeout: Duration = .seconds(10)) async throws -> JSONValue {
        let messages = try await waitFor("herald.hello", timeout: timeout) { messages in
            messages.contains { if case .event(let e) = $0 { return e.type == "herald.hello" } else { return false } }
        }
        for case .event(let event) in messages where event.type == "herald.hello" {
            return try JSON.parse(event.data)
        }
        throw TestTimeout(what: "herald.hello")
    }

    static func dataEvents(in messages: [SSEMessage]) -> [ReceivedEvent] {
        messages.compactMap { if case .event(let event) = $0, !event.type.hasPrefix("herald.") { return event } else { return nil } }
    }

    func close() async { await connection.close() }
}
