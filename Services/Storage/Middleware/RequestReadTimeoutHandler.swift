import NIOCore
import NIOHTTPTypes

/// Closes a connection whose request takes longer than `timeout` to arrive in full, from its head to
/// the end of its body.
///
/// The idle timeout alone does not stop a slow-body attack: every body byte counts as activity, so a
/// client sending one byte a second would hold its connection (and a slot of `MAX_CONNECTIONS`) for
/// the 18 hours that 64 KiB take. Slow headers are already cut off by the idle timeout, since no part
/// reaches the server until the head is complete.
///
/// The timer is started only for a request still incomplete when a read has been handled: most requests arrive
/// whole in one read, and starting and cancelling a timer for each of them was 5 % of the event loops' samples
/// under load (the loop's heap of scheduled tasks, the promise of each).
final class RequestReadTimeoutHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart

    private let timeout: TimeAmount
    /// When the head of the request being read arrived; nil between requests.
    private var headArrived: NIODeadline?
    private var deadline: Scheduled<Void>?

    init(timeout: TimeAmount) {
        self.timeout = timeout
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head:
            stop()
            headArrived = .now()
        case .end:
            stop()
        case .body:
            break
        }
        context.fireChannelRead(data)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        // The request's end did not come with what was read: it has until its head's arrival plus the timeout.
        if let headArrived, deadline == nil {
            let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
            deadline = context.eventLoop.scheduleTask(deadline: headArrived + timeout) {
                loopBound.value.close(promise: nil)
            }
        }
        context.fireChannelReadComplete()
    }

    func channelInactive(context: ChannelHandlerContext) {
        stop()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        stop()
    }

    /// No request is being read: no deadline.
    private func stop() {
        deadline?.cancel()
        deadline = nil
        headArrived = nil
    }
}
