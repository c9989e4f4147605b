#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// A plain blocking TCP socket for attack tests: bytes written to it sit in the kernel's
/// buffers, not in this process's heap, so the test process's RSS measures the server (which
/// runs in-process) and not the attacking clients.
final class BlockingSocket: @unchecked Sendable {
    let descriptor: Int32

    init(port: Int, timeoutSeconds: Int = 10) throws {
        descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw SocketFailure("socket: \(errno)") }
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard result == 0 else {
            Glibc.close(descriptor)
            throw SocketFailure("connect: \(errno)")
        }
    }

    /// Sends as much of `bytes` as the peer takes before `deadline` (or an error); returns the
    /// count sent. A server that stops reading makes this return early.
    @discardableResult
    func send(_ bytes: [UInt8], until deadline: ContinuousClock.Instant = .now + .seconds(10)) -> Int {
        var sent = 0
        bytes.withUnsafeBytes { raw in
            while sent < raw.count && ContinuousClock.now < deadline {
                let count = Glibc.send(descriptor, raw.baseAddress! + sent, raw.count - sent, Int32(MSG_NOSIGNAL))
                if count <= 0 { break }
                sent += count
            }
        }
        return sent
    }

    func send(_ text: String) { send(Array(text.utf8)) }

    /// Reads until `condition` holds, the peer closes, or the socket's timeout passes.
    func read(until condition: ([UInt8]) -> Bool = { _ in false }) -> (bytes: [UInt8], closed: Bool) {
        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while !condition(received) {
            let count = chunk.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
            if count == 0 { return (received, true) }
            if count < 0 { return (received, false) }
            received.append(contentsOf: chunk[0..<count])
        }
        return (received, false)
    }

    /// Whether bytes from the peer wait unread in this socket (a peek that never blocks).
    func hasBytesWaiting() -> Bool {
        var byte: UInt8 = 0
        return recv(descriptor, &byte, 1, Int32(MSG_PEEK) | Int32(MSG_DONTWAIT)) > 0
    }

    /// Sets a small receive buffer (before the connection fills it) for clients that never read.
    func shrinkReceiveBuffer(to bytes: Int32 = 4096) {
        var size = bytes
        setsockopt(descriptor, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    }

    func close() { Glibc.close(descriptor) }
}

struct SocketFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// This process's resident memory in bytes (the in-process server's included), from /proc.
func residentBytes() -> Int {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
    for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        let digits = line.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
        return digits * 1024
    }
    return 0
}

/// Runs blocking socket work off the Swift concurrency pool (which has as few threads as
/// cores: a blocked pool would stall the in-process server's tests).
func onThread<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        Thread.detachNewThread { continuation.resume(returning: body()) }
    }
}
