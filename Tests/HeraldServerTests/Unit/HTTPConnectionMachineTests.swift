@testable import HeraldServer
import NIOCore
import Testing

/// The connection lifecycle as a value: events in, actions out, time handed in.
@Suite("HTTPConnectionMachine: the connection lifecycle, with an injected clock")
struct HTTPConnectionMachineTests {
    static let start = NIODeadline.uptimeNanoseconds(1_000_000_000)

    static func machine() -> HTTPConnectionMachine {
        HTTPConnectionMachine(headTimeout: .seconds(10), bodyTimeout: .seconds(30), maxBodyBytes: 100)
    }

    static func head(body: Bool = false, takes: Bool = false, refusal: Problem? = nil, expect: Bool = false) -> HTTPConnectionMachine.Head {
        .init(announcesBody: body, takesBody: takes, refusal: refusal, expectsContinue: expect)
    }

    @Test("An idle connection is answered 408 when the head timer fires, not before it is due")
    func headTimeout() {
        var machine = Self.machine()
        #expect(machine.connectionActive(now: Self.start) == [.arm(.head, deadline: Self.start + .seconds(10))])
        // A body timer firing late (already replaced) changes nothing.
        #expect(machine.timerFired(.body, now: Self.start + .seconds(10)).isEmpty)
        guard case .sendRawAndClose(let problem)? = machine.timerFired(.head, now: Self.start + .seconds(10)).first else {
            Issue.record("no 408")
            return
        }
        #expect(problem.status == .requestTimeout)
        #expect(machine.state == .closing)
        #expect(machine.timerFired(.head, now: Self.start + .seconds(20)).isEmpty)
    }

    @Test("A publish: body kept within the limit, dispatched at its end, keep-alive re-arms the head timer")
    func publishCycle() {
        var machine = Self.machine()
        _ = machine.connectionActive(now: Self.start)
        let t1 = Self.start + .seconds(1)
        #expect(machine.headReceived(Self.head(body: true, takes: true, expect: true), now: t1)
            == [.arm(.body, deadline: t1 + .seconds(30)), .sendContinue])
        #expect(machine.state == .receiving)
        #expect(machine.bodyReceived(total: 60) == [.keepBody])
        #expect(machine.bodyReceived(total: 100) == [.keepBody])
        #expect(machine.endReceived() == [.cancelTimer, .dispatch])
        #expect(machine.mayAnswer)
        let t2 = Self.start + .seconds(2)
        let (keep, actions) = machine.answered(requestKeepsAlive: true, close: false, now: t2)
        #expect(keep && actions == [.arm(.head, deadline: t2 + .seconds(10))])
        #expect(machine.state == .idle)
    }

    @Test("A body over the limit is refused with 413 and the connection closes")
    func bodyTooLarge() {
        var machine = Self.machine()
        _ = machine.headReceived(Self.head(body: true, takes: true), now: Self.start)
        guard case .refuse(let problem, let close)? = machine.bodyReceived(total: 101).first else {
            Issue.record("no refusal")
            return
        }
        #expect(problem.status == .payloadTooLarge && close)
        // The rest of the body is dropped; the answer closes the connection.
        #expect(machine.bodyReceived(total: 200).isEmpty)
        #expect(machine.endReceived() == [.cancelTimer])
        let (keep, actions) = machine.answered(requestKeepsAlive: true, close: true, now: Self.start)
        #expect(!keep && actions == [.lingeringClose])
    }

    @Test("A body on a route that takes none: answered from the head, body dropped, closed after")
    func unwantedBody() {
        var machine = Self.machine()
        let actions = machine.headReceived(Self.head(body: true, takes: false), now: Self.start)
        #expect(actions == [.arm(.body, deadline: Self.start + .seconds(30)), .dispatch])
        #expect(machine.discardingBody)
        #expect(machine.bodyReceived(total: 1_000_000).isEmpty)
        // Its timer firing while the answer is in progress closes without a 408.
        #expect(machine.timerFired(.body, now: Self.start + .seconds(30)) == [.close])
        #expect(machine.state == .closing)
    }

    @Test("A refusal decided from the head closes when a body was announced, keeps the connection otherwise")
    func refusals() {
        let refusal = Problem(.unauthorized, "key")
        var withBody = Self.machine()
        #expect(withBody.headReceived(Self.head(body: true, takes: true, refusal: refusal), now: Self.start).last
            == .refuse(refusal, close: true))
        var withoutBody = Self.machine()
        #expect(withoutBody.headReceived(Self.head(refusal: refusal), now: Self.start) == [.cancelTimer, .refuse(refusal, close: false)])
        #expect(withoutBody.answered(requestKeepsAlive: true, close: false, now: Self.start).keepAlive)
    }

    @Test("A parse error: answered at once between requests, after the answer in progress otherwise")
    func parseErrors() {
        let garbage = Problem(.badRequest, "garbage")
        var idle = Self.machine()
        #expect(idle.parseError(garbage) == [.sendRawAndClose(garbage)])
        var busy = Self.machine()
        _ = busy.headReceived(Self.head(), now: Self.start)
        _ = busy.endReceived()
        #expect(busy.parseError(garbage).isEmpty)
        let (keep, actions) = busy.answered(requestKeepsAlive: true, close: false, now: Self.start)
        #expect(keep && actions == [.sendRawAndClose(garbage)])
        #expect(busy.state == .closing)
    }

    @Test("Transitions are checked: events that cannot happen now change nothing")
    func checkedTransitions() {
        var machine = Self.machine()
        #expect(machine.bodyReceived(total: 10).isEmpty)
        #expect(machine.endReceived().isEmpty)
        #expect(machine.answered(requestKeepsAlive: true, close: false, now: Self.start) == (false, []))
        #expect(machine.state == .idle)
        _ = machine.headReceived(Self.head(), now: Self.start)
        #expect(machine.headReceived(Self.head(), now: Self.start).isEmpty) // a second head mid-request
        _ = machine.endReceived()
        machine.becameStream()
        #expect(machine.state == .streaming)
        #expect(machine.parseError(Problem(.badRequest, "x")).isEmpty)
        #expect(machine.timerFired(.head, now: Self.start + .seconds(100)).isEmpty)
    }
}
