import HeraldCore
import Testing

struct Entry: HistoryEntry, Equatable {
    var id: Int64
}

@Suite("HistoryRing: wrap-around and resume rules")
struct HistoryRingTests {
    @Test("Keeps the newest entries in order as it wraps around, and reports what it evicts")
    func wrapAround() {
        var ring = HistoryRing<Entry>(capacity: 3, startingAfter: 100)
        #expect(ring.count == 0 && ring.oldestID == nil && ring.newestID == 100)
        for id in Int64(101)...103 { #expect(ring.append(Entry(id: id)) == nil) }
        #expect(ring.append(Entry(id: 104)) == Entry(id: 101))
        #expect(ring.append(Entry(id: 110)) == Entry(id: 102))
        #expect((0..<ring.count).map { ring[$0].id } == [103, 104, 110])
        #expect(ring.evictedThrough == 102)
        #expect(ring.oldestID == 103)
        for id in Int64(111)...200 { ring.append(Entry(id: id)) }
        #expect((0..<ring.count).map { ring[$0].id } == [198, 199, 200])
    }

    @Test("Lookup by id is a binary search that tolerates gaps")
    func lookup() {
        var ring = HistoryRing<Entry>(capacity: 10, startingAfter: 0)
        for id in [2, 4, 6, 8] as [Int64] { ring.append(Entry(id: id)) }
        #expect(ring.firstIndex(after: 0) == 0)
        #expect(ring.firstIndex(after: 4) == 2)
        #expect(ring.firstIndex(after: 5) == 2)
        #expect(ring.firstIndex(after: 8) == 4)
        var seen: [Int64] = []
        ring.forEach(after: 3, through: 7) { seen.append($0.id); return true }
        #expect(seen == [4, 6])
        seen = []
        ring.forEach(after: 0, through: 100) { seen.append($0.id); return seen.count < 2 }
        #expect(seen == [2, 4])
    }

    @Test("Resume: numeric, not newer than the newest, not older than the oldest minus one")
    func resumeRules() {
        var ring = HistoryRing<Entry>(capacity: 3, startingAfter: 10)
        // Empty history: both bounds are where the sequence starts.
        #expect(ring.resumeDecision(for: "10") == .resume(after: 10))
        #expect(ring.resumeDecision(for: "9") == .reset(.historyTruncated))
        #expect(ring.resumeDecision(for: "11") == .reset(.unknownID))
        for id in Int64(11)...15 { ring.append(Entry(id: id)) }  // keeps 13, 14, 15
        #expect(ring.resumeDecision(for: "12") == .resume(after: 12))
        #expect(ring.resumeDecision(for: "15") == .resume(after: 15))
        #expect(ring.resumeDecision(for: "11") == .reset(.historyTruncated))
        #expect(ring.resumeDecision(for: "16") == .reset(.unknownID))
        for text in ["", "abc", "-1", "+5", " 12", "12 ", "1.5", "99999999999999999999"] {
            #expect(ring.resumeDecision(for: text) == .reset(.unknownID), "\(text.debugDescription)")
        }
    }
}
