import Foundation
import HTTPServerSupport
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import WatermarkCore

/// The contract's error body, `{"error": {"code", "message"}}` (`ErrorEnvelope`, as the storage service
/// writes it), with its status. It renders itself.
struct APIError: Error, HTTPResponseError, Sendable {
    var status: HTTPResponse.Status
    var code: String
    var message: String

    init(_ status: HTTPResponse.Status, code: String, message: String) {
        self.status = status
        self.code = code
        self.message = message
    }

    func response(from request: Request, context: some RequestContext) throws -> Response {
        Self.jsonResponse(status: status, code: code, message: message)
    }

    static func jsonResponse(status: HTTPResponse.Status, code: String, message: String) -> Response {
        let data = (try? JSONEncoder.contract().encode(ErrorEnvelope(.init(code: code, message: message)))) ?? Data()
        return Response(
            status: status, headers: [.contentType: "application/json"],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: data))
        )
    }
}

/// Turns every other error (unknown route, wrong method, anything unexpected) into an `APIError`, which
/// renders itself; an `APIError` passes through untouched. Never leaks an internal error's text.
struct JSONErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    /// The routes, for 405 and `Allow` on a known path asked with another method (Hummingbird answers it 404).
    let routes: RouteTable

    func handle(
        _ request: Request, context: Context, next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as APIError {
            throw error
        } catch let error as HTTPError {
            if error.status == .notFound {
                let allowed = routes.allowedMethods(for: request.uri.path)
                if !allowed.isEmpty {
                    let refusal = WatermarkError.methodNotAllowed(request.method.rawValue, allowed: allowed)
                    var answer = APIError.jsonResponse(
                        status: .methodNotAllowed, code: refusal.code, message: refusal.message)
                    answer.headers[.allow] = allowed.joined(separator: ", ")
                    return answer
                }
            }
            let code: String
            switch error.status.code {
            case 404: code = "not_found"
            case 405: code = "method_not_allowed"
            case 400: code = "bad_request"
            default: code = "http_\(error.status.code)"
            }
            let message =
                error.body
                ?? (error.status == .notFound ? "no route for \(request.uri.path)" : error.status.reasonPhrase)
            throw APIError(error.status, code: code, message: message)
        } catch {
            context.logger.error("request failed", metadata: ["error": "\(error)"])
            throw APIError(.internalServerError, code: "internal_error", message: "internal error")
        }
    }
}
