import CompressNIO
import Foundation
import NIOCore
import Testing

@Suite("Static files under --public", .timeLimit(.minutes(2)))
struct StaticFileTests {
    static func makeSite() throws -> String {
        let root = TestServer.makePublicFolder()
        let url = URL(fileURLWithPath: root)
        let script = String(repeating: "console.log('herald');\n", count: 100)
        try script.write(to: url.appendingPathComponent("app.js"), atomically: true, encoding: .utf8)
        try "body { color: red }".write(to: url.appendingPathComponent("style.css"), atomically: true, encoding: .utf8)
        try Data([0x89, 0x50, 0x4E, 0x47]).write(to: url.appendingPathComponent("logo.png"))
        try "secret".write(to: url.appendingPathComponent(".env"), atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(at: url.appendingPathComponent("docs"), withIntermediateDirectories: true)
        try "<p>docs</p>".write(to: url.appendingPathComponent("docs/index.html"), atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(at: url.appendingPathComponent("empty"), withIntermediateDirectories: true)
        try "outside".write(to: url.deletingLastPathComponent().appendingPathComponent("outside-\(url.lastPathComponent).txt"),
                            atomically: true, encoding: .utf8)
        return root
    }

    @Test("Index, content types, HEAD, directories, and no escape from the folder")
    func serving() async throws {
        let root = try Self.makeSite()
        try await withServer({ $0.publicDirectory = root }) { server in
            let index = try await HTTPTestClient.get(server.port, "/")
            #expect(index.status == 200)
            #expect(index.header("content-type") == "text/html; charset=utf-8")
            #expect(index.text.contains("Herald test"))
            #expect(try await HTTPTestClient.get(server.port, "/style.css").header("content-type") == "text/css; charset=utf-8")
            #expect(try await HTTPTestClient.get(server.port, "/app.js").header("content-type") == "application/javascript; charset=utf-8")
            let png = try await HTTPTestClient.get(server.port, "/logo.png")
            #expect(png.header("content-type") == "image/png")
            #expect(png.body == [0x89, 0x50, 0x4E, 0x47])
            let head = try await HTTPTestClient.request(port: server.port, method: "HEAD", path: "/style.css")
            #expect(head.status == 200)
            #expect(head.header("content-length") == "19")
            #expect(head.body.isEmpty)
            let redirect = try await HTTPTestClient.get(server.port, "/docs")
            #expect(redirect.status == 301)
            #expect(redirect.header("location") == "/docs/")
            #expect(try await HTTPTestClient.get(server.port, "/docs/").text == "<p>docs</p>")
            let outside = "outside-\(URL(fileURLWithPath: root).lastPathComponent).txt"
            for path in ["/empty/", "/.env", "/../\(outside)", "/%2e%2e/\(outside)", "/docs/%2E%2E/%2e%2e/\(outside)", "/..%2f\(outside)", "/missing"] {
                let response = try await HTTPTestClient.get(server.port, path)
                #expect(response.status == 404, "\(path)")
                #expect(response.header("content-type") == "application/problem+json")
            }
        }
    }

    @Test("ETag and Last-Modified validators answer 304")
    func conditional() async throws {
        let root = try Self.makeSite()
        try await withServer({ $0.publicDirectory = root }) { server in
            let first = try await HTTPTestClient.get(server.port, "/style.css")
            let etag = try #require(first.header("etag"))
            let modified = try #require(first.header("last-modified"))
            let byTag = try await HTTPTestClient.get(server.port, "/style.css", headers: [("If-None-Match", etag)])
            #expect(byTag.status == 304)
            #expect(byTag.body.isEmpty)
            let otherTag = try await HTTPTestClient.get(server.port, "/style.css", headers: [("If-None-Match", "\"nope\"")])
            #expect(otherTag.status == 200)
            let byDate = try await HTTPTestClient.get(server.port, "/style.css", headers: [("If-Modified-Since", modified)])
            #expect(byDate.status == 304)
            let oldDate = try await HTTPTestClient.get(server.port, "/style.css", headers: [("If-Modified-Since", "Sat, 01 Jan 2000 00:00:00 GMT")])
            #expect(oldDate.status == 200)
        }
    }

    @Test("Compressible files are gzipped when the client accepts gzip")
    func gzip() async throws {
        let root = try Self.makeSite()
        try await withServer({ $0.publicDirectory = root }) { server in
            let plain = try await HTTPTestClient.get(server.port, "/app.js")
            #expect(plain.header("content-encoding") == nil)
            let zipped = try await HTTPTestClient.get(server.port, "/app.js", headers: [("Accept-Encoding", "gzip, deflate")])
            #expect(zipped.header("content-encoding") == "gzip")
            #expect(zipped.header("vary") == "Accept-Encoding")
            #expect(zipped.body.count < plain.body.count)
            var buffer = ByteBuffer(bytes: zipped.body)
            let inflated = try buffer.decompress(with: .gzip())
            #expect(Array(inflated.readableBytesView) == plain.body)
            #expect(zipped.header("etag") != plain.header("etag"))
            let refused = try await HTTPTestClient.get(server.port, "/app.js", headers: [("Accept-Encoding", "gzip;q=0")])
            #expect(refused.header("content-encoding") == nil)
            let png = try await HTTPTestClient.get(server.port, "/logo.png", headers: [("Accept-Encoding", "gzip")])
            #expect(png.header("content-encoding") == nil)
        }
    }
}
