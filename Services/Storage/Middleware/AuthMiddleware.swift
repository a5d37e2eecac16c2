import HTTPTypes
import Hummingbird
import Logging
import WatermarkCore

/// Bearer-token access to the routes of the group it is added to (`/api/v1/*` and `/status`): the API
/// token may do anything, the read token only read. `/health`, `/metrics` and `/openapi.yaml` are outside
/// that group, open for orchestrators and scrapers; they carry no data.
///
/// Tokens are compared in constant time and never logged.
struct AuthMiddleware<Context: RequestContext>: RouterMiddleware {
    let apiToken: String?
    let readToken: String?

    func handle(
        _ request: Request, context: Context, next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        guard let apiToken else { return try await next(request, context) }
        let presented = Self.bearer(request.headers[.authorization])
        if let presented, Self.constantTimeEquals(presented, apiToken) {
            return try await next(request, context)
        }
        if let presented, let readToken, Self.constantTimeEquals(presented, readToken) {
            guard request.method == .get || request.method == .head else { throw WatermarkError.forbidden }
            return try await next(request, context)
        }
        context.logger.notice("Request refused: missing or wrong token", metadata: ["path": "\(request.uri.path)"])
        throw WatermarkError.unauthorized
    }

    static func bearer(_ header: String?) -> String? {
        guard let header else { return nil }
        let parts = header.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else { return nil }
        return String(parts[1]).trimmingWhitespace()
    }

    /// Compares every byte of the longer input, so the time taken says nothing about where they differ.
    static func constantTimeEquals(_ lhs: String, _ rhs: String) -> Bool {
        let a = Array(lhs.utf8)
        let b = Array(rhs.utf8)
        var difference: UInt8 = a.count == b.count ? 0 : 1
        for index in 0..<max(a.count, b.count) {
            difference |= (index < a.count ? a[index] : 0) ^ (index < b.count ? b[index] : 0)
        }
        return difference == 0
    }
}
