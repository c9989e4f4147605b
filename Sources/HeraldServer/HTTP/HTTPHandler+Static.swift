import HeraldCore
import NIOCore
import NIOHTTP1

/// The HTTP/1.1 side of a large static file: its body streamed from disk, paced by the client.
extension HTTPHandler {
    /// Slice size for files streamed from disk.
    static let fileSliceBytes = 64 * 1024
    /// A download whose client takes no slice for this long is closed.
    static let downloadStallTimeout: TimeAmount = .seconds(60)

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
        let pool = server.fileThreadPool
        let length = min(Self.fileSliceBytes, size - offset)
        pool.runIfActive(eventLoop: context.eventLoop) {
            try file.read(at: offset, length: length, allocator: allocator)
        }.assumeIsolated().whenComplete { result in
            guard case .success(let slice) = result, slice.readableBytes == length, context.channel.isActive else {
                // Unreadable, shrunk under us, or the client left: the promised length can
                // no longer be met, so the connection ends here.
                pool.submit { _ in file.close() }
                self.machine.closed()
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
}
