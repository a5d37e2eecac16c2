import Foundation
import HTTPServerSupport
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NIOHTTP1
import WatermarkCore

/// Turns every failure that is not already a `WatermarkError` into one, in one place; a `WatermarkError`
/// passes through untouched and renders itself (`HTTPResponseError`).
///
/// Hummingbird's own errors (unknown route, method, body too large) are mapped; a route that exists with
/// other methods is answered here with 405 and its `Allow` header; anything else is a bug: logged in full,
/// answered with a plain 500 that leaks no detail.
struct ErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    let routes: RouteTable

    func handle(
        _ request: Request, context: Context, next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as WatermarkError {
            throw error
        } catch let error as HTTPError {
            switch error.status {
            case .notFound:
                let allowed = routes.allowedMethods(for: request.uri.path)
                if allowed.isEmpty { throw WatermarkError.routeNotFound(request.uri.path) }
                return ContractJSONEncoder.error(
                    .methodNotAllowed(request.method.rawValue, allowed: allowed),
                    headers: [.allow: allowed.joined(separator: ", ")]
                )
            case .contentTooLarge:
                throw WatermarkError.payloadTooLarge(limit: context.maxUploadSize)
            default:
                let code = error.status.reasonPhrase.lowercased().replacingOccurrences(of: " ", with: "_")
                throw WatermarkError(
                    status: error.status.code, code: code, message: error.body ?? error.status.reasonPhrase)
            }
        } catch is NIOTooManyBytesError {
            // A chunked body (no Content-Length) over the limit, found while collecting it.
            throw WatermarkError.payloadTooLarge(limit: context.maxUploadSize)
        } catch let error as HTTPParserError {
            // The body broke HTTP framing (bad chunk sizes, EOF inside a chunk): the client's fault.
            context.logger.info("Request body unreadable", metadata: ["error": "\(String(reflecting: error))"])
            throw WatermarkError.incompleteRequest("the request body could not be read: \(String(reflecting: error))")
        } catch let error where error is IOError || error is ChannelError {
            // The client went away mid-request (reset, closed): nobody will read this answer, and it is not
            // a server fault, so no error-level line and no 500 in the metrics.
            context.logger.info("Client disconnected mid-request", metadata: ["error": "\(String(reflecting: error))"])
            throw WatermarkError.incompleteRequest("the connection ended before the request was complete")
        } catch {
            context.logger.error("Unexpected error", metadata: ["error": "\(String(reflecting: error))"])
            throw WatermarkError.internalError
        }
    }
}
