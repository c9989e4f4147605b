import ArgumentParser
import HeraldClient
import HeraldCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Writes a line to standard output at once, with one `write` (no buffer: a pipe reader sees
/// each event as it comes).
private func emit(_ line: String) {
    writeAll(1, line + "\n")
}

private func warn(_ line: String) {
    writeAll(2, line + "\n")
}

private func writeAll(_ descriptor: Int32, _ text: String) {
    var bytes = Array(text.utf8)[...]
    while !bytes.isEmpty {
        let written = bytes.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
        if written < 0 {
            if errno == EINTR { continue }
            // Nobody reads any more (`herald sub | head -1`): stop, as a pipeline expects.
            // (SIGPIPE is ignored in this process: SwiftNIO ignores it for its sockets.)
            if errno == EPIPE { _exit(0) }
            return
        }
        bytes = bytes.dropFirst(written)
    }
}

private func environment(_ name: String) -> String? {
    getenv(name).map { String(cString: $0) }
}

private let defaultURL = "http://127.0.0.1:8080"

/// `herald sub` (SPEC §15): prints each event as it arrives, reconnects by itself.
struct SubCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "herald sub",
        abstract: "Subscribe to topics and print each event as it arrives (reconnects and resumes by itself).",
        discussion: """
        Output: one line per event, 'ID TYPE DATA' ('-' for no type, line breaks in the data as \\n), or with --json \
        {"id","type","data"} per line. Resets and reconnects are reported on stderr; stdout carries nothing but events. \
        Exits 0 on Ctrl-C; exits 1 with the server's reason when it refuses the subscription (401, 403) or the token expires.
        Example: herald sub 'quotes/*'
        """)

    @Option(help: "The server (default: HERALD_URL, else \(defaultURL)).") var url: String?
    @Option(help: "A client token: also receive the direct messages sent to it.") var client: String?
    @Option(name: .customLong("last-event-id"), help: "Resume after this id.") var lastEventID: String?
    @Option(help: "A subscriber token (JWT) for a server with --subscriber-key.") var token: String?
    @Flag(help: "Print one JSON object per event.") var json = false
    @Argument(help: "Topics: exact names, 'prefix/*' or '*'.") var topics: [String] = []

    func validate() throws {
        if topics.isEmpty && client == nil && token == nil {
            throw ArgumentParser.ValidationError("name at least one topic (or --client TOKEN)")
        }
    }

    func run() async throws {
        signal(SIGINT) { _ in _exit(0) }
        let client: HeraldClient
        do {
            client = try HeraldClient(url: url ?? environment("HERALD_URL") ?? defaultURL, token: token)
        } catch {
            throw ArgumentParser.ValidationError(error.description)
        }
        do {
            for try await message in client.subscribe(topics: topics, client: self.client, lastEventID: lastEventID) {
                switch message {
                case .event(let event):
                    emit(json ? Self.jsonLine(event) : Self.plainLine(event))
                case .reset(let reason, let lastEventID):
                    warn("herald sub: herald.reset (\(reason)): events after \(lastEventID.isEmpty ? "the start" : lastEventID) are gone; going on from the newest")
                case .expired(let exp):
                    // The same token would be refused (401) once the server's leeway is over:
                    // stop now rather than reconnect with it until then.
                    warn("herald sub: herald.expired: the token expired at \(exp); get a new one (herald token) and subscribe again")
                    throw ExitCode(1)
                case .reconnecting(let delay, let reason):
                    warn("herald sub: \(reason); reconnecting in \(String(format: "%.1f", delay)) s")
                case .opened:
                    continue
                }
            }
        } catch let error as HeraldClientError {
            warn("herald sub: \(error.description)")
            throw ExitCode(1)
        }
    }

    static func plainLine(_ event: HeraldClient.Event) -> String {
        "\(event.id) \(event.type ?? "-") \(event.data.replacingNewlines())"
    }

    static func jsonLine(_ event: HeraldClient.Event) -> String {
        var out = "{\"id\":"
        JSON.appendQuoted(event.id, to: &out)
        out += ",\"type\":"
        if let type = event.type { JSON.appendQuoted(type, to: &out) } else { out += "null" }
        out += ",\"data\":"
        JSON.appendQuoted(event.data, to: &out)
        return out + "}"
    }
}

/// `herald pub` (SPEC §15): publishes an argument, standard input, or NDJSON batches.
struct PubCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "herald pub",
        abstract: "Publish DATA (or standard input) to TOPIC and print the ids.",
        discussion: """
        Examples: herald pub news 'hello'   ·   echo hello | herald pub news   ·   herald pub --ndjson news < events.ndjson
        One trailing line break of standard input is dropped. With --ndjson, standard input is sent as NDJSON batches \
        (one per 1000 lines or 50 ms; TOPIC and --topic are the topics of lines that name none; with --idempotency-key K \
        batch n > 1 uses K.n). Exits 1 with the server's reason on an error.
        """)

    @Option(help: "The server (default: HERALD_URL, else \(defaultURL)).") var url: String?
    @Option(help: "A publish key (default: HERALD_PUBLISH_KEY).") var key: String?
    @Option(help: "The event type.") var type: String?
    @Flag(help: "Make it the topic's retained event.") var retain = false
    @Option(name: .customLong("idempotency-key"), help: "Publish once, however often this is retried.") var idempotencyKey: String?
    @Option(name: .customLong("topic"), help: "Another topic (repeatable).") var extraTopics: [String] = []
    @Flag(help: "Send standard input as NDJSON batches.") var ndjson = false
    @Argument(help: "TOPIC [DATA]") var arguments: [String] = []

    func validate() throws {
        if ndjson {
            guard arguments.count <= 1 else { throw ArgumentParser.ValidationError("with --ndjson, give at most a TOPIC (the data comes from standard input)") }
        } else {
            guard (1...2).contains(arguments.count) else { throw ArgumentParser.ValidationError("give TOPIC and optionally DATA (else standard input is the data)") }
        }
    }

    func run() async throws {
        let client: HeraldClient
        do {
            client = try HeraldClient(url: url ?? environment("HERALD_URL") ?? defaultURL,
                                      publishKey: key ?? environment("HERALD_PUBLISH_KEY").flatMap { $0.split(separator: ",").first.map(String.init) })
        } catch {
            throw ArgumentParser.ValidationError(error.description)
        }
        let topics = Array(arguments.prefix(1)) + extraTopics
        do {
            if ndjson {
                try await publishBatches(client, topics: topics)
            } else {
                let data = arguments.count == 2 ? arguments[1] : Self.readStandardInput()
                for id in try await client.publish(data, to: topics, type: type, retain: retain, idempotencyKey: idempotencyKey) {
                    emit(String(id))
                }
            }
        } catch let error as HeraldClientError {
            warn("herald pub: \(error.description)")
            throw ExitCode(1)
        }
    }

    /// All of standard input, less one trailing line break.
    static func readStandardInput() -> String {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = read(0, &chunk, chunk.count)
            if count <= 0 { break }
            bytes += chunk[0..<count]
        }
        if bytes.last == UInt8(ascii: "\n") {
            bytes.removeLast()
            if bytes.last == UInt8(ascii: "\r") { bytes.removeLast() }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Reads standard input line by line and sends a batch every 1000 lines or 50 ms after
    /// its first line, whichever comes first, in order (each batch waits for the previous).
    private func publishBatches(_ client: HeraldClient, topics: [String]) async throws {
        var pending: [UInt8] = []
        var batch: [String] = []
        var batchStarted: timespec?
        var batchNumber = 0
        var endOfInput = false
        var chunk = [UInt8](repeating: 0, count: 65_536)
        var batchBytes = 0

        func send() async throws {
            guard !batch.isEmpty else { return }
            batchNumber += 1
            let key = idempotencyKey.map { batchNumber == 1 ? $0 : "\($0).\(batchNumber)" }
            for id in try await client.publishNDJSON(batch, topics: topics, type: type, retain: retain, idempotencyKey: key) {
                emit(String(id))
            }
            batch.removeAll(keepingCapacity: true)
            batchBytes = 0
            batchStarted = nil
        }

        while !endOfInput {
            var timeout: Int32 = -1
            if let started = batchStarted {
                timeout = Int32(max(0, 50 - Self.milliseconds(since: started)))
            }
            var descriptor = pollfd(fd: 0, events: Int16(POLLIN), revents: 0)
            let ready = poll(&descriptor, 1, timeout)
            if ready > 0 {
                let count = read(0, &chunk, chunk.count)
                if count <= 0 {
                    endOfInput = true
                } else {
                    pending += chunk[0..<count]
                    while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                        var line = Array(pending[..<newline])
                        pending.removeSubrange(...newline)
                        if line.last == UInt8(ascii: "\r") { line.removeLast() }
                        if line.allSatisfy({ $0 == 32 || $0 == 9 }) { continue } // blank lines are skipped
                        // A batch also ends before it would outgrow the server's default body
                        // limit (--max-body-bytes, 1 MiB).
                        if !batch.isEmpty && batchBytes + line.count + 1 > Self.maxBatchBytes { try await send() }
                        if batchStarted == nil { batchStarted = Self.now() }
                        batch.append(String(decoding: line, as: UTF8.self))
                        batchBytes += line.count + 1
                        if batch.count == 1000 { try await send() }
                    }
                }
            } else if ready < 0 && errno != EINTR {
                endOfInput = true
            }
            if let started = batchStarted, Self.milliseconds(since: started) >= 50 { try await send() }
        }
        if !pending.isEmpty, !pending.allSatisfy({ $0 == 32 || $0 == 9 || $0 == 13 }) {
            batch.append(String(decoding: pending, as: UTF8.self))
        }
        try await send()
    }

    static let maxBatchBytes = 1_000_000

    static func now() -> timespec {
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &spec)
        return spec
    }

    static func milliseconds(since start: timespec) -> Int {
        let end = now()
        return (end.tv_sec - start.tv_sec) * 1000 + (end.tv_nsec - start.tv_nsec) / 1_000_000
    }
}

private extension String {
    /// Line breaks as the two characters `\n`, so one event is one line.
    func replacingNewlines() -> String {
        var out = ""
        out.reserveCapacity(utf8.count)
        for character in self {
            if character == "\n" || character == "\r\n" || character == "\r" { out += "\\n" } else { out.append(character) }
        }
        return out
    }
}
