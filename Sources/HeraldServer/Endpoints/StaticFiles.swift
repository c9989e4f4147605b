import CompressNIO
import Foundation
import HeraldCore
import NIOConcurrencyHelpers
import NIOCore

/// Static files under `--public` (SPEC §5): safe path mapping, content types, validators,
/// and gzip for compressible types. Files are read on a thread pool, never on an event loop,
/// and small files are cached (with their gzip form) until their size or mtime changes.
final class StaticFiles: Sendable {
    let root: String

    struct Entry: Sendable {
        var body: ByteBuffer
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
    private static let cacheLimitBytes = 1 << 20
    private static let cacheEntries = 512

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
            if !decoded.hasSuffix("/") {
                return .redirect(rawPath + "/")
            }
            candidate.appendPathComponent("index.html")
            guard FileManager.default.fileExists(atPath: candidate.path, isDirectory: &isDirectory), !isDirectory.boolValue else {
                return .notFound
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
        guard let data = FileManager.default.contents(atPath: path) else { return .notFound }
        var body = ByteBuffer()
        body.writeBytes(data)
        let type = Self.contentType(forExtension: (path as NSString).pathExtension.lowercased())
        var gzipped: ByteBuffer?
        if Self.isCompressible(type), data.count >= 256 {
            var input = body
            if let compressed = try? input.compress(with: .gzip()), compressed.readableBytes < data.count {
                gzipped = compressed
            }
        }
        let entry = Entry(
            body: body, gzipped: gzipped, contentType: type,
            etag: "\"\(String(size, radix: 16))-\(String(nanos, radix: 16))\"",
            modified: Int64(date.timeIntervalSince1970), size: size, modifiedNanoseconds: nanos)
        if data.count <= Self.cacheLimitBytes {
            cache.withLockedValue { cache in
                if cache.count >= Self.cacheEntries { cache.removeAll() }
                cache[path] = entry
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
