import CompressNIO
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import HeraldCore
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// Static files under `--public` (SPEC §5): safe path mapping, content types, validators,
/// and gzip for compressible types. Files are read on a thread pool, never on an event loop.
/// Small files are held in memory (with their gzip form) until their size or mtime changes;
/// larger ones are streamed from disk in slices paced by the client (SPEC §16), so memory
/// per download does not grow with the file.
final class StaticFiles: Sendable {
    let root: String

    struct Entry: Sendable {
        /// The file's bytes when it is small enough to hold; nil: stream it from `path`.
        var body: ByteBuffer?
        var path: String
        var gzipped: ByteBuffer?
        var contentType: String
        var etag: String
        var modified: Int64
        var size: Int
        var modifiedNanoseconds: Int64
    }

    enum Lookup: Sendable {
        case file(Entry)
        case redirect(String)
        case notFound
    }

    private let cache = NIOLockedValueBox<[String: Entry]>([:])
    /// Files up to this size are read whole (and cached); larger ones are streamed.
    static let inMemoryLimitBytes = 1 << 20
    /// Bytes of file contents the cache may hold in all.
    private static let cacheBudgetBytes = 16 << 20
    private let cachedBytes = NIOLockedValueBox(0)

    init(root: String) {
        self.root = root
    }

    /// Maps a raw request path to a file. Anything that escapes the root (`..`, encoded or
    /// not, or a symlink out of it), hidden names and directories without an index are
    /// not found.
    func lookup(rawPath: String) -> Lookup {
        guard let decoded = try? FormURLEncoded.decode(Array(rawPath.utf8), plusIsSpace: false),
              decoded.hasPrefix("/"), !decoded.contains("\0"), !decoded.contains("\\")
        else { return .notFound }
        let segments = decoded.split(separator: "/", omittingEmptySubsequences: true)
        for segment in segments where segment.hasPrefix(".") { return .notFound }
        let rootURL = URL(fileURLWithPath: root).standardizedFileURL.resolvingSymlinksInPath()
        var candidate = rootURL
        for segment in segments { candidate.appendPathComponent(String(segment)) }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: candidate.path, isDirectory: &isDirectory) else { return .notFound }
        if isDirectory.boolValue {
            // A directory without an index is not found, with or without its slash.
            candidate.appendPathComponent("index.html")
            guard FileManager.default.fileExists(atPath: candidate.path, isDirectory: &isDirectory), !isDirectory.boolValue else {
                return .notFound
            }
            if !decoded.hasSuffix("/") {
                // Built from the normalised segments: `//evil.example/x` must never become
                // a `Location` that a browser reads as another host.
                let segments = rawPath.split(separator: "/", omittingEmptySubsequences: true)
                return .redirect("/" + segments.joined(separator: "/") + "/")
            }
        }
        let resolved = candidate.resolvingSymlinksInPath().path
        guard resolved == rootURL.path || resolved.hasPrefix(rootURL.path + "/") else { return .notFound }
        return load(path: resolved)
    }

    private func load(path: String) -> Lookup {
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: path),
              (attributes[.type] as? FileAttributeType) == .typeRegular,
              let size = (attributes[.size] as? NSNumber)?.intValue,
              let date = attributes[.modificationDate] as? Date
        else { return .notFound }
        let nanos = Int64(date.timeIntervalSince1970 * 1_000_000_000)
        if let cached = cache.withLockedValue({ $0[path] }), cached.size == size, cached.modifiedNanoseconds == nanos {
            return .file(cached)
        }
        let type = Self.contentType(forExtension: (path as NSString).pathExtension.lowercased())
        var entry = Entry(
            body: nil, path: path, gzipped: nil, contentType: type,
            etag: "\"\(String(size, radix: 16))-\(String(nanos, radix: 16))\"",
            modified: Int64(date.timeIntervalSince1970), size: size, modifiedNanoseconds: nanos)
        guard size <= Self.inMemoryLimitBytes else { return .file(entry) }
        guard let data = FileManager.default.contents(atPath: path), data.count <= Self.inMemoryLimitBytes else {
            return .notFound
        }
        var body = ByteBuffer()
        body.writeBytes(data)
        entry.body = body
        entry.size = data.count
        if Self.isCompressible(type), data.count >= 256 {
            var input = body
            if let compressed = try? input.compress(with: .gzip()), compressed.readableBytes < data.count {
                entry.gzipped = compressed
            }
        }
        let held = data.count + (entry.gzipped?.readableBytes ?? 0)
        cache.withLockedValue { cache in
            cachedBytes.withLockedValue { total in
                if total + held > Self.cacheBudgetBytes {
                    cache.removeAll()
                    total = 0
                }
                if let old = cache.updateValue(entry, forKey: path) {
                    total -= (old.body?.readableBytes ?? 0) + (old.gzipped?.readableBytes ?? 0)
                }
                total += held
            }
        }
        return .file(entry)
    }

    static func isCompressible(_ contentType: String) -> Bool {
        contentType.hasPrefix("text/") || contentType.hasPrefix("application/javascript")
            || contentType.hasPrefix("application/json") || contentType.hasPrefix("image/svg+xml")
            || contentType.hasPrefix("application/xml") || contentType.hasPrefix("application/manifest+json")
    }

    static func contentType(forExtension ext: String) -> String {
        switch ext {
        case "html", "htm": return "text/html; charset=utf-8"
        case "css": return "text/css; charset=utf-8"
        case "js", "mjs": return "application/javascript; charset=utf-8"
        case "json", "map": return "application/json; charset=utf-8"
        case "webmanifest": return "application/manifest+json; charset=utf-8"
        case "txt": return "text/plain; charset=utf-8"
        case "csv": return "text/csv; charset=utf-8"
        case "xml": return "application/xml; charset=utf-8"
        case "svg": return "image/svg+xml"
        case "png": return "image/png"
        case "jpg", "jpeg": return "image/jpeg"
        case "gif": return "image/gif"
        case "webp": return "image/webp"
        case "avif": return "image/avif"
        case "ico": return "image/x-icon"
        case "woff": return "font/woff"
        case "woff2": return "font/woff2"
        case "wasm": return "application/wasm"
        case "pdf": return "application/pdf"
        default: return "application/octet-stream"
        }
    }
}

/// An open file read in slices with `pread` (on the file thread pool; never on an event loop).
final class FileSlices: Sendable {
    private let descriptor: Int32

    init(path: String) throws {
        let descriptor = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw IOError(errnoCode: errno, reason: "open") }
        self.descriptor = descriptor
    }

    func read(at offset: Int, length: Int, allocator: ByteBufferAllocator) throws -> ByteBuffer {
        var buffer = allocator.buffer(capacity: length)
        var total = 0
        while total < length {
            let count = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: length - total) { pointer in
                let result = pread(descriptor, pointer.baseAddress, length - total, off_t(offset + total))
                return result > 0 ? result : 0
            }
            if count == 0 { break }
            total += count
        }
        return buffer
    }

    func close() {
        _ = Glibc.close(descriptor)
    }
}

extension FileSlices {
    /// Slice size for files streamed from disk.
    static let sliceBytes = 64 * 1024
    /// A download whose client takes no slice for this long is closed.
    static let stallTimeout: TimeAmount = .seconds(60)

    /// Sends `size` bytes of the file from `offset` on, one slice read on the file thread
    /// pool at a time and the next only once the transport has taken the last, so a
    /// download holds one slice of memory however large the file and however slow the
    /// client (SPEC §16). Shared by HTTP/1.1 and HTTP/2; each says how a slice is written.
    /// Closes the file when done. A client that takes nothing for ``stallTimeout`` is closed.
    /// - Parameters:
    ///   - write: writes a slice (`last` marks the final one) and returns when it was taken.
    ///   - finished: the whole file was written.
    ///   - failed: unreadable, shrunk under us, or the client left: the promised length can
    ///     no longer be met, so the transport ends the response.
    func send(
        from offset: Int, size: Int, pool: NIOThreadPool, context: ChannelHandlerContext, allocator: ByteBufferAllocator,
        write: @escaping (ByteBuffer, _ last: Bool) -> EventLoopFuture<Void>, finished: @escaping () -> Void,
        failed: @escaping () -> Void
    ) {
        let length = min(Self.sliceBytes, size - offset)
        pool.runIfActive(eventLoop: context.eventLoop) {
            try self.read(at: offset, length: length, allocator: allocator)
        }.assumeIsolated().whenComplete { result in
            guard case .success(let slice) = result, slice.readableBytes == length, context.channel.isActive else {
                pool.submit { _ in self.close() }
                failed()
                return
            }
            let next = offset + length
            let written = write(slice, next >= size)
            if next >= size {
                pool.submit { _ in self.close() }
                finished()
                return
            }
            let stalled = context.eventLoop.assumeIsolated().scheduleTask(in: Self.stallTimeout) {
                context.close(promise: nil)
            }
            written.assumeIsolated().whenComplete { outcome in
                stalled.cancel()
                guard case .success = outcome else {
                    pool.submit { _ in self.close() }
                    return
                }
                self.send(from: next, size: size, pool: pool, context: context, allocator: allocator,
                          write: write, finished: finished, failed: failed)
            }
        }
    }
}
