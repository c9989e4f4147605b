import HTTPTypes
import HeraldCore
import NIOCore

extension Responders {
    /// `GET`/`HEAD` of a static file (SPEC §5): looked up on the file thread pool, answered
    /// whole when small, as a file to stream when large, 304 when the client's copy is current.
    func staticFile(_ request: EndpointRequest, route: Route, path: String) -> EventLoopFuture<EndpointReply> {
        let files = server.staticFiles
        let target = request.target
        let query = target.firstIndex(of: "?").map { String(target[$0...]) } ?? ""
        return server.fileThreadPool.runIfActive(eventLoop: request.eventLoop) {
            files.lookup(rawPath: path)
        }.map { lookup -> EndpointReply in
            switch lookup {
            case .notFound:
                return .answer(self.problem(Problem(.notFound, "no file at \(path.prefix(200))"), request, route: route))
            case .redirect(let location):
                return .answer(EndpointAnswer(status: .movedPermanently, headers: [.location: location + query],
                                              body: request.allocator.buffer(capacity: 0)))
            case .file(let entry):
                return self.answerFile(entry, request)
            }
        }.flatMapErrorThrowing { _ in
            .answer(self.problem(Problem(.notFound, "no file at \(path.prefix(200))"), request, route: route))
        }
    }

    private func answerFile(_ entry: StaticFiles.Entry, _ request: EndpointRequest) -> EndpointReply {
        let wantsGzip = entry.gzipped != nil && AcceptNegotiation.acceptsGzip(request.headers(.acceptEncoding))
        let etag = wantsGzip ? String(entry.etag.dropLast()) + "-gz\"" : entry.etag
        var headers: HTTPFields = [
            .contentType: entry.contentType, .eTag: etag, .lastModified: HTTPDate.format(secondsSince1970: entry.modified),
            .cacheControl: "no-cache",
        ]
        if entry.gzipped != nil { headers[.vary] = "Accept-Encoding" }
        if Self.notModified(request, etag: etag, modified: entry.modified) {
            return .answer(EndpointAnswer(status: .notModified, headers: headers, body: nil))
        }
        if wantsGzip { headers[.contentEncoding] = "gzip" }
        guard let body = entry.body else { return .file(entry, headers: headers) }
        return .answer(EndpointAnswer(status: .ok, headers: headers, body: wantsGzip ? entry.gzipped! : body))
    }

    /// `If-None-Match` (weak comparison) wins; `If-Modified-Since` counts only without it.
    static func notModified(_ request: EndpointRequest, etag: String, modified: Int64) -> Bool {
        let noneMatch = request.headers(.ifNoneMatch).flatMap { $0.split(separator: ",") }
        if !noneMatch.isEmpty {
            func opaque(_ tag: Substring) -> Substring {
                let trimmed = Substring(tag.trimmingSpaces())
                return trimmed.hasPrefix("W/") ? trimmed.dropFirst(2) : trimmed
            }
            let ours = opaque(Substring(etag))
            let plain = ours.replacingOccurrences(of: "-gz\"", with: "\"")
            return noneMatch.contains { $0.trimmingSpaces() == "*" || opaque($0) == ours || opaque($0) == Substring(plain) }
        }
        if let since = request.header(.ifModifiedSince), let date = HTTPDate.parse(since) {
            return modified <= date
        }
        return false
    }
}
