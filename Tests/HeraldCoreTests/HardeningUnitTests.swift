import HeraldCore
import Testing

/// Pure parts of SPEC §16: the date and number parsers, the keyless-publishing rule, the
/// retained set, byte-wise topics and linear removal from the topic index.
@Suite("Hardening: total parsers, local publishing, retained set, byte-wise topics")
struct HardeningUnitTests {
    @Test("HTTP dates: the RFC 9110 example, absurd values refused, formatting clamped")
    func httpDates() {
        #expect(HTTPDate.parse("Sun, 06 Nov 1994 08:49:37 GMT") == 784_111_777)
        #expect(HTTPDate.format(secondsSince1970: 784_111_777) == "Sun, 06 Nov 1994 08:49:37 GMT")
        #expect(HTTPDate.format(secondsSince1970: 0) == "Thu, 01 Jan 1970 00:00:00 GMT")
        #expect(HTTPDate.parse("Thu, 29 Feb 2024 12:00:00 GMT") != nil)
        // The obsolete forms RFC 9110 asks recipients to accept, for the same instant.
        #expect(HTTPDate.parse("Sunday, 06-Nov-94 08:49:37 GMT") == 784_111_777)
        #expect(HTTPDate.parse("Sun Nov  6 08:49:37 1994") == 784_111_777)
        #expect(HTTPDate.parse("Thursday, 01-Jan-70 00:00:00 GMT") == 0)
        #expect(HTTPDate.parse("Sun Nov 16 08:49:37 1994") == Int64(784_111_777 + 10 * 86_400))
        for bad in ["Sun, 06 Nov -2147483648 08:49:37 GMT", "Sun, 29 Feb 2023 00:00:00 GMT", "Sun, 06 Nov 1994 24:00:00 GMT",
                    "Sun, 06 Nov 1994 08:49:37 UTC", "",
                    "Sun, 00 Nov 1994 08:49:37 GMT", "Sun, 06 Nov 0000 08:49:37 GMT", "Sun, 06 Nov +994 08:49:37 GMT",
                    "Sunday, 06-Nov-94 08:49:37 UTC", "Sunday, 31-Feb-94 08:49:37 GMT", "Sun Nov 31 08:49:37 1994",
                    "Sun Nov  6 24:49:37 1994", "Funday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 -994"] {
            #expect(HTTPDate.parse(bad) == nil, "\(bad)")
        }
        #expect(HTTPDate.format(secondsSince1970: .max).contains("9999"))
        #expect(HTTPDate.format(secondsSince1970: .min).contains("0001"))
    }

    @Test("Numbers from headers and queries: digits only, no overflow")
    func numbers() {
        #expect(HTTPNumber.parse("0") == 0)
        #expect(HTTPNumber.parse("60", maximum: 60) == 60)
        #expect(HTTPNumber.parse("61", maximum: 60) == nil)
        for bad in ["", "-1", "+1", " 1", "1 ", "1e3", "0x10", "99999999999999999999"] { #expect(HTTPNumber.parse(bad) == nil, "\(bad)") }
        #expect(HTTPNumber.parse("9223372036854775807") == Int.max)
    }

    @Test("Keyless publishing: loopback Host only, listed origins only, no cross-site fetch")
    func localPublishing() {
        for host in ["localhost", "LOCALHOST:8080", "localhost.", "127.0.0.1", "127.1.2.3:80", "[::1]", "[::1]:8080"] {
            #expect(LocalPublishGuard.isLoopbackHost(host), "\(host)")
        }
        for host in ["evil.example", "127.0.0.1.evil.example", "localhost.evil.example", "128.0.0.1", "127.0.0.256", "[::2]",
                     "127.0.0.1:99999", "127.0.0.1:", "[::1", "0.0.0.0", "127.0.0", "10.0.0.1", ""] {
            #expect(!LocalPublishGuard.isLoopbackHost(host), "\(host)")
        }
        let listed: Set<String> = ["https://admin.example"]
        #expect(LocalPublishGuard.refusal(host: "127.0.0.1:8080", origin: nil, fetchSite: nil, explicitOrigins: listed) == nil)
        #expect(LocalPublishGuard.refusal(host: nil, origin: nil, fetchSite: nil, explicitOrigins: listed) == nil)
        #expect(LocalPublishGuard.refusal(host: "evil.example", origin: nil, fetchSite: nil, explicitOrigins: listed) != nil)
        #expect(LocalPublishGuard.refusal(host: "localhost", origin: "https://evil.example", fetchSite: nil, explicitOrigins: listed) != nil)
        #expect(LocalPublishGuard.refusal(host: "localhost", origin: nil, fetchSite: "cross-site", explicitOrigins: listed) != nil)
        #expect(LocalPublishGuard.refusal(host: "localhost", origin: nil, fetchSite: "same-site", explicitOrigins: listed) == nil)
        #expect(LocalPublishGuard.refusal(host: "localhost", origin: "https://admin.example", fetchSite: "cross-site", explicitOrigins: listed) == nil)
    }

    struct Item: HistoryEntry, Equatable {
        var id: Int64
    }

    @Test("Retained set: latest wins, the oldest topic goes past the limit, slices in id order, each entry once")
    func retainedSet() {
        var set = RetainedSet<Item>(limit: 3)
        set.retain(Item(id: 1), topics: ["a"])
        set.retain(Item(id: 2), topics: ["b", "c"])
        set.retain(Item(id: 3), topics: ["a"])
        #expect(set.count == 3)
        #expect(set.retain(Item(id: 4), topics: ["d"]) == ["b"])
        #expect(set.entry(for: "b") == nil && set.entry(for: "c") == Item(id: 2))
        let all = set.slice(after: .min, through: 10, maxEntries: 10, maxScan: 100) { _ in true }
        #expect(all.entries.map(\.id) == [2, 3, 4] && all.finished)
        // An entry on two topics is one entry; slices stop between ids and resume exactly.
        var pair = RetainedSet<Item>(limit: 10)
        pair.retain(Item(id: 5), topics: ["x", "y"])
        pair.retain(Item(id: 6), topics: ["z"])
        let first = pair.slice(after: .min, through: 10, maxEntries: 1, maxScan: 100) { _ in true }
        #expect(first.entries.map(\.id) == [5] && !first.finished)
        let second = pair.slice(after: first.position, through: 10, maxEntries: 1, maxScan: 100) { _ in true }
        #expect(second.entries.map(\.id) == [6])
        #expect(pair.remove(topic: "x") == Item(id: 5))
        #expect(pair.remove(topic: "x") == nil)
        #expect(pair.entries(forExact: ["y", "z", "x"], after: 5, through: 10).map(\.id) == [6])
        // Stale items are compacted: a topic retained 10 000 times holds one item.
        var churn = RetainedSet<Item>(limit: 5)
        for id in 1...10_000 { churn.retain(Item(id: Int64(id)), topics: ["t\(id % 2)"]) }
        #expect(churn.count == 2)
        #expect(churn.slice(after: .min, through: .max, maxEntries: 100, maxScan: 200) { _ in true }.entries.map(\.id) == [9_999, 10_000])
    }

    final class Subscriber {}

    @Test("Removing 200 000 subscribers of one topic is linear", .timeLimit(.minutes(1)))
    func linearRemoval() {
        // Quadratic removal (a copy of the topic's set per removal) would copy 2 * 10^10
        // entries here: hours. Linear removal takes well under a second.
        var index = TopicIndex<Subscriber>()
        let filter = TopicFilter(patterns: ["popular", "pre/*"], clientToken: nil)
        let subscribers = (0..<200_000).map { _ in Subscriber() }
        for subscriber in subscribers { index.insert(subscriber, filter: filter) }
        for subscriber in subscribers { index.remove(subscriber, filter: filter) }
        #expect(index.isEmpty)
    }

    @Test("Topics match by bytes: NFC and NFD are different topics, prefixes are byte prefixes")
    func byteWiseTopics() {
        let nfc = "caf\u{E9}", nfd = "cafe\u{301}"
        #expect(nfc == nfd) // Swift's String says equal ...
        #expect(TopicKey(nfc) != TopicKey(nfd)) // ... topics do not.
        let filter = TopicFilter(patterns: [nfc, "cafe*"], clientToken: nil)
        #expect(filter.matches(topic: nfc))
        #expect(filter.matches(topic: nfd)) // by the prefix cafe*
        let exactOnly = TopicFilter(patterns: [nfc], clientToken: nil)
        #expect(!exactOnly.matches(topic: nfd))
        var index = TopicIndex<Subscriber>()
        let subscriber = Subscriber()
        index.insert(subscriber, filter: exactOnly)
        var hits = 0
        index.forEachMatch(topics: [nfd], client: nil) { _ in hits += 1 }
        #expect(hits == 0)
        index.forEachMatch(topics: [nfc], client: nil) { _ in hits += 1 }
        #expect(hits == 1)
        // Many prefixes: the per-length lookup cuts only at character boundaries.
        var many = TopicIndex<Subscriber>()
        for number in 0..<20 { many.insert(Subscriber(), filter: TopicFilter(patterns: ["p\(number)/*"], clientToken: nil)) }
        let target = Subscriber()
        many.insert(target, filter: TopicFilter(patterns: ["caf*"], clientToken: nil))
        var found: [ObjectIdentifier] = []
        many.forEachMatch(topics: [nfc], client: nil) { found.append(ObjectIdentifier($0)) }
        #expect(found == [ObjectIdentifier(target)])
    }
}
