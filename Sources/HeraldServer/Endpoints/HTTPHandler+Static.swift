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
            ("Last-Modified", WallClock.httpDate(secondsSince1970: entry.modified)),
            ("Cache-Control", "no-cache"),
        ]
        if entry.gzipped != nil { headers.append(("Vary", "Accept-Encoding")) }
        if Self.notModified(request: request, etag: etag, modified: entry.modified) {
            respond(context: context, request: request, status: .notModified, headers: headers, body: nil)
            return
        }
        if wantsGzip { headers.append(("Content-Encoding", "gzip")) }
        respond(context: context, request: request, status: .ok, headers: headers, body: wantsGzip ? entry.gzipped! : entry.body)
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
        if let since = request.headers.first(name: "if-modified-since"), let date = WallClock.parseHTTPDate(since) {
            return modified <= date
        }
        return false
    }
}
