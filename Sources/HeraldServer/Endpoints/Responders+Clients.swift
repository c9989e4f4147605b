import HTTPTypes
import HeraldCore
import NIOCore

extension Responders {
    /// The CORS headers of the restricted endpoints (listed origins only).
    func corsFields(_ request: EndpointRequest) -> HTTPFields {
        var fields = HTTPFields()
        fields.append(server.corsHeaders(origin: request.origin, scope: .restricted))
        return fields
    }

    /// `GET /clients` and `GET /clients/{token}` (SPEC §3): asks every shard for its streams
    /// (one hop per loop) and merges them per token; in a cluster (SPEC §12) with the other
    /// live nodes' clients from the shared directory (at most about 2 s old).
    func listClients(_ request: EndpointRequest, route: Route, token: String?) -> EventLoopFuture<EndpointReply> {
        let shards = server.hub.shards
        let directory = server.hub.store.cluster
        let cors = corsFields(request)
        return request.eventLoop.makeFutureWithTask { () -> EndpointReply in
            var clients = await Self.localClients(shards, token: token)
            if let directory {
                let remote: [ClientSummary]
                do {
                    remote = try await directory.remoteClients(token: token)
                } catch {
                    return .answer(self.problem(
                        Problem(.serviceUnavailable, "the cluster's client list cannot be read while its database is unreachable; retry",
                                headers: [("Retry-After", "1")]), request, route: route))
                }
                clients = ClientSummary.merged(clients + remote, countingNodes: true)
            }
            let cluster = directory != nil
            if let token {
                guard let client = clients.first(where: { $0.token == token }) else {
                    return .answer(self.problem(Problem(.notFound, "no client '\(token)' is connected"), request, route: route))
                }
                return .answer(.json(client.json(cluster: cluster), headers: cors, allocator: request.allocator))
            }
            let json = JSONValue.object([("clients", .array(clients.map { $0.json(cluster: cluster) })), ("count", .integer(clients.count))])
            return .answer(.json(json, headers: cors, allocator: request.allocator))
        }
    }

    /// `DELETE /clients/{token}`: closes the token's streams on every shard, and in a cluster
    /// on every node (through the database's notifications, within a second). It does not
    /// ban: the client may reconnect and resume.
    func disconnect(_ request: EndpointRequest, route: Route, token: String) -> EventLoopFuture<EndpointReply> {
        let shards = server.hub.shards
        let directory = server.hub.store.cluster
        let cors = corsFields(request)
        return request.eventLoop.makeFutureWithTask { () -> EndpointReply in
            var closed = 0
            for shard in shards {
                closed += (try? await shard.eventLoop.submit { shard.close(token: token) }.get()) ?? 0
            }
            if let directory {
                do {
                    try await directory.closeEverywhere(token: token)
                    // Known elsewhere? The directory may be a second behind a new stream, so
                    // a token it does not list yet is looked up once more after it refreshed.
                    if closed == 0, try await directory.remoteClients(token: token).isEmpty {
                        try await Task.sleep(nanoseconds: 1_200_000_000)
                        if try await directory.remoteClients(token: token).isEmpty == false { closed = 1 }
                    } else {
                        closed = max(closed, 1)
                    }
                } catch {
                    return .answer(self.problem(
                        Problem(.serviceUnavailable, "the other nodes cannot be reached while the cluster's database is unreachable; retry",
                                headers: [("Retry-After", "1")]), request, route: route))
                }
            }
            if closed == 0 {
                return .answer(self.problem(Problem(.notFound, "no client '\(token)' is connected"), request, route: route))
            }
            return .answer(EndpointAnswer(status: .noContent, headers: cors, body: nil))
        }
    }

    /// One summary per token from stream records (see ``ClientSummary/merged(_:countingNodes:)``).
    static func mergeClients(_ infos: [Shard.StreamInfo]) -> [ClientSummary] {
        ClientSummary.merged(infos.map {
            ClientSummary(token: $0.token, connections: 1, topics: $0.topics, connectedAt: $0.connectedAt,
                          lastEventID: $0.lastEventID, queuedBytes: $0.queuedBytes)
        }, countingNodes: false)
    }

    /// This node's clients, merged per token (every shard visited once, one hop per loop).
    static func localClients(_ shards: [Shard], token: String?) async -> [ClientSummary] {
        var infos: [Shard.StreamInfo] = []
        for shard in shards {
            if let some = try? await shard.eventLoop.submit({ shard.streamInfos(token: token) }).get() { infos += some }
        }
        return mergeClients(infos)
    }
}

extension ClientSummary {
    func json(cluster: Bool) -> JSONValue {
        var fields: [(String, JSONValue)] = [
            ("client", .string(token)), ("connections", .integer(connections)),
            ("topics", .array(topics.map(JSONValue.string))),
            ("connectedAt", .string(WallClock.iso8601(millisecondsSince1970: connectedAt))),
            ("lastEventId", .stringOrNull(lastEventID.map { String($0) })), ("queuedBytes", .integer(queuedBytes)),
        ]
        if cluster { fields.append(("nodes", .integer(nodes))) }
        return .object(fields)
    }
}
