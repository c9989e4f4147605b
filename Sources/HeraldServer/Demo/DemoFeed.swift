import HeraldCore
import Logging
import NIOCore

/// The built-in stock-quote feed behind `--demo`: ten symbols on a random walk, a few
/// updates per second in all, now and then a listing added or removed.
///
/// It publishes through the same parser and hub as `POST /events` (an NDJSON batch with
/// `type` and `retain=1`), so the demo exercises exactly what a real feed would. Quotes go to
/// `quotes/<SYMBOL>` as `type: quote`; listings as `type: listing` with `{"action":"add"|"remove"}`,
/// and because both are retained, a new page gets the current table at once.
final class DemoFeed: @unchecked Sendable {
    // Confined to `loop`: all state is touched only by the repeated task running there.
    struct Stock {
        var symbol: String
        var name: String
        var open: Double
        var price: Double
        var volume: Int
    }

    private let hub: Hub
    private let loop: any EventLoop
    private let logger: Logger
    private var listed: [Stock] = []
    private var unlisted: [Stock] = []
    private var task: RepeatedTask?
    private var tick = 0
    private var random = SystemRandomNumberGenerator()
    /// Seconds between listing changes, roughly.
    static let listingEveryTicks = 60
    static let interval = TimeAmount.milliseconds(250)

    static let universe: [(String, String, Double)] = [
        ("AAPL", "Apple", 189.5), ("MSFT", "Microsoft", 414.2), ("GOOG", "Alphabet", 172.9), ("AMZN", "Amazon", 181.3),
        ("NVDA", "NVIDIA", 121.4), ("META", "Meta Platforms", 498.0), ("TSLA", "Tesla", 176.8), ("NFLX", "Netflix", 642.1),
        ("ORCL", "Oracle", 139.6), ("IBM", "IBM", 183.7), ("INTC", "Intel", 31.2), ("ADBE", "Adobe", 478.3),
        ("CSCO", "Cisco", 48.9), ("AMD", "AMD", 158.4),
    ]

    init(hub: Hub, loop: any EventLoop, logger: Logger) {
        self.hub = hub
        self.loop = loop
        self.logger = logger
        for (index, entry) in Self.universe.enumerated() {
            let stock = Stock(symbol: entry.0, name: entry.1, open: entry.2, price: entry.2, volume: 0)
            if index < 10 { listed.append(stock) } else { unlisted.append(stock) }
        }
    }

    func start() {
        loop.execute {
            // Announce the opening table, then tick.
            self.publish(self.listed.map { self.listing($0, action: "add") } + self.listed.map { self.quote($0) })
            self.task = self.loop.scheduleRepeatedTask(initialDelay: Self.interval, delay: Self.interval) { _ in
                self.step()
            }
        }
        logger.info("demo feed started", metadata: ["herald.demo.symbols": "\(listed.count)"])
    }

    func stop() {
        loop.execute {
            self.task?.cancel()
            self.task = nil
        }
    }

    private func step() {
        tick += 1
        var lines: [String] = []
        if tick % Self.listingEveryTicks == 0 {
            lines += changeListing()
        }
        guard !listed.isEmpty else {
            publish(lines)
            return
        }
        let updates = Int.random(in: 1...3, using: &random)
        for _ in 0..<updates {
            let index = Int.random(in: 0..<listed.count, using: &random)
            var stock = listed[index]
            // A small random walk with a pull back toward the opening price.
            let drift = (stock.open - stock.price) / stock.open * 0.02
            let move = Double.random(in: -0.004...0.004, using: &random) + drift * 0.1
            stock.price = max(1, (stock.price * (1 + move) * 100).rounded() / 100)
            stock.volume += Int.random(in: 100...5000, using: &random)
            listed[index] = stock
            lines.append(quote(stock))
        }
        publish(lines)
    }

    /// Every so often one symbol leaves the board or one joins it (never below 6 or above 12).
    private func changeListing() -> [String] {
        let add = unlisted.isEmpty ? false : listed.count <= 6 ? true : listed.count >= 12 ? false : Bool.random(using: &random)
        if add {
            var stock = unlisted.remove(at: Int.random(in: 0..<unlisted.count, using: &random))
            stock.price = stock.open
            stock.volume = 0
            listed.append(stock)
            return [listing(stock, action: "add"), quote(stock)]
        }
        let stock = listed.remove(at: Int.random(in: 0..<listed.count, using: &random))
        unlisted.append(stock)
        return [listing(stock, action: "remove")]
    }

    private func quote(_ stock: Stock) -> String {
        let change = stock.price - stock.open
        let percent = change / stock.open * 100
        let data = JSONValue.object([
            ("symbol", .string(stock.symbol)), ("name", .string(stock.name)), ("price", .number(Self.decimal(stock.price))),
            ("change", .number(Self.decimal(change))), ("changePercent", .number(Self.decimal(percent))),
            ("volume", .integer(stock.volume)), ("time", .integer(WallClock.millisecondsSince1970())),
        ])
        return JSONValue.object([("topic", .string("quotes/\(stock.symbol)")), ("type", .string("quote")), ("data", data)]).compactText
    }

    private func listing(_ stock: Stock, action: String) -> String {
        let data = JSONValue.object([
            ("symbol", .string(stock.symbol)), ("name", .string(stock.name)), ("action", .string(action)),
            ("time", .integer(WallClock.millisecondsSince1970())),
        ])
        return JSONValue.object([("topic", .string("quotes/\(stock.symbol)")), ("type", .string("listing")), ("data", data)]).compactText
    }

    /// Publishes NDJSON lines exactly as `POST /events?retain=1` with that body would.
    /// A quote and a listing for the same symbol in one batch: the later one is retained,
    /// which is why a listing comes before its first quote.
    private func publish(_ lines: [String]) {
        guard !lines.isEmpty else { return }
        let parser = PublishParser(queryTopics: [], queryType: nil, isDirect: false, maxEventBytes: 65_536)
        do {
            let drafts = try parser.parse(body: Array(lines.joined(separator: "\n").utf8), contentType: "application/x-ndjson")
            _ = hub.publish(drafts, client: nil, retain: true, idempotencyKey: nil, on: loop)
        } catch {
            logger.error("demo feed produced an invalid batch", metadata: ["error": "\(error)"])
        }
    }

    static func decimal(_ value: Double) -> String {
        let cents = (value * 100).rounded()
        let sign = cents < 0 ? "-" : ""
        let absolute = Int(abs(cents))
        let fraction = absolute % 100
        return "\(sign)\(absolute / 100).\(fraction < 10 ? "0" : "")\(fraction)"
    }
}
