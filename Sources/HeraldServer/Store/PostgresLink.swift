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
                enum Outcome { case keep, closed, superseded(PostgresConnection) }
                let outcome: Outcome = lock.withLock {
                    switch state {
                    case .shutDown:
                        return .closed
                    case .connected(let other) where other === connection:
                        // Another caller waited for the same connect and stored it first.
                        return .keep
                    case .connected(let other) where !other.isClosed:
                        // A connect that was given up on (``drop()``) finished after a newer one.
                        return .superseded(other)
                    default:
                        state = .connected(connection)
                        return .keep
                    }
                }
                switch outcome {
                case .keep:
                    return connection
                case .closed:
                    try? await connection.close()
                    throw StoreError("the store is closed")
                case .superseded(let other):
                    try? await connection.close()
                    return other
                }
            } catch {
                lock.withLock {
                    if case .connecting = state { state = .failed(at: .now(), reason: Self.explain(error)) }
                }
                throw error
            }
        }
    }

    /// Runs `body` on this link's connection, bounded in time: a database that accepts a
    /// connection and then never answers, or a client-library wait that is never resumed (a
    /// lost notification listener, a query queued behind it), must not stall the node's
    /// delivery or its publishers for good. After `limit` the connection is dropped (the next
    /// caller gets a new one), `body` is left to finish or fail on the closed connection, and
    /// the caller gets an error as for any failed query. A failure inside `body` drops the
    /// connection when it is closed (``reset(after:)``).
    func run<T: Sendable>(limit: TimeAmount, _ body: @escaping @Sendable (PostgresConnection) async throws -> T) async throws -> T {
        let loop = MultiThreadedEventLoopGroup.singleton.any()
        let outcome = loop.makePromise(of: T.self)
        let task = Task {
            do {
                let connection = try await self.connection()
                do {
                    outcome.succeed(try await body(connection))
                } catch {
                    self.reset(after: error)
                    outcome.fail(error)
                }
            } catch {
                outcome.fail(error)
            }
        }
        let timedOut = QueryTimedOut(link: name, limit: limit)
        // Whichever completes the promise first wins; NIO ignores the later completion.
        let deadline = loop.scheduleTask(in: limit) { outcome.fail(timedOut) }
        do {
            let value = try await outcome.futureResult.get()
            deadline.cancel()
            return value
        } catch let error as QueryTimedOut {
            task.cancel()
            drop()
            throw error
        } catch {
            deadline.cancel()
            throw error
        }
    }

    /// Forgets the current connection, whatever its state, and closes it.
    func drop() {
        let stale: PostgresConnection? = lock.withLock {
            switch state {
            case .connected(let connection):
                state = .idle
                return connection
            case .connecting:
                // A connect that hangs (a server that accepts and never answers) is not
                // waited for again; if it ever completes, the connection is kept or closed
                // then (see ``connection()``).
                state = .idle
                return nil
            default:
                return nil
            }
        }
        // Kept alive until the close has happened: the caller that timed out may hold the
        // last other reference and let go of it at once, and a PostgresConnection must not be
        // released while its channel is still open (PostgresNIO asserts so in debug builds,
        // and in release builds the socket would outlive every reference to it).
        if let stale { stale.close().whenComplete { _ in withExtendedLifetime(stale) {} } }
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

/// A query on a ``PostgresLink`` that did not finish in time (the connection was dropped).
struct QueryTimedOut: Error, CustomStringConvertible {
    var link: String
    var limit: TimeAmount
    var description: String {
        "the \(link) connection did not answer within \(limit.nanoseconds / 1_000_000) ms; it was dropped and will be reopened"
    }
}
