import ArgumentParser
import HeraldCore
import HeraldServer

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `herald token`: prints a signed subscriber token (SPEC §14), for scripts, tests and trying
/// things out. An app backend mints the same tokens with any JWT library (README,
/// "Authorization").
struct TokenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "herald token",
        abstract: "Print an HS256 subscriber token (a JWT) granting topics and a client token.",
        discussion: """
        Example: herald token --key "$KEY" --sub user-42-abcdef --topic 'mail/user-42/*' --ttl 3600
        The key defaults to the first of HERALD_SUBSCRIBER_KEY.
        """)

    @Option(help: "The subscriber key to sign with (one of the server's --subscriber-key values).")
    var key: String?

    @Option(help: "The client token the holder may use (the 'sub' claim).")
    var sub: String?

    @Option(name: .customLong("topic"), help: "A topic pattern the holder may subscribe to (repeatable): exact, 'prefix/*' or '*'.")
    var topics: [String] = []

    @Option(help: "Seconds until the token expires.")
    var ttl: Double = 3600

    @Option(help: "The 'aud' claim (when the server has --subscriber-audience).")
    var audience: String?

    func validate() throws {
        guard ttl.isFinite, ttl > 0, ttl <= 10 * 365 * 86_400 else { throw ArgumentParser.ValidationError("--ttl must be a number of seconds above 0 (at most ten years)") }
        guard let key = resolvedKey, !key.isEmpty else {
            throw ArgumentParser.ValidationError("give --key (or set HERALD_SUBSCRIBER_KEY): the key the server checks tokens with")
        }
        guard key.utf8.count >= 32 else { throw ArgumentParser.ValidationError("--key must be at least 32 bytes, like the server's --subscriber-key") }
        if topics.isEmpty && sub == nil { throw ArgumentParser.ValidationError("grant something: --topic PATTERN (repeatable) and/or --sub CLIENT_TOKEN") }
        // What the server would not accept is refused here, not discovered by a subscriber.
        if let sub {
            do { try TopicRules.validate(clientToken: sub) } catch { throw ArgumentParser.ValidationError("--sub: \(error.detail)") }
        }
        for topic in topics {
            do { try TopicRules.validate(topic: topic, forSubscription: true) } catch { throw ArgumentParser.ValidationError("--topic: \(error.detail)") }
        }
    }

    private var resolvedKey: String? {
        if let key { return key }
        guard let variable = getenv("HERALD_SUBSCRIBER_KEY") else { return nil }
        return String(cString: variable).split(separator: ",").first.map(String.init)
    }

    func run() throws {
        print(SubscriberTokens.sign(key: resolvedKey!, subject: sub, topics: topics, ttl: ttl, audience: audience))
    }
}
