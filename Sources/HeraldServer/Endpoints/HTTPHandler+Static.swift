import HeraldCore
import NIOCore
import NIOHTTP1

extension HTTPHandler {
    /// `GET`/`HEAD` of a static file: looked up on the file thread pool, answered on the loop.
    func serveStatic(context: ChannelHandlerContext, request: HTTPRequestHead, path: String) {
        let files = server.staticFiles
        let query = request.uri.firstIndex(of: "?").map { String(request.uri[$0...]) } ?? ""
        server.fileThreadPool.runIfActive(eventLoop: context.eventLoop) {
            files.lookup(rawPath: path)
        }.assumeIsolated().whenComplete { result in
            switch result {
            case .failure, .success(.notFound):
                self.sendProblem(Problem(.notFound, "no file at \(path.prefix(200))"), context: context, request: request)
            case .success(.redirect(let location)):
                var body = context.channel.allocator.buffer(capacity: 0)
                body.writeString("")
                self.respond(context: context, request: request, status: .movedPermanently,
                             headers: [("Location", location + query)], body: body)
            case .success(.file(let entry)):
                self.answerFile(entry, context: context, request: request)
            }
        }
    }

    private func answerFile(_ entry: StaticFiles.Entry, context: ChannelHandlerContext, request: HTTPRequestHead) {
        let wantsGzip = entry.gzipped != nil && AcceptNegotiation.acceptsGzip(request.headers[canonicalForm: "accept-encoding"].map(String.init))
        let etag = wantsGzip ? String(entry.etag.dropLast()) + "-gz\"" : entry.etag
        var headers: [(String, String)] = [
            ("Content-Type", entry.contentType),
            ("ETag", etag),
            ("Last-Modified", HTTPDate.format(secondsSince1970: entry.modified)),
            ("Cache-Control", "no-cache"),
        ]
        if entry.gzipped != nil { headers.append(("Vary", "Accept-Encoding")) }
        if Self.notModified(request: request, etag: etag, modified: entry.modified) {
            respond(context: context, request: request, status: .notModified, headers: headers, body: nil)
            return
        }
        if wantsGzip { headers.append(("Content-Encoding", "gzip")) }
        if let body = entry.body {
            respond(context: context, request: request, status: .ok, headers: headers, body: wantsGzip ? entry.gzipped! : body)
        } else {
            streamFile(entry, headers: headers, context: context, request: request)
        }
    }

    /// Slice size for files streamed from disk.
    static let fileSliceBytes = 64 * 1024
    /// A download whose client takes no slice for this long is closed.
    static let downloadStallTimeout: TimeAmount = .seconds(60)

    /// Sends a large file from disk: one slice read on the file thread pool at a time, the
    /// next one only once the socket has taken the last, so a download holds one slice of
    /// memory whatever the file's size and however slowly the client reads (SPEC §16).
    private func streamFile(_ entry: StaticFiles.Entry, headers: [(String, String)], context: ChannelHandlerContext,
                            request: HTTPRequestHead) {
        let pool = server.fileThreadPool
        let allocator = context.channel.allocator
        pool.runIfActive(eventLoop: context.eventLoop) { () throws -> FileSlices in
            try FileSlices(path: entry.path)
        }.assumeIsolated().whenComplete { result in
            guard case .success(let file) = result else {
                self.sendProblem(Problem(.notFound, "no file at \(request.uri.prefix(200))"), context: context, request: request)
                return
            }
            guard let keepAlive = self.writeHead(context: context, request: request, status: .ok, headers: headers,
                                                 contentLength: entry.size, close: false) else {
                pool.submit { _ in file.close() }
                return
            }
            if request.method == .HEAD || entry.size == 0 {
                pool.submit { _ in file.close() }
                self.finishResponse(context: context, keepAlive: keepAlive)
                return
            }
            self.sendSlice(of: file, offset: 0, size: entry.size, keepAlive: keepAlive, allocator: allocator, context: context)
        }
    }

    private func sendSlice(of file: FileSlices, offset: Int, size: Int, keepAlive: Bool, allocator: ByteBufferAllocator,
                           context: ChannelHandlerContext) {
        let pool = server.fileThreadPool
        let length = min(Self.fileSliceBytes, size - offset)
        pool.runIfActive(eventLoop: context.eventLoop) {
            try file.read(at: offset, length: length, allocator: allocator)
        }.assumeIsolated().whenComplete { result in
            guard case .success(let slice) = result, slice.readableBytes == length, context.channel.isActive else {
                // Unreadable, shrunk under us, or the client left: the promised length can
                // no longer be met, so the connection ends here.
                pool.submit { _ in file.close() }
                self.state = .closing
                context.close(promise: nil)
                return
            }
            let next = offset + length
            let written = context.writeAndFlush(self.wrapOutboundOut(.body(.byteBuffer(slice))))
            if next >= size {
                pool.submit { _ in file.close() }
                self.finishResponse(context: context, keepAlive: keepAlive)
                return
            }
            // A client that takes nothing for a minute is not downloading any more: its
            // socket and file descriptor go back.
            let stalled = context.eventLoop.assumeIsolated().scheduleTask(in: Self.downloadStallTimeout) {
                context.close(promise: nil)
            }
            written.assumeIsolated().whenComplete { result in
                stalled.cancel()
                guard case .success = result else {
                    pool.submit { _ in file.close() }
                    return
                }
                self.sendSlice(of: file, offset: next, size: size, keepAlive: keepAlive, allocator: allocator, context: context)
            }
        }
    }

    /// `If-None-Match` (weak comparison) wins; `If-Modified-Since` counts only without it.
    static func notModified(request: HTTPRequestHead, etag: String, modified: Int64) -> Bool {
        let noneMatch = request.headers[canonicalForm: "if-none-match"]
        if !noneMatch.isEmpty {
            func opaque(_ tag: Substring) -> Substring {
                let trimmed = Substring(tag.trimmingSpaces())
                return trimmed.hasPrefix("W/") ? trimmed.dropFirst(2) : trimmed
            }
            let ours = opaque(Substring(etag))
            let plain = ours.replacingOccurrences(of: "-gz\"", with: "\"")
            return noneMatch.contains { $0.trimmingSpaces() == "*" || opaque($0) == ours || opaque($0) == Substring(plain) }
        }
        if let since = request.headers.first(name: "if-modified-since"), let date = HTTPDate.parse(since) {
            return modified <= date
        }
        return false
    }
}
