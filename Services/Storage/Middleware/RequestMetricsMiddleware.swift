import HTTPTypes
import Hummingbird
import Logging
import WatermarkCore

/// Counts and times every request by route, method and status, and writes one log line per request:
/// writes at info, reads at debug, server errors at error.
struct RequestMetricsMiddleware<Context: RequestContext>: RouterMiddleware {
    let metrics: StorageMetrics

    func handle(
        _ request: Request, context: Context, next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        let start = ContinuousClock.now
        let response: Response
        do {
            response = try await next(request, context)
        } catch {
            // A refusal renders itself further out (HTTPResponseError); anything else becomes a 500 there.
            let status = (error as? any HTTPResponseError)?.status.code ?? 500
            record(request, context: context, status: status, start: start)
            throw error
        }
        record(request, context: context, status: response.status.code, start: start)
        return response
    }

    private func record(_ request: Request, context: Context, status: Int, start: ContinuousClock.Instant) {
        let elapsed = ContinuousClock.now - start
        let route = context.endpointPath ?? "NotFound"
        metrics.recordRequest(method: request.method.rawValue, route: route, status: status, duration: elapsed)
        let level: Logger.Level =
            status >= 500
            ? .error : (request.method == .get || request.method == .head) && status < 400 ? .debug : .info
        // The line's metadata is built only when it is written (reads log at debug, off by default).
        guard context.logger.logLevel <= level else { return }
        var metadata: Logger.Metadata = [
            "method": "\(request.method.rawValue)", "path": "\(request.uri.path)", "status": "\(status)",
            "duration_ms": "\(elapsed.milliseconds)",
        ]
        if let sourceID = context.parameters.get("source_id") { metadata["source_id"] = "\(sourceID)" }
        context.logger.log(level: level, "Request handled", metadata: metadata)
    }
}
