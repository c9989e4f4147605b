import HTTPTypes
import HeraldCore
import NIOCore

/// What the publish fast path tells the connection's ``HTTPHandler``, whose connection
/// machine keeps the timers.
enum PublishFastPathEvent {
    /// A request was answered below the HTTP codec; the connection is idle again.
    case answered
    /// A request's head is in, its body is still arriving: its time limit starts.
    case awaitingBody
    /// That answer ends the connection.
    case closing
}

/// The publish fast path of an HTTP/1.1 connection: a handler in front of NIO's HTTP decoder
/// that answers a plain single-request publish itself (``PlainPostRequest``) and hands every
/// other byte to the general path unchanged.
///
/// Why it exists: at low rates a single-event publish costs Herald about 2× Nginx+Nchan's
/// user CPU, most of it in the general request path (NIO's decoder building a request head
/// and its headers, the pipelining and response-validation handlers, three response writes
/// through the encoder). The endpoint itself is shared: the request becomes the same
/// ``EndpointRequest`` and goes through the same ``Responders`` (authorisation, validation,
/// publishing, the answer); only the HTTP/1.1 reading and writing are done here, in one
/// pass and one write. The README's "Low rates" has the measurements.
///
/// It works only while every byte of the connection has come through it, so nothing sits in
/// the decoder and no answer is outstanding: the first request it does not take (or a
/// refusal, which the general path words and counts) turns it off for the connection's
/// life, as does anything the ``HTTPHandler`` starts (a timeout, a request of its own). It is
/// installed only when the store commits inline (`--store memory`): a durable store's
/// commit is asynchronous and costs far more than the parsing saved here.
final class PublishFastPath: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let server: ServerContext
    private let responders: Responders
    private let maxHeadBytes: Int
    private let maxBodyBytes: Int
    private(set) var active = true
    /// The connection's HTTP handler and its context, set by the handler while it is in the
    /// pipeline (and cleared when it leaves, which breaks the reference cycle). Called
    /// directly rather than through a user event: a pass down the pipeline per publish
    /// measured 1.6 % of the server's CPU.
    var connection: (handler: HTTPHandler, context: ChannelHandlerContext)?
    /// The start of a plain request whose rest has not arrived yet, and in how many reads.
    private var partial: ByteBuffer?
    private var pieces = 0
    /// That request's head, once it is in: later reads only wait for its body's bytes.
    private var waitingHead: PlainPostRequest?
    static let maxPieces = 16
    /// Subscriptions on this loop up to which a publish is delivered before its answer.
    static let deliverFirstLimit = 16
    private var peerIsLoopbackCache: Bool?
    private var shard: Shard?

    /// The shard of this connection's loop (none on a test's embedded loop).
    private func localShard(_ context: ChannelHandlerContext) -> Shard? {
        if let shard { return shard }
        shard = server.hub.shardIfPresent(for: context.eventLoop)
        return shard
    }

    init(server: ServerContext, responders: Responders) {
        self.server = server
        self.responders = responders
        // Read once: copying the configuration (a struct of strings and arrays) per request
        // costs its reference counting.
        self.maxHeadBytes = server.configuration.maxHeaderBytes
        self.maxBodyBytes = server.configuration.maxBodyBytes
    }

    private func report(_ event: PublishFastPathEvent) {
        guard let connection else { return }
        connection.handler.fastPathReport(event, context: connection.context)
    }

    /// Whether connections of `server` get the fast path.
    static func applies(to server: ServerContext) -> Bool {
        server.configuration.publishFastPath && server.hub.store.commitsInline
    }

    /// The general path has started something: every byte goes there from now on.
    func disable() {
        active = false
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        if var earlier = partial {
            // A request arriving in pieces (a body larger than the first read): the pieces
            // so far, then this one.
            partial = nil
            earlier.writeBuffer(&buffer)
            buffer = earlier
        }
        guard active else {
            // Disabled while a request waited in pieces (its timer ran out): its bytes still
            // go first, so the general path sees the connection's bytes in order.
            waitingHead = nil
            context.fireChannelRead(wrapInboundOut(buffer))
            return
        }
        while context.channel.isActive {
            let scan: PlainPostRequest.Scan
            if let head = waitingHead {
                // The head was read in an earlier look: only the body's length matters now.
                scan = buffer.readableBytes >= head.end ? .request(head) : .incomplete(head: head)
            } else {
                scan = buffer.withUnsafeReadableBytes {
                    PlainPostRequest.scan($0, maxHeadBytes: maxHeadBytes, maxBodyBytes: maxBodyBytes)
                }
            }
            switch scan {
            case .request(let request):
                pieces = 0
                waitingHead = nil
                guard take(request, in: buffer, context: context, deliverFirst: buffer.readableBytes == request.end) else { break }
                // Pipelined requests behind it: the next one starts where this one ended.
                buffer.moveReaderIndex(forwardBy: request.end)
                if buffer.readableBytes == 0 { return }
                if active { continue }
            case .incomplete(let head) where pieces < Self.maxPieces:
                // Until its head is in, each look rescans it: a head trickled in byte by byte
                // is not worth more than a few looks, and goes to the general path, which
                // reads incrementally. (A request handed over after waiting keeps its body's
                // deadline: see HTTPConnectionMachine.headReceived.)
                if let head, waitingHead == nil {
                    // The head is in: only a publish the general path would read the body of
                    // is waited for (anything else it answers from the head at once).
                    guard admit(head, context: context) != nil else { break }
                    waitingHead = head
                    report(.awaitingBody)
                }
                pieces += 1
                partial = buffer
                return
            case .incomplete, .other:
                break
            }
            active = false
            pieces = 0
            waitingHead = nil
            context.fireChannelRead(wrapInboundOut(buffer))
            return
        }
        // The connection closed while pipelined requests were being read: like the general
        // path, nothing more is answered or published.
    }

    func channelInactive(context: ChannelHandlerContext) {
        active = false
        partial = nil
        waitingHead = nil
        context.fireChannelInactive()
    }

    /// What the head of a request the fast path takes gives the endpoint.
    private struct Admitted {
        var route: Route
        var fields: HTTPFields
        var host: String?
        var credentials: RequestCredentials
    }

    /// Whether the fast path takes the request whose head is `parsed`: a publish route, and
    /// not refused from the head (a refusal is the general path's to word and count).
    private func admit(_ parsed: PlainPostRequest, context: ChannelHandlerContext) -> Admitted? {
        let route = Route(path: parsed.path)
        switch route {
        case .events, .clientEvents: break
        default: return nil
        }
        var fields = HTTPFields()
        fields.reserveCapacity(parsed.fields.count)
        var authorization: String?
        var host: String?
        var origin: String?
        var fetchSite: String?
        for (name, value) in parsed.fields {
            guard let fieldName = HTTPField.Name(name) else { return nil }
            fields.append(HTTPField(name: fieldName, value: value))
            // The first of each, as the general path reads them (the parser let one Host through).
            if fieldName == .authorization {
                if authorization == nil { authorization = value }
            } else if fieldName == .origin {
                if origin == nil { origin = value }
            } else if fieldName == .secFetchSite {
                if fetchSite == nil { fetchSite = value }
            } else if fieldName.canonicalName == "host" {
                host = value
            }
        }
        let credentials = RequestCredentials(
            authorization: authorization, hosts: host.map { [$0] } ?? [], origin: origin, fetchSite: fetchSite,
            peerIsLoopback: peerIsLoopback(context))
        guard responders.refusalAtHead(method: .post, route: route, credentials: credentials) == nil else { return nil }
        return Admitted(route: route, fields: fields, host: host, credentials: credentials)
    }

    /// Answers `parsed` (read from `buffer`) when it is a publish the fast path may take;
    /// false, having done nothing, otherwise.
    private func take(_ parsed: PlainPostRequest, in buffer: ByteBuffer, context: ChannelHandlerContext, deliverFirst: Bool) -> Bool {
        // Back-pressure: with unsent output over its limit the general path holds requests.
        guard context.channel.isWritable, let admitted = admit(parsed, context: context) else { return false }
        let body = parsed.bodyLength > 0 ? buffer.getSlice(at: buffer.readerIndex + parsed.bodyOffset, length: parsed.bodyLength) : nil
        let request = EndpointRequest(
            head: HTTPRequest(method: .post, scheme: nil, authority: admitted.host, path: parsed.target, headerFields: admitted.fields),
            body: body, credentials: admitted.credentials, streamsCloseDelimited: false,
            eventLoop: context.eventLoop, allocator: context.channel.allocator)
        server.metrics.fastPathRequests.increment()
        // Published here and now: the fast path exists only where the store commits inline.
        let published = responders.publishInline(request, route: admitted.route)
        // The last request of this read: this loop's few subscribers first (see
        // Shard.deliverNowIfSmall), before the answer is even built; within a pipelined burst,
        // deliveries coalesce.
        if deliverFirst { localShard(context)?.deliverNowIfSmall(limit: Self.deliverFirstLimit) }
        switch published {
        case .refused(let refusal): write(refusal, context: context)
        case .committed(let outcome): write(responders.published(outcome, request), context: context)
        }
        return true
    }

    /// Writes `answer` as one buffer: what NIO's encoder would write for it, with the
    /// `Content-Length` the general path adds.
    private func write(_ answer: EndpointAnswer, context: ChannelHandlerContext) {
        guard context.channel.isActive else { return }
        let status = answer.status
        let bodyBytes = answer.body?.readableBytes ?? 0
        var out = context.channel.allocator.buffer(capacity: 160 + bodyBytes)
        out.writeStaticString("HTTP/1.1 ")
        out.writeString(String(status.code))
        out.writeStaticString(" ")
        out.writeString(status.reasonPhrase)
        out.writeStaticString("\r\n")
        for field in answer.headers {
            // Framing is written below, as the general path replaces these.
            if field.name == .contentLength || field.name == .connection { continue }
            out.writeString(field.name.rawName)
            out.writeStaticString(": ")
            out.writeString(field.value)
            out.writeStaticString("\r\n")
        }
        let framed = status != .noContent && status != .notModified
        if framed {
            out.writeStaticString("Content-Length: ")
            out.writeString(String(bodyBytes))
            out.writeStaticString("\r\n")
        }
        if answer.closes { out.writeStaticString("Connection: close\r\n") }
        out.writeStaticString("\r\n")
        if framed, var body = answer.body { out.writeBuffer(&body) }
        if answer.closes {
            active = false
            report(.closing)
            context.writeAndFlush(wrapOutboundOut(out)).assumeIsolated().whenComplete { _ in HTTPHandler.lingeringClose(context) }
            return
        }
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
        report(.answered)
    }

    private func peerIsLoopback(_ context: ChannelHandlerContext) -> Bool {
        if let known = peerIsLoopbackCache { return known }
        let loopback = PeerAddress.isLoopback(context.channel.remoteAddress)
        peerIsLoopbackCache = loopback
        return loopback
    }
}
