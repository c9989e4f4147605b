import Foundation
import HeraldServer
import Logging
import NIOCore
import ServiceLifecycle

/// A real Herald server on an ephemeral loopback port, run inside a `ServiceGroup` the way
/// the executable runs it, and shut down gracefully when the test body returns.
struct TestServer: Sendable {
    let port: Int
    let configuration: HeraldConfiguration

    /// A fresh folder with a public/index.html for the static-file tests.
    static func makePublicFolder() -> String {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("herald-test-\(UUID().uuidString)")
        try? FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        try? "<!doctype html><title>Herald test</title>".write(to: folder.appendingPathComponent("index.html"), atomically: true, encoding: .utf8)
        return folder.path
    }

    /// Removes a folder made by ``makePublicFolder()`` (and the file a static-file test puts
    /// beside it); leaves any other folder alone.
    static func removeTemporaryFolder(_ path: String) {
        let url = URL(fileURLWithPath: path)
        guard url.lastPathComponent.hasPrefix("herald-test-"),
              url.deletingLastPathComponent().standardizedFileURL.path == FileManager.default.temporaryDirectory.standardizedFileURL.path
        else { return }
        try? FileManager.default.removeItem(at: url)
        try? FileManager.default.removeItem(at: url.deletingLastPathComponent().appendingPathComponent("outside-\(url.lastPathComponent).txt"))
    }

    static func quietLogger() -> Logger {
        Logger(label: "herald-test", factory: { _ in SwiftLogNoOpLogHandler() })
    }

    static func configuration(_ configure: (inout HeraldConfiguration) -> Void = { _ in }) -> HeraldConfiguration {
        var configuration = HeraldConfiguration()
        configuration.host = "127.0.0.1"
        configuration.port = 0
        configuration.eventLoopThreads = 2
        configuration.shutdownGrace = .milliseconds(100)
        let folder = makePublicFolder()
        configuration.publicDirectory = folder
        configuration.logger = quietLogger()
        configure(&configuration)
        if configuration.publicDirectory != folder { removeTemporaryFolder(folder) }
        return configuration
    }
}

/// Runs `body` against a server built from `configure`, then shuts it down gracefully.
func withServer<T: Sendable>(
    _ configure: (inout HeraldConfiguration) -> Void = { _ in },
    _ body: (TestServer) async throws -> T
) async throws -> T {
    try await withServer(configuration: TestServer.configuration(configure), body)
}

func withServer<T: Sendable>(configuration: HeraldConfiguration, _ body: (TestServer) async throws -> T) async throws -> T {
    defer { TestServer.removeTemporaryFolder(configuration.publicDirectory) }
    let server = HeraldServer(configuration: configuration)
    let group = ServiceGroup(configuration: .init(services: [.init(service: server)], logger: TestServer.quietLogger()))
    return try await withThrowingTaskGroup(of: Void.self) { tasks in
        tasks.addTask { try await group.run() }
        let address = try await server.listeningAddress()
        let testServer = TestServer(port: address.port!, configuration: configuration)
        do {
            let result = try await body(testServer)
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
            return result
        } catch {
            await group.triggerGracefulShutdown()
            try? await tasks.waitForAll()
            throw error
        }
    }
}

struct TestTimeout: Error, CustomStringConvertible {
    var what: String
    var description: String { "timed out waiting for \(what)" }
}
