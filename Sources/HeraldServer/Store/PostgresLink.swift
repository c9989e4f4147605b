import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import PostgresNIO

/// Opens connections to the cluster's database.
struct PostgresConnector: Sendable {
    let location: PostgresLocation
    let logger: Logger
    private let ids = NIOLockedValueBox(0)

    init(location: PostgresLocation, logger: Logger) {
        self.location = location
        self.logger = logger
    }

    func connect() async throws -> PostgresConnection {
        let tls: PostgresConnection.Configuration.TLS
        switch location.tls {
        case .disable: tls = .disable
        case .require: tls = .require(try NIOSSLContext(configuration: .makeClientConfiguration()))
        }
        var configuration = PostgresConnection.Configuration(
            host: location.host, port: location.port, username: location.username, password: location.password,
            database: location.database, tls: tls)
        configuration.options.connectTimeout = .seconds(3)
        configuration.options.additionalStartupParameters = [("application_name", location.applicationName)]
        let id = ids.withLockedValue { value in
            value += 1
            return value
        }
        return try await PostgresConnection.connect(
            on: MultiThreadedEventLoopGroup.singleton.any(), configuration: configuration, id: id, logger: logger)
    }
}

/// One long-lived connection with a purpose (writing, listening, reading history, control),
/// reconnected on demand. While the database cannot be reached, callers fail at once for a
/// short while after each failed attempt instead of each waiting for a connect of its own:
/// a publisher then gets its 503 promptly, and the database gets a few attempts a second.
final class PostgresLink: @unchecked Sendable {
    let name: String
    private let connector: PostgresConnector
    /// How long a failed connect is answered from memory.
    private let quietPeriod = TimeAmount.milliseconds(300)

    private enum State {
        case idle
        case connecting(Task<PostgresConnection, any Error>)
        case connected(PostgresConnection)
        case failed(at: NIODeadline, reason: String)
        case shutDown
    }

    // Guarded by `lock`.
    private let lock = NIOLock()
    private var state = State.idle

    init(name: String, connector: PostgresConnector) {
        self.name = name
        self.connector = connector
    }

    /// The open connection, or a new one.
    func connection() async throws -> PostgresConnection {
        enum Step {
            case ready(PostgresConnection)
            case wait(Task<PostgresConnection, any Error>)
        }
        let step: Step = try lock.withLock {
            switch state {
            case .connected(let connection) where !connection.isClosed:
                return .ready(connection)
            case .connecting(let task):
                return .wait(task)
            case .failed(let at, let reason) where NIODeadline.now() < at + quietPeriod:
                throw StoreError("PostgreSQL at \(connector.location.host):\(connector.location.port) is unreachable: \(reason)")
            case .shutDown:
                throw StoreError("the store is closed")
            default:
                let connector = self.connector
                let task = Task { try await connector.connect() }
                state = .connecting(task)
                return .wait(task)
            }
        }
        switch step {
        case .ready(let connection):
            return connection
        case .wait(let task):
            do {
                let connection = try await task.value
                let keep: Bool = lock.withLock {
                    if case .shutDown = state { return false }
                    state = .connected(connection)
                    return true
                }
                if !keep {
                    try? await connection.close()
                    throw StoreError("the store is closed")
                }
                return connection
            } catch {
                lock.withLock {
                    if case .connecting = state { state = .failed(at: .now(), reason: Self.explain(error)) }
                }
                throw error
            }
        }
    }

    /// After a failed query: drops the connection if it is broken (with no error: always),
    /// so the next caller reconnects.
    func reset(after error: (any Error)?) {
        let stale: PostgresConnection? = lock.withLock {
            guard case .connected(let connection) = state else { return nil }
            guard error == nil || connection.isClosed else { return nil }
            state = .idle
            return connection
        }
        if let stale { Task { try? await stale.close() } }
    }

    func shutdown() async {
        let previous: State = lock.withLock {
            defer { state = .shutDown }
            return state
        }
        switch previous {
        case .connected(let connection): try? await connection.close()
        case .connecting(let task): try? await task.value.close()
        default: break
        }
    }

    /// A database error in a few words (PostgresNIO keeps its errors' details out of their
    /// plain description, so that they do not leak into answers; this goes to the log).
    static func explain(_ error: any Error) -> String {
        if let error = error as? PSQLError {
            var text = "\(error.code)"
            if let message = error.serverInfo?[.message] { text += ": \(message)" }
            if let underlying = error.underlying { text += " (\(underlying))" }
            return text
        }
        return String(describing: error)
    }
}
