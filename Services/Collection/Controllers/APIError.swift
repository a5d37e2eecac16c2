import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore

/// The contract's error body, `{"error": {"code", "message"}}`, with its status.
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
        let body: [String: [String: String]] = ["error": ["code": code, "message": message]]
        let data = (try? JSONSerialization.data(withJSONObject: body, options: [.sortedKeys])) ?? Data()
        return Response(
            status: status, headers: [.contentType: "application/json"],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: data))
        )
    }
}

/// Turns every error (unknown route, wrong method, anything thrown) into the JSON error body; never leaks an
/// internal error's text.
struct JSONErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(
        _ request: Request, context: Context, next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as APIError {
            return APIError.jsonResponse(status: error.status, code: error.code, message: error.message)
        } catch let error as HTTPError {
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
            return APIError.jsonResponse(status: error.status, code: code, message: message)
        } catch {
            context.logger.error("request failed", metadata: ["error": "\(error)"])
            return APIError.jsonResponse(
                status: .internalServerError, code: "internal_error", message: "internal error")
        }
    }
}
