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
    /// (one hop per loop) and merges them per token.
    func listClients(_ request: EndpointRequest, route: Route, token: String?) -> EventLoopFuture<EndpointReply> {
        let shards = server.hub.shards
        let futures = shards.map { shard in shard.eventLoop.submit { shard.streamInfos(token: token) } }
        let cors = corsFields(request)
        return EventLoopFuture.whenAllSucceed(futures, on: request.eventLoop).map { perShard -> EndpointReply in
            let clients = Self.mergeClients(perShard.flatMap { $0 })
            if let token {
                guard let client = clients.first(where: { $0.token == token }) else {
                    return .answer(self.problem(Problem(.notFound, "no client '\(token)' is connected"), request, route: route))
                }
                return .answer(.json(client.json, headers: cors, allocator: request.allocator))
            }
            let json = JSONValue.object([("clients", .array(clients.map(\.json))), ("count", .integer(clients.count))])
            return .answer(.json(json, headers: cors, allocator: request.allocator))
        }.flatMapErrorThrowing { error in
            .answer(self.answer(for: error, request, route: route))
        }
    }

    /// `DELETE /clients/{token}`: closes the token's streams on every shard. It does not
    /// ban: the client may reconnect and resume.
    func disconnect(_ request: EndpointRequest, route: Route, token: String) -> EventLoopFuture<EndpointReply> {
        let futures = server.hub.shards.map { shard in shard.eventLoop.submit { shard.close(token: token) } }
        let cors = corsFields(request)
        return EventLoopFuture.whenAllComplete(futures, on: request.eventLoop).map { results -> EndpointReply in
            let closed = results.reduce(0) { $0 + ((try? $1.get()) ?? 0) }
            if closed == 0 {
                return .answer(self.problem(Problem(.notFound, "no client '\(token)' is connected"), request, route: route))
            }
            return .answer(EndpointAnswer(status: .noContent, headers: cors, body: nil))
        }
    }

    struct ClientSummary {
        var token: String
        var connections: Int
        var topics: [String]
        var connectedAt: Int64
        var lastEventID: Int64?
        var queuedBytes: Int

        var json: JSONValue {
            .object([
                ("client", .string(token)), ("connections", .integer(connections)),
                ("topics", .array(topics.map(JSONValue.string))),
                ("connectedAt", .string(WallClock.iso8601(millisecondsSince1970: connectedAt))),
                ("lastEventId", .stringOrNull(lastEventID.map { String($0) })), ("queuedBytes", .integer(queuedBytes)),
            ])
        }
    }

    /// Merges stream records into one summary per token: topics are the union, the
    /// connection time the earliest, the last event id the newest delivered.
    static func mergeClients(_ infos: [Shard.StreamInfo]) -> [ClientSummary] {
        var byToken: [String: ClientSummary] = [:]
        for info in infos {
            if var summary = byToken[info.token] {
                summary.connections += 1
                for topic in info.topics where !summary.topics.contains(where: { $0.bytesEqual(topic) }) { summary.topics.append(topic) }
                summary.connectedAt = min(summary.connectedAt, info.connectedAt)
                if let id = info.lastEventID { summary.lastEventID = max(summary.lastEventID ?? id, id) }
                summary.queuedBytes += info.queuedBytes
                byToken[info.token] = summary
            } else {
                byToken[info.token] = ClientSummary(
                    token: info.token, connections: 1, topics: info.topics, connectedAt: info.connectedAt,
                    lastEventID: info.lastEventID, queuedBytes: info.queuedBytes)
            }
        }
        return byToken.values.sorted { ($0.connectedAt, $0.token) < ($1.connectedAt, $1.token) }
    }
}
