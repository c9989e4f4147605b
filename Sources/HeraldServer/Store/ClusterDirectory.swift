import HeraldCore
import NIOCore

/// One client (token) as listed by `/clients`: its streams on one node, or merged over the
/// cluster.
struct ClientSummary: Sendable {
    var token: String
    var connections: Int
    var topics: [String]
    var connectedAt: Int64
    var lastEventID: Int64?
    var queuedBytes: Int
    /// How many nodes it is connected to (cluster mode).
    var nodes = 1

    /// Adds another record of the same token: topics are the union (by bytes), the
    /// connection time the earliest, the last event id the newest delivered.
    mutating func merge(_ other: ClientSummary, countingNode: Bool) {
        connections += other.connections
        for topic in other.topics where !topics.contains(where: { $0.bytesEqual(topic) }) { topics.append(topic) }
        connectedAt = min(connectedAt, other.connectedAt)
        if let id = other.lastEventID { lastEventID = max(lastEventID ?? id, id) }
        queuedBytes += other.queuedBytes
        if countingNode { nodes += other.nodes }
    }

    /// Merges records into one summary per token, oldest connection first.
    static func merged(_ records: [ClientSummary], countingNodes: Bool) -> [ClientSummary] {
        var byToken: [String: ClientSummary] = [:]
        for record in records {
            if var summary = byToken[record.token] {
                summary.merge(record, countingNode: countingNodes)
                byToken[record.token] = summary
            } else {
                byToken[record.token] = record
            }
        }
        return byToken.values.sorted { ($0.connectedAt, $0.token) < ($1.connectedAt, $1.token) }
    }
}

/// The cluster side of `/clients` (SPEC §12): presence kept in the shared store, so any node
/// lists every node's clients, and closing a token's streams on every node.
protocol ClusterDirectory: AnyObject, Sendable {
    /// Connects the directory to this node: `clients` lists the node's own clients (published
    /// to the cluster about once a second), `close` closes a token's streams here (asked by
    /// any node).
    func attach(clients: @escaping @Sendable () async -> [ClientSummary], close: @escaping @Sendable (String) -> Void)

    /// The clients of the other live nodes (one record per node and token), or of one token.
    func remoteClients(token: String?) async throws -> [ClientSummary]

    /// Asks every node to close `token`'s streams (this one included).
    func closeEverywhere(token: String) async throws
}
