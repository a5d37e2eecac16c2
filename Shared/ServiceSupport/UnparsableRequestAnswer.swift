import Foundation
import HTTPTypes
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import WatermarkCore

/// Gives the contract's JSON error body to the answer Hummingbird writes for a request it cannot parse.
///
/// A request whose head breaks HTTP/1.1 (a header line without a colon, a bad request line, a header past the
/// decoder's limits, a bad chunk size) never reaches the router or its error middleware: Hummingbird's channel
/// handler catches NIO's `HTTPParserError`, answers `400` with an empty body and `Connection: close`, and closes
/// the connection. The contract says every error is JSON. Placed after the HTTP codec, this handler notes the
/// parser's error as it passes inward and, when that empty `400` comes back out, sends it with
/// `{"error": {"code": "malformed_request", "message": ...}}` instead. Answers to requests read before the bad
/// bytes pass untouched (Hummingbird writes its `400` only after them).
public final class UnparsableRequestAnswer: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = HTTPRequestPart
    public typealias InboundOut = HTTPRequestPart
    public typealias OutboundIn = HTTPResponsePart
    public typealias OutboundOut = HTTPResponsePart

    /// The parser's error, once one went by: nothing after it on this connection is parsed.
    private var parserError: HTTPParserError?
    /// The JSON body of the rewritten `400`, written just before its end.
    private var pendingBody: ByteBuffer?

    public init() {}

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? HTTPParserError { parserError = error }
        context.fireErrorCaught(error)
    }

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(var head)
        where parserError != nil && head.status == .badRequest && head.headerFields[.contentLength] == "0":
            let body = Self.body(for: parserError!, allocator: context.channel.allocator)
            head.headerFields[.contentType] = "application/json"
            head.headerFields[.contentLength] = String(body.readableBytes)
            pendingBody = body
            context.write(wrapOutboundOut(.head(head)), promise: promise)
        case .end(let trailers) where pendingBody != nil:
            context.write(wrapOutboundOut(.body(pendingBody!)), promise: nil)
            pendingBody = nil
            context.write(wrapOutboundOut(.end(trailers)), promise: promise)
        default:
            context.write(data, promise: promise)
        }
    }

    /// The error body: the parser's reason by name only (never the bytes sent, which may hold a token).
    static func body(for error: HTTPParserError, allocator: ByteBufferAllocator) -> ByteBuffer {
        let message =
            "the request is not valid HTTP/1.1 (\(error)); the connection is closed, send the request again on a new one"
        let envelope = ErrorEnvelope(.init(code: "malformed_request", message: message))
        var buffer = allocator.buffer(capacity: 256)
        buffer.writeBytes((try? JSONEncoder.contract().encode(envelope)) ?? Data())
        buffer.writeString("\n")
        return buffer
    }
}
