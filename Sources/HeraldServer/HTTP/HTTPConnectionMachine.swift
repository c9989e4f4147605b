import NIOCore

/// The lifecycle of one HTTP/1.x connection as a value: each event that happens to the
/// connection goes in, the state moves, and what the handler must do comes out as actions.
/// The time is passed in with every event (no clock inside), so the timeouts are tested by
/// handing it instants, and every transition is checked: an event that cannot happen in the
/// current state changes nothing and asks for nothing.
///
/// ```
///            head ─────────────► receiving ──end──► answering ──answered, keep-alive──► idle
///   idle ◄──┤ (refused, or a body this route does not take: answered from the head) ─┘
///            └──────────────────────────────────────► answering ──answered, close──► closing
///   timeouts: idle ─head timer─► closing (408) · receiving ─body timer─► closing (408)
///   parse error: idle/receiving ─► closing (400/431) · answering ─► after the answer, closing
///   a subscription: answering ─opened──► streaming (the handler leaves the pipeline)
///   the publish fast path (PublishFastPath), below: idle ─answeredOutside─► idle (head timer
///   from the answer) · idle ─bodyPendingOutside─► idle (body timer; a head handed over later
///   keeps that deadline)
/// ```
struct HTTPConnectionMachine {
    enum State: Equatable {
        /// Waiting for a request head (the head timer runs).
        case idle
        /// Reading a request's body (the body timer runs).
        case receiving
        /// The request's answer is being produced.
        case answering
        /// The connection is an event stream now.
        case streaming
        /// The last answer is out or going out; the connection is closing.
        case closing
    }

    enum Timer: Equatable {
        case head, body
    }

    enum Action: Equatable {
        /// Arms the connection's one timer (replacing any armed one).
        case arm(Timer, deadline: NIODeadline)
        case cancelTimer
        /// Keep the body chunk (a publish body within the limit).
        case keepBody
        /// Answer the complete request.
        case dispatch
        /// Answer now with this refusal (decided from the head or the body's size); the
        /// connection closes after it when `close`.
        case refuse(Problem, close: Bool)
        /// Send `100 Continue`.
        case sendContinue
        /// Answer outside the request/response cycle (a timeout, an unparsable request)
        /// and close.
        case sendRawAndClose(Problem)
        /// Close at once (nothing may be written any more).
        case close
        /// Shut the write side after the last answer, close when the client does (or soon).
        case lingeringClose
    }

    /// What the handler concluded from a request head.
    struct Head: Equatable {
        /// A `Content-Length` above 0, one that is not a number, or a chunked body.
        var announcesBody: Bool
        /// Whether the route reads a body (publishing only).
        var takesBody: Bool
        /// A refusal decided from the head (too long, unauthorised, too large).
        var refusal: Problem?
        var expectsContinue: Bool
    }

    private(set) var state = State.idle
    /// The request's body, if any, is dropped as it arrives, and the connection closes after
    /// the answer (where an unwanted body ends is not worth reading to find out).
    private(set) var discardingBody = false
    /// The body (wanted or not) has not ended yet: its timer still runs.
    private var bodyOpen = false
    /// A parse error that came while an answer was being produced: after that answer.
    private var problemAfterAnswer: Problem?
    /// The fast path below waits for a body until then (see ``bodyPendingOutside(now:)``).
    private var bodyOutsideDeadline: NIODeadline?
    let headTimeout: TimeAmount
    let bodyTimeout: TimeAmount
    let maxBodyBytes: Int

    init(headTimeout: TimeAmount, bodyTimeout: TimeAmount, maxBodyBytes: Int) {
        self.headTimeout = headTimeout
        self.bodyTimeout = bodyTimeout
        self.maxBodyBytes = maxBodyBytes
    }

    mutating func connectionActive(now: NIODeadline) -> [Action] {
        guard state == .idle else { return [] }
        return [.arm(.head, deadline: now + headTimeout)]
    }

    /// A request head arrived: decided from it alone (SPEC §16).
    mutating func headReceived(_ head: Head, now: NIODeadline) -> [Action] {
        guard state == .idle else { return [] }
        // A request the fast path waited for and then handed over keeps its body's deadline
        // (handing it over must not buy a slow client a second body timeout).
        let bodyDeadline = bodyOutsideDeadline ?? now + bodyTimeout
        bodyOutsideDeadline = nil
        bodyOpen = head.announcesBody
        var actions: [Action] = [head.announcesBody ? .arm(.body, deadline: bodyDeadline) : .cancelTimer]
        if let refusal = head.refusal {
            state = .answering
            discardingBody = head.announcesBody
            actions.append(.refuse(refusal, close: refusal.closeConnection || head.announcesBody))
            return actions
        }
        if head.announcesBody && !head.takesBody {
            // Only publishing takes a body: anything else is answered from its head.
            state = .answering
            discardingBody = true
            actions.append(.dispatch)
            return actions
        }
        state = .receiving
        discardingBody = false
        if head.expectsContinue { actions.append(.sendContinue) }
        return actions
    }

    /// A body chunk arrived; `total` counts every byte of this request's body so far.
    mutating func bodyReceived(total: Int) -> [Action] {
        guard state == .receiving, !discardingBody else { return [] }
        if total > maxBodyBytes {
            state = .answering
            discardingBody = true
            return [.refuse(Problem(.payloadTooLarge, "the body is larger than --max-body-bytes (\(maxBodyBytes) bytes)",
                                    closeConnection: true), close: true)]
        }
        return [.keepBody]
    }

    mutating func endReceived() -> [Action] {
        bodyOpen = false
        switch state {
        case .receiving:
            state = .answering
            return [.cancelTimer, .dispatch]
        case .answering where discardingBody:
            // The unwanted body is over: its timer has nothing left to guard.
            return [.cancelTimer]
        default:
            return []
        }
    }

    /// The answer's end is written. `requestKeepsAlive`: the request allows keep-alive;
    /// `close`: the answer itself ends the connection.
    /// - Returns: whether the connection stays open for another request, and what to do.
    mutating func answered(requestKeepsAlive: Bool, close: Bool, now: NIODeadline) -> (keepAlive: Bool, actions: [Action]) {
        guard state == .answering else { return (false, []) }
        let keepAlive = requestKeepsAlive && !close && !discardingBody
        if keepAlive, let problem = problemAfterAnswer {
            problemAfterAnswer = nil
            state = .closing
            return (true, [.sendRawAndClose(problem)])
        }
        problemAfterAnswer = nil
        if keepAlive {
            state = .idle
            discardingBody = false
            return (true, [.arm(.head, deadline: now + headTimeout)])
        }
        state = .closing
        return (false, [.lingeringClose])
    }

    /// A request was read and answered below this machine (``PublishFastPath``), which
    /// happens only while it is idle: the connection waits for the next head again.
    mutating func answeredOutside(now: NIODeadline) -> [Action] {
        guard state == .idle else { return [] }
        bodyOutsideDeadline = nil
        return [.arm(.head, deadline: now + headTimeout)]
    }

    /// Below this machine (``PublishFastPath``), a request's head is in and its body is on
    /// its way: the body's time limit applies from now, as it would here.
    mutating func bodyPendingOutside(now: NIODeadline) -> [Action] {
        guard state == .idle else { return [] }
        let deadline = now + bodyTimeout
        bodyOutsideDeadline = deadline
        return [.arm(.body, deadline: deadline)]
    }

    /// Whether an answer may be written now.
    var mayAnswer: Bool { state == .answering }

    /// The request became an event stream: this machine's work is done.
    mutating func becameStream() {
        guard state == .answering else { return }
        state = .streaming
    }

    mutating func timerFired(_ timer: Timer, now: NIODeadline) -> [Action] {
        switch (timer, state) {
        case (.head, .idle):
            state = .closing
            return [.sendRawAndClose(Problem(.requestTimeout, "the request head did not arrive within \(Self.seconds(headTimeout)) s"))]
        case (.body, .receiving), (.body, .idle) where bodyOutsideDeadline != nil:
            state = .closing
            return [.sendRawAndClose(Problem(.requestTimeout, "the request body did not arrive within \(Self.seconds(bodyTimeout)) s"))]
        case (.body, .answering) where bodyOpen:
            // An unwanted body still dribbling in while its answer is out or on its way: no
            // 408 may be spliced into that answer, so the connection just ends.
            state = .closing
            return [.close]
        default:
            return []
        }
    }

    /// The request bytes could not be parsed.
    mutating func parseError(_ problem: Problem) -> [Action] {
        switch state {
        case .idle, .receiving:
            state = .closing
            return [.sendRawAndClose(problem)]
        case .answering:
            // The answer in progress goes out first: garbage after a valid request must not
            // cost its response.
            problemAfterAnswer = problem
            return []
        case .streaming, .closing:
            return []
        }
    }

    /// The handler closed the connection on its own (a write error, a stream that failed to open).
    mutating func closed() {
        state = .closing
    }

    private static func seconds(_ amount: TimeAmount) -> String {
        let milliseconds = amount.nanoseconds / 1_000_000
        return milliseconds % 1000 == 0 ? String(milliseconds / 1000) : String(Double(milliseconds) / 1000)
    }
}
