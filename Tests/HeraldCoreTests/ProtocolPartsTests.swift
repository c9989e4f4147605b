import HeraldCore
import Testing

/// The pure parts moved out of the hub: the idempotency window and the control events.
@Suite("Idempotency window and control events")
struct ProtocolPartsTests {
    @Test("A key is remembered while any of its events is in the history, forgotten in order after")
    func idempotencyWindow() {
        var window = IdempotencyWindow(restoring: [(key: "a", ids: [1, 2]), (key: "empty", ids: [])])
        window.record(key: "b", ids: [3])
        window.record(key: "c", ids: [4, 5, 6])
        #expect(window.ids(for: "a") == [1, 2])
        #expect(window.ids(for: "empty") == nil)
        #expect(window.count == 3)
        window.forget(through: 1) // a's newest (2) is still in the history
        #expect(window.ids(for: "a") == [1, 2])
        window.forget(through: 3)
        #expect(window.ids(for: "a") == nil && window.ids(for: "b") == nil)
        #expect(window.ids(for: "c") == [4, 5, 6])
        // A key published again after it was forgotten is the new publish's.
        window.record(key: "a", ids: [7])
        window.forget(through: 6)
        #expect(window.ids(for: "a") == [7] && window.ids(for: "c") == nil)
        // Thousands of keys forgotten in order stay amortised (the order list is compacted).
        for id in 100..<5_100 { window.record(key: "k\(id)", ids: [Int64(id)]) }
        window.forget(through: 5_000)
        #expect(window.count == 99) // a (7) is gone; k5001...k5099 remain
        #expect(window.ids(for: "k5099") == [5_099])
    }

    @Test("herald.hello and herald.reset: types, JSON data, the id only on a reset")
    func controlEvents() {
        var bytes: [UInt8] = []
        ControlEvents.appendHello(client: "tok\"en_12", topics: ["a/*", "caf\u{E9}"], resumed: true, to: &bytes)
        var decoder = SSEDecoder()
        let hello = decoder.decode(bytes)
        #expect(hello == [.event(ReceivedEvent(
            type: "herald.hello", data: "{\"client\":\"tok\\\"en_12\",\"topics\":[\"a/*\",\"caf\u{E9}\"],\"resumed\":true}",
            lastEventID: "", hadIDField: false))])
        bytes = []
        ControlEvents.appendReset(reason: .historyTruncated, lastEventID: "12\n", newest: 99, to: &bytes)
        let reset = decoder.decode(bytes)
        #expect(reset == [.event(ReceivedEvent(
            type: "herald.reset", data: "{\"reason\":\"history-truncated\",\"lastEventId\":\"12\\n\"}",
            lastEventID: "99", hadIDField: true))])
    }
}
