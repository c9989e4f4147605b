import HeraldCore
import NIOCore

/// Keep-alive comments without a timer per stream: the shard keeps its streams in order of
/// their last write, and one timer per loop finds every silent stream at the front.
extension Shard {

    func appendToKeepAliveList(_ stream: StreamConnection) {
        stream.older = newest
        stream.newer = nil
        if let newest { newest.newer = stream } else { oldest = stream }
        newest = stream
        if keepAliveTimer == nil { armKeepAlive() }
    }

    func removeFromKeepAliveList(_ stream: StreamConnection) {
        if let older = stream.older { older.newer = stream.newer } else if oldest === stream { oldest = stream.newer }
        if let newer = stream.newer { newer.older = stream.older } else if newest === stream { newest = stream.older }
        stream.older = nil
        stream.newer = nil
    }

    func markWritten(_ stream: StreamConnection, at now: NIODeadline) {
        stream.lastWrite = now
        guard newest !== stream, !stream.closed else { return }
        removeFromKeepAliveList(stream)
        appendToKeepAliveList(stream)
    }

    func armKeepAlive() {
        guard keepAliveTimer == nil, let oldest else { return }
        keepAliveTimer = eventLoop.scheduleTask(deadline: oldest.lastWrite + keepAliveInterval) {
            self.keepAliveTimer = nil
            self.sendKeepAlives()
        }
    }

    func sendKeepAlives() {
        let now = NIODeadline.now()
        // A millisecond of slack so a timer that fires a hair early still counts.
        let due = now - keepAliveInterval + .milliseconds(1)
        while let stream = oldest, stream.lastWrite <= due {
            stream.write(stream.chunked ? keepAliveComment.chunked : keepAliveComment.plain)
            stream.flush()
            markWritten(stream, at: now)
            checkBacklog(stream)
        }
        armKeepAlive()
    }
}
