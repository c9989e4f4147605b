import HeraldCore
import Testing

final class Subscriber {
    let name: String
    init(_ name: String) { self.name = name }
}

@Suite("Topic filters, the topic index and validation")
struct TopicTests {
    @Test("Exact, prefix (including the prefix itself) and * matching; * never matches direct messages")
    func filters() {
        let filter = TopicFilter(patterns: ["news", "quotes/*"], clientToken: "tok_12345")
        #expect(filter.matches(topics: ["news"], client: nil))
        #expect(filter.matches(topics: ["quotes/AAPL"], client: nil))
        #expect(filter.matches(topics: ["quotes/"], client: nil))
        #expect(!filter.matches(topics: ["quotes"], client: nil))
        #expect(!filter.matches(topics: ["quotesX"], client: nil))
        #expect(!filter.matches(topics: ["newsroom"], client: nil))
        #expect(filter.matches(topics: ["other", "news"], client: nil))
        #expect(filter.matches(topics: [], client: "tok_12345"))
        #expect(!filter.matches(topics: [], client: "someone_else"))
        let all = TopicFilter(patterns: ["*"], clientToken: nil)
        #expect(all.matches(topics: ["anything/at/all"], client: nil))
        #expect(!all.matches(topics: [], client: "tok_12345"))
    }

    @Test("The index finds exactly the matching subscribers, by both prefix strategies, and forgets removed ones")
    func index() {
        var index = TopicIndex<Subscriber>()
        let exact = Subscriber("exact"), prefix = Subscriber("prefix"), all = Subscriber("all"), direct = Subscriber("direct")
        let filters: [(Subscriber, TopicFilter)] = [
            (exact, TopicFilter(patterns: ["a/b"], clientToken: nil)),
            (prefix, TopicFilter(patterns: ["a/*"], clientToken: nil)),
            (all, TopicFilter(patterns: ["*"], clientToken: nil)),
            (direct, TopicFilter(patterns: [], clientToken: "direct_token")),
        ]
        for (subscriber, filter) in filters { index.insert(subscriber, filter: filter) }
        func matches(_ topics: [String], _ client: String? = nil) -> Set<String> {
            var names = Set<String>()
            index.forEachMatch(topics: topics, client: client) { names.insert($0.name) }
            return names
        }
        #expect(matches(["a/b"]) == ["exact", "prefix", "all"])
        #expect(matches(["a/c"]) == ["prefix", "all"])
        #expect(matches(["b"]) == ["all"])
        #expect(matches([], "direct_token") == ["direct"])
        #expect(matches([], "nobody_here") == [])
        // Many prefixes: the index switches to looking up every prefix of the topic.
        var many: [Subscriber] = []
        for index in 0..<20 { many.append(Subscriber("p\(index)")) }
        for (number, subscriber) in many.enumerated() {
            index.insert(subscriber, filter: TopicFilter(patterns: ["x\(number)/*"], clientToken: nil))
        }
        #expect(matches(["x1/y"]) == ["p1", "all"])
        #expect(matches(["x12/y"]) == ["p12", "all"])
        for (subscriber, filter) in filters { index.remove(subscriber, filter: filter) }
        #expect(matches(["a/b"]) == [])
        for (number, subscriber) in many.enumerated() {
            index.remove(subscriber, filter: TopicFilter(patterns: ["x\(number)/*"], clientToken: nil))
        }
        #expect(index.isEmpty)
    }

    @Test("Topic, token and type validation")
    func validation() throws {
        try TopicRules.validate(topic: "quotes/AAPL", forSubscription: false)
        try TopicRules.validate(topic: "quotes/*", forSubscription: true)
        try TopicRules.validate(topic: "ünïcode topic", forSubscription: false)
        try TopicRules.validate(topic: String(repeating: "x", count: 256), forSubscription: false)
        #expect(throws: ValidationError.self) { try TopicRules.validate(topic: "", forSubscription: true) }
        #expect(throws: ValidationError.self) { try TopicRules.validate(topic: String(repeating: "x", count: 257), forSubscription: true) }
        #expect(throws: ValidationError.self) { try TopicRules.validate(topic: "a\nb", forSubscription: true) }
        #expect(throws: ValidationError.self) { try TopicRules.validate(topic: "a\u{7F}", forSubscription: true) }
        #expect(throws: ValidationError.self) { try TopicRules.validate(topic: "quotes/*", forSubscription: false) }

        try TopicRules.validate(clientToken: "abcd_EFG-123")
        for bad in ["short", "has space1", "ünïcödé1", String(repeating: "a", count: 129), "semi;colon"] {
            #expect(throws: ValidationError.self, "\(bad)") { try TopicRules.validate(clientToken: bad) }
        }
        try TopicRules.validate(type: "quote")
        for bad in ["", "a\rb", "a\nb", "nul\u{0}", "herald.hello", String(repeating: "t", count: 129)] {
            #expect(throws: ValidationError.self, "\(bad.debugDescription)") { try TopicRules.validate(type: bad) }
        }
    }
}
