/// One event as a publisher asked for it, validated, before it has an id.
public struct EventDraft: Equatable, Sendable {
    /// The topics it goes to (empty for a direct message).
    public var topics: [String]
    /// The `event:` type, nil for the default `message`.
    public var type: String?
    public var data: String

    public init(topics: [String], type: String?, data: String) {
        self.topics = topics
        self.type = type
        self.data = data
    }
}

/// A rejected publish body: the HTTP status to answer with and a detail naming the line or
/// field at fault.
public struct PublishError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Status: Int, Sendable {
        case badRequest = 400
        case payloadTooLarge = 413
        case unsupportedMediaType = 415
    }
    public var status: Status
    public var detail: String
    public init(_ status: Status, _ detail: String) {
        self.status = status
        self.detail = detail
    }
    public var description: String { "\(status.rawValue): \(detail)" }
}

/// Parses publish bodies in the four formats of SPEC §2 and applies the query defaults and
/// every validation rule, so that what comes out can be published as is.
public struct PublishParser: Sendable {
    /// Topics from the query string, used by events whose body names none.
    public var queryTopics: [String]
    /// Type from the query string, used by events that set none.
    public var queryType: String?
    /// Direct messages (`POST /clients/{token}/events`) need no topic and ignore any given.
    public var isDirect: Bool
    /// `--max-event-bytes`: the UTF-8 size limit of one event's data.
    public var maxEventBytes: Int

    public init(queryTopics: [String], queryType: String?, isDirect: Bool, maxEventBytes: Int) {
        self.queryTopics = queryTopics
        self.queryType = queryType
        self.isDirect = isDirect
        self.maxEventBytes = maxEventBytes
    }

    /// The body formats, chosen by `Content-Type`.
    public enum Format: Equatable, Sendable {
        case eventStream, ndjson, form, raw
    }

    /// Chooses the format and checks the charset (`utf-8` or `us-ascii`, else 415).
    public static func format(contentType: String?) throws(PublishError) -> Format {
        guard let contentType else { return .raw }
        // The common spellings exactly (an ASCII comparison), before the general media-type
        // parse: at 1000 single-event publishes/s the parse was 2 % of the server's CPU.
        switch contentType {
        case "text/plain", "text/plain; charset=utf-8", "application/json", "application/octet-stream": return .raw
        case "application/x-ndjson": return .ndjson
        case "text/event-stream": return .eventStream
        case "application/x-www-form-urlencoded": return .form
        default: break
        }
        guard !contentType.trimmingSpaces().isEmpty else { return .raw }
        guard let media = MediaType(contentType) else {
            throw PublishError(.badRequest, "Content-Type '\(contentType.prefix(80))' is not a media type")
        }
        if let charset = media.parameters["charset"]?.lowercased(), charset != "utf-8", charset != "utf8", charset != "us-ascii" {
            throw PublishError(.unsupportedMediaType, "charset '\(charset)' is not supported: send UTF-8 (charset=utf-8)")
        }
        switch media.essence {
        case "text/event-stream": return .eventStream
        case "application/x-ndjson", "application/ndjson", "application/jsonl": return .ndjson
        case "application/x-www-form-urlencoded": return .form
        default: return .raw
        }
    }

    /// Parses and validates a whole body into events, all or nothing.
    public func parse(body: [UInt8], contentType: String?) throws(PublishError) -> [EventDraft] {
        let format = try Self.format(contentType: contentType)
        guard let text = String(validating: body, as: UTF8.self) else {
            throw PublishError(.badRequest, "the body is not valid UTF-8 (\(Self.firstInvalidUTF8(body)))")
        }
        let defaultType = try validatedQueryType()
        var drafts: [EventDraft]
        switch format {
        case .raw:
            drafts = [try finish(topics: nil, type: nil, data: text, defaultType: defaultType, place: "the body")]
        case .form:
            drafts = [try parseForm(body, defaultType: defaultType)]
        case .ndjson:
            drafts = try parseNDJSON(text, defaultType: defaultType)
        case .eventStream:
            drafts = try parseEventStream(body, defaultType: defaultType)
        }
        if drafts.isEmpty {
            throw PublishError(.badRequest, "the body holds no event")
        }
        return drafts
    }

    private func validatedQueryType() throws(PublishError) -> String? {
        guard let queryType else { return nil }
        do { try TopicRules.validate(type: queryType) } catch { throw PublishError(.badRequest, "query parameter 'type': \(error.detail)") }
        return queryType
    }

    /// Applies defaults and validates one event; `place` names it in error details.
    private func finish(topics: [String]?, type: String?, data: String, defaultType: String?, place: String) throws(PublishError) -> EventDraft {
        let dataBytes = data.utf8.count
        if dataBytes > maxEventBytes {
            throw PublishError(.payloadTooLarge, "\(place): the data is \(dataBytes) bytes; --max-event-bytes allows \(maxEventBytes)")
        }
        if let type {
            do { try TopicRules.validate(type: type) } catch { throw PublishError(.badRequest, "\(place): \(error.detail)") }
        }
        if isDirect {
            return EventDraft(topics: [], type: type ?? defaultType, data: data)
        }
        let chosen = topics ?? queryTopics
        if chosen.isEmpty {
            throw PublishError(.badRequest, "\(place): no topic; add ?topic=NAME to the URL or name one in the body")
        }
        if chosen.count > TopicRules.maxTopicsPerRequest {
            throw PublishError(.badRequest, "\(place): \(chosen.count) topics; at most \(TopicRules.maxTopicsPerRequest) per event")
        }
        var unique: [String] = []
        for topic in chosen {
            do { try TopicRules.validate(topic: topic, forSubscription: false) } catch { throw PublishError(.badRequest, "\(place): \(error.detail)") }
            if !unique.contains(where: { $0.bytesEqual(topic) }) { unique.append(topic) }
        }
        return EventDraft(topics: unique, type: type ?? defaultType, data: data)
    }

    private func parseForm(_ body: [UInt8], defaultType: String?) throws(PublishError) -> EventDraft {
        let pairs: [(name: String, value: String)]
        do { pairs = try FormURLEncoded.parse(body) } catch { throw PublishError(.badRequest, "form body: \(error.detail)") }
        var topics: [String] = []
        var type: String?
        var data: String?
        for (name, value) in pairs {
            switch name {
            case "topic": topics.append(value)
            case "type":
                if type != nil { throw PublishError(.badRequest, "form field 'type' is given twice") }
                type = value
            case "data":
                if data != nil { throw PublishError(.badRequest, "form field 'data' is given twice; a form body carries one event") }
                data = value
            default: continue
            }
        }
        guard let data else {
            throw PublishError(
                .badRequest,
                "form body has no 'data' field. curl -d sends a form: send raw text with -H 'Content-Type: text/plain' --data-binary @file, or a form field data=..."
            )
        }
        return try finish(topics: topics.isEmpty ? nil : topics, type: type, data: data, defaultType: defaultType, place: "form field 'data'")
    }

    private func parseNDJSON(_ text: String, defaultType: String?) throws(PublishError) -> [EventDraft] {
        var drafts: [EventDraft] = []
        var lineNumber = 0
        // Split on LF bytes: as `Character`s, CR LF is one grapheme and would never match
        // "\n". A CR before the LF is JSON whitespace, so CRLF line ends work too.
        for rawLine in Array(text.utf8).split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            lineNumber += 1
            if rawLine.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) { continue }
            let place = "NDJSON line \(lineNumber)"
            let value: JSONValue
            do { value = try JSON.parse(bytes: Array(rawLine)) } catch { throw PublishError(.badRequest, "\(place): malformed JSON: \(error)") }
            guard case .object = value else { throw PublishError(.badRequest, "\(place): expected a JSON object like {\"topic\":\"t\",\"data\":...}") }
            var topics: [String]?
            switch value["topic"] {
            case nil, .null?: topics = nil
            case .string(let topic)?: topics = [topic]
            case .array(let items)?:
                var list: [String] = []
                for item in items {
                    guard case .string(let topic) = item else { throw PublishError(.badRequest, "\(place): 'topic' must be a string or an array of strings") }
                    list.append(topic)
                }
                if list.isEmpty { throw PublishError(.badRequest, "\(place): 'topic' is an empty array") }
                topics = list
            default: throw PublishError(.badRequest, "\(place): 'topic' must be a string or an array of strings")
            }
            var type: String?
            switch value["type"] {
            case nil, .null?: type = nil
            case .string(let text)?: type = text
            default: throw PublishError(.badRequest, "\(place): 'type' must be a string")
            }
            let data: String
            switch value["data"] {
            case nil: throw PublishError(.badRequest, "\(place): 'data' is missing (use null for an empty value)")
            case .string(let text)?: data = text
            case let other?: data = other.compactText
            }
            drafts.append(try finish(topics: topics, type: type, data: data, defaultType: defaultType, place: place))
        }
        return drafts
    }

    private func parseEventStream(_ body: [UInt8], defaultType: String?) throws(PublishError) -> [EventDraft] {
        var drafts: [EventDraft] = []
        var parser = SSELineParser()
        var data: [String] = []
        var hasData = false
        var type: String?
        var topics: [String] = []
        var blockStart: Int?
        func dispatch(endLine: Int) throws(PublishError) {
            defer {
                data = []; hasData = false; type = nil; topics = []; blockStart = nil
            }
            guard let start = blockStart else { return }
            let place = "event at line \(start)"
            guard hasData else {
                throw PublishError(.badRequest, "\(place) has no 'data:' line (an empty value is written 'data:')")
            }
            drafts.append(try finish(
                topics: topics.isEmpty ? nil : topics, type: type, data: data.joined(separator: "\n"),
                defaultType: defaultType, place: place))
        }
        func handle(_ line: SSELineParser.Line, _ number: Int) throws(PublishError) {
            switch line {
            case .blank:
                try dispatch(endLine: number)
            case .comment:
                break
            case .field(let name, let value):
                if blockStart == nil { blockStart = number }
                switch name {
                case "data": data.append(value); hasData = true
                case "event": type = value
                case "topic": topics.append(value)
                default: break  // id:, retry: and unknown fields are ignored
                }
            }
        }
        // The line parser's closure cannot throw typed errors through `rethrows`, so errors
        // are carried out of it by hand; lines are counted here for the same reason.
        var failure: PublishError?
        var lineNumber = 0
        let onLine: (SSELineParser.Line) -> Void = { line in
            lineNumber += 1
            guard failure == nil else { return }
            do throws(PublishError) { try handle(line, lineNumber) } catch { failure = error }
        }
        parser.feed(body, onLine: onLine)
        parser.finish(completeTrailingLine: true, onLine: onLine)
        if let failure { throw failure }
        try dispatch(endLine: lineNumber + 1)
        return drafts
    }

    static func firstInvalidUTF8(_ bytes: [UInt8]) -> String {
        var iterator = bytes.makeIterator()
        var decoder = UTF8()
        var offset = 0
        var lastOffset = 0
        loop: while true {
            lastOffset = offset
            switch decoder.decode(&iterator) {
            case .scalarValue(let scalar): offset += String(scalar).utf8.count
            case .emptyInput: break loop
            case .error: return "first bad byte near offset \(lastOffset)"
            }
        }
        return "invalid sequence"
    }
}
