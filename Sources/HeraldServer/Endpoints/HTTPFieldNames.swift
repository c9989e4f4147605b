import HTTPTypes

/// Field names Herald reads or writes that swift-http-types does not name.
extension HTTPField.Name {
    static let lastEventID = HTTPField.Name("Last-Event-ID")!
    static let idempotencyKey = HTTPField.Name("Idempotency-Key")!
    static let idempotentReplayed = HTTPField.Name("Idempotent-Replayed")!
    static let xAccelBuffering = HTTPField.Name("X-Accel-Buffering")!
    static let secFetchSite = HTTPField.Name("Sec-Fetch-Site")!
}
