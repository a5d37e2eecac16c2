import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NIOHTTP1
import WatermarkCore

/// Turns every error into the contract's JSON body with the right status, in one place.
///
/// Refusals of the rules are `WatermarkError`s already; Hummingbird's own errors (unknown route,
/// method, body too large) are mapped; anything else is a bug: logged in full, answered with a plain
/// 500 that leaks no detail.
struct ErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    let routes: RouteTable

    func handle(
        _ request: Request, context: Context, next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as WatermarkError {
            return JSONResponse.error(error)
        } catch let error as HTTPError {
            switch error.status {
            case .notFound:
                let allowed = routes.allowedMethods(for: request.uri.path)
                if allowed.isEmpty { return JSONResponse.error(.routeNotFound(request.uri.path)) }
                return JSONResponse.error(
                    .methodNotAllowed(request.method.rawValue, allowed: allowed),
                    headers: [.allow: allowed.joined(separator: ", ")]
                )
            case .contentTooLarge:
                return JSONResponse.error(.payloadTooLarge(limit: context.maxUploadSize))
            default:
                let code = error.status.reasonPhrase.lowercased().replacingOccurrences(of: " ", with: "_")
                return JSONResponse.error(
                    WatermarkError(
                        status: error.status.code, code: code, message: error.body ?? error.status.reasonPhrase)
                )
            }
        } catch is NIOTooManyBytesError {
            // A chunked body (no Content-Length) over the limit, found while collecting it.
            return JSONResponse.error(.payloadTooLarge(limit: context.maxUploadSize))
        } catch let error as HTTPParserError {
            // The body broke HTTP framing (bad chunk sizes, EOF inside a chunk): the client's fault.
            context.logger.info("Request body unreadable", metadata: ["error": "\(String(reflecting: error))"])
            return JSONResponse.error(
                .incompleteRequest("the request body could not be read: \(String(reflecting: error))"))
        } catch let error where error is IOError || error is ChannelError {
            // The client went away mid-request (reset, closed): nobody will read this answer, and it is not
            // a server fault, so no error-level line and no 500 in the metrics.
            context.logger.info("Client disconnected mid-request", metadata: ["error": "\(String(reflecting: error))"])
            return JSONResponse.error(.incompleteRequest("the connection ended before the request was complete"))
        } catch {
            context.logger.error("Unexpected error", metadata: ["error": "\(String(reflecting: error))"])
            return JSONResponse.error(.internalError)
        }
    }
}
