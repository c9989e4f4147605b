import NIOCore
import NIOHTTP1

/// The HTTP/1.1 handlers of one cleartext connection, installed by the server and kept by
/// the connection's ``HTTPHandler`` so that a connection turning into an event stream removes
/// exactly these (a stream only needs to notice the peer closing; every handler left in its
/// pipeline would cost each of many thousands of streams its memory).
struct HTTP1Handlers {
    let backPressure: BackPressureHandler
    let decoder: ByteToMessageHandler<HTTPRequestDecoder>
    let encoder: HTTPResponseEncoder
    let pipelining: HTTPServerPipelineHandler
    let headerValidator: NIOHTTPResponseHeadersValidator
    /// In front of the decoder, when the store commits inline (see ``PublishFastPath``).
    let fastPath: PublishFastPath?

    /// Adds the handlers, in order, to `channel`'s pipeline.
    ///
    /// The encoder does not add framing headers of its own: every answer sets
    /// `Content-Length` (or is a stream, which sets `Transfer-Encoding: chunked` or
    /// `Connection: close` itself).
    static func install(on channel: any Channel, maxHeaderBytes: Int, fastPath: PublishFastPath?) throws -> HTTP1Handlers {
        var limits = NIOHTTPDecoderLimitConfiguration()
        limits.maxHeaderListSize = maxHeaderBytes
        limits.maxHeaderFieldSize = maxHeaderBytes
        var encoderConfiguration = HTTPResponseEncoder.Configuration()
        encoderConfiguration.automaticallySetFramingHeaders = false
        let handlers = HTTP1Handlers(
            // Back-pressure on every connection (SPEC §16): once the connection's unsent
            // output passes its write-buffer watermark (--max-queued-bytes), no more is read
            // from it until the client has taken some.
            backPressure: BackPressureHandler(),
            decoder: ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .dropBytes, limitConfiguration: limits)),
            encoder: HTTPResponseEncoder(configuration: encoderConfiguration),
            pipelining: HTTPServerPipelineHandler(),
            headerValidator: NIOHTTPResponseHeadersValidator(),
            fastPath: fastPath)
        let operations = channel.pipeline.syncOperations
        try operations.addHandler(handlers.backPressure)
        if let fastPath { try operations.addHandler(fastPath) }
        try operations.addHandler(handlers.encoder)
        try operations.addHandler(handlers.decoder)
        try operations.addHandler(handlers.pipelining)
        try operations.addHandler(handlers.headerValidator)
        return handlers
    }

    /// Removes these handlers (and `handler`, the connection's HTTP handler) from `pipeline`.
    func remove(from pipeline: ChannelPipeline, with handler: HTTPHandler) {
        let operations = pipeline.syncOperations
        var all: [any RemovableChannelHandler] = [decoder, encoder, pipelining, headerValidator, handler, backPressure]
        if let fastPath { all.append(fastPath) }
        for each in all {
            operations.removeHandler(each, promise: nil)
        }
    }
}
