import HTTPTypes
import Hummingbird
import Logging
import ServiceSupport
import WatermarkCore

/// A request context that carries the name of the token the request was let in with, for the audit trail.
protocol CallerRequestContext: RequestContext {
    /// The name of the API token used (`nil` for the read token, or when the service has no tokens).
    var caller: String? { get set }
}

/// Bearer-token access to the routes of the group it is added to (`/api/v1/*` and `/status`): an API token may
/// do anything, the read token only read. `/health`, `/metrics` and `/openapi.yaml` are outside that group, open
/// for orchestrators and scrapers; they carry no data. The name of the API token used goes into the context, so
/// the history records who made a change without ever holding the token.
///
/// Tokens are compared in constant time and never logged.
struct AuthMiddleware<Context: CallerRequestContext>: RouterMiddleware {
    let apiTokens: APITokens?
    let readToken: String?

    func handle(
        _ request: Request, context: Context, next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        guard let apiTokens else { return try await next(request, context) }
        let presented = APITokens.bearer(request.headers.value(.authorization))
        if let presented, let name = apiTokens.name(of: presented) {
            var context = context
            context.caller = name
            return try await next(request, context)
        }
        if let presented, let readToken, APITokens.constantTimeEquals(presented, readToken) {
            guard request.method == .get || request.method == .head else { throw WatermarkError.forbidden }
            return try await next(request, context)
        }
        context.logger.notice("Request refused: missing or wrong token", metadata: ["path": "\(request.uri.path)"])
        throw WatermarkError.unauthorized
    }

    /// Whether `request` may read data: any token of the service (API or read), or no tokens at all. For the open
    /// routes that show more to a caller who has one (`/metrics`' per-source series).
    func mayRead(_ request: Request) -> Bool {
        guard let apiTokens else { return true }
        guard let presented = APITokens.bearer(request.headers.value(.authorization)) else { return false }
        if apiTokens.name(of: presented) != nil { return true }
        return readToken.map { APITokens.constantTimeEquals(presented, $0) } ?? false
    }
}
