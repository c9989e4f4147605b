#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOCore

/// Keeps the listener from spinning when the process runs out of file descriptors (SPEC §16).
///
/// When `accept` fails with EMFILE or ENFILE the pending connection stays in the backlog and
/// the level-triggered listener stays readable. NIO's `ServerSocketChannel` clears its
/// "read pending" flag only when an accept succeeds, so after a failed accept it keeps
/// waiting for readability and a delaying `read()` (NIO's `AcceptBackoffHandler`) never gets
/// the chance to act: measured, ~12 000 failed accepts a second, one core at 100 %.
///
/// The way out is the classic spare descriptor: one descriptor (`/dev/null`) is held from
/// the start. On EMFILE the governor turns `autoRead` off and gives the spare back, so the
/// next accept succeeds; that connection is served as usual, the flag is cleared, and with
/// `autoRead` off NIO stops watching the listener. Every 100 ms the governor tries to take
/// a spare again; once a descriptor is free (a connection closed) it has one and accepting
/// resumes. Open connections keep flowing throughout; waiting clients wait in the backlog.
final class AcceptGovernor: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    typealias OutboundIn = NIOAny

    private var spare: Int32
    private var paused = false
    private var retry: Scheduled<Void>?
    private let logger: Logger
    static let retryInterval: TimeAmount = .milliseconds(100)

    init(logger: Logger) {
        self.logger = logger
        self.spare = Self.openSpare()
    }

    private static func openSpare() -> Int32 {
        Glibc.open("/dev/null", O_RDONLY | O_CLOEXEC)
    }

    func read(context: ChannelHandlerContext) {
        // While paused, nothing asks the listener for connections.
        if !paused { context.read() }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let error = error as? IOError else {
            context.fireErrorCaught(error)
            return
        }
        switch error.errnoCode {
        case EMFILE, ENFILE, ENOBUFS, ENOMEM:
            pause(context: context, reason: error.errnoCode)
        default:
            // ECONNABORTED and the like: that one connection is gone; go on accepting.
            break
        }
    }

    private func pause(context: ChannelHandlerContext, reason: Int32) {
        guard !paused else { return }
        paused = true
        logger.warning("cannot accept connections (\(String(cString: strerror(reason)))); pausing accepting until descriptors are free")
        context.channel.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in }
        if spare >= 0 {
            // Lets the pending accept succeed once, which is what makes NIO stop watching.
            Glibc.close(spare)
            spare = -1
        }
        scheduleRetry(context: context)
    }

    private func scheduleRetry(context: ChannelHandlerContext) {
        retry = context.eventLoop.assumeIsolated().scheduleTask(in: Self.retryInterval) { [weak self] in
            guard let self else { return }
            self.retry = nil
            if self.spare < 0 { self.spare = Self.openSpare() }
            guard self.spare >= 0 else {
                self.scheduleRetry(context: context)
                return
            }
            self.paused = false
            self.logger.info("accepting connections again")
            context.channel.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in }
            context.read()
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        retry?.cancel()
        retry = nil
        if spare >= 0 {
            Glibc.close(spare)
            spare = -1
        }
    }
}
