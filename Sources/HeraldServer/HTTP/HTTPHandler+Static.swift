import HeraldCore
import NIOCore
import NIOHTTP1

/// The HTTP/1.1 side of a large static file: its body streamed from disk, paced by the client.
extension HTTPHandler {

    /// Sends a large file from disk: one slice read on the file thread pool at a time, the
    /// next one only once the socket has taken the last, so a download holds one slice of
    /// memory whatever the file's size and however slowly the client reads (SPEC §16).
    func streamFile(_ entry: StaticFiles.Entry, headers: [(String, String)], context: ChannelHandlerContext,
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
        file.send(
            from: offset, size: size, pool: server.fileThreadPool, context: context, allocator: allocator,
            write: { slice, _ in context.writeAndFlush(self.wrapOutboundOut(.body(.byteBuffer(slice)))) },
            finished: { self.finishResponse(context: context, keepAlive: keepAlive) },
            failed: {
                self.machine.closed()
                context.close(promise: nil)
            })
    }
}
