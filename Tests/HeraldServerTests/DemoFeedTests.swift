import HeraldCore
import Testing

@Suite("--demo: the built-in stock-quote feed", .timeLimit(.minutes(2)))
struct DemoFeedTests {
    @Test("Publishes retained quotes for ten symbols to quotes/<SYMBOL>, and keeps ticking")
    func feed() async throws {
        try await withServer({ $0.demo = true }) { server in
            // The feed's opening table (a listing and a quote for each of the ten symbols) is
            // in before the subscriber comes, so it arrives as retained state.
            try await eventually("the demo feed's opening table") {
                try await metricValue(server.port, "herald_events_published_total") ?? 0 >= 20
            }
            let client = try await SSEClient.open(port: server.port, path: "/events?topic=quotes/*")
            // The retained state arrives at once: one quote per listed symbol.
            let initial = try await client.waitForDataEvents(10)
            var symbols = Set<String>()
            for event in initial {
                #expect(event.type == "quote" || event.type == "listing")
                let json = try JSON.parse(event.data)
                guard case .string(let symbol)? = json["symbol"] else {
                    Issue.record("no symbol in \(event.data)")
                    continue
                }
                symbols.insert(symbol)
                if event.type == "quote" {
                    for key in ["price", "change", "changePercent", "volume", "time", "name"] {
                        #expect(json[key] != nil, "\(key) missing in \(event.data)")
                    }
                }
            }
            #expect(symbols.count >= 6)
            // Then live updates, several per second.
            let more = try await client.waitForDataEvents(initial.count + 8, timeout: .seconds(10))
            #expect(more.count >= initial.count + 8)
            let ids = more.compactMap { Int64($0.lastEventID) }
            #expect(ids == ids.sorted())
            await client.close()
        }
    }
}
