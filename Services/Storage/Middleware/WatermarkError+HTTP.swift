import HTTPTypes
import Hummingbird
import WatermarkCore

/// Every refusal renders itself, in one place: its status and the contract's `{"error": {...}}` body.
extension WatermarkError: HTTPResponseError {
    public var status: HTTPResponse.Status { HTTPResponse.Status(code: statusCode) }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        ContractJSONEncoder.error(self)
    }
}

/// The refusals that come from HTTP itself rather than from the watermark rules (401, 403, 404 for a path,
/// 405, 413, 415, 500): the storage service's alone, so they live here and not in WatermarkCore.
extension WatermarkError {
    static let unauthorized = WatermarkError(
        status: 401, code: "unauthorized",
        message: "missing or wrong bearer token: send 'Authorization: Bearer <STORAGE_API_TOKEN>'"
    )
    static let forbidden = WatermarkError(
        status: 403, code: "forbidden", message: "the read-only token cannot change data; use STORAGE_API_TOKEN"
    )

    static func routeNotFound(_ path: String) -> WatermarkError {
        WatermarkError(status: 404, code: "not_found", message: "no such endpoint: \(path.prefix(200))")
    }
    static func payloadTooLarge(limit: Int) -> WatermarkError {
        WatermarkError(status: 413, code: "payload_too_large", message: "the request body is over \(limit) bytes")
    }
    static func unsupportedMediaType(_ type: String) -> WatermarkError {
        WatermarkError(
            status: 415, code: "unsupported_media_type",
            message: "content type '\(type.prefix(100))' is not JSON: send 'Content-Type: application/json'"
        )
    }
    static let internalError = WatermarkError(
        status: 500, code: "internal_error", message: "an unexpected error occurred; see the server log"
    )
    /// A request whose body never arrived whole: the connection ended or broke HTTP framing.
    static func incompleteRequest(_ detail: String) -> WatermarkError {
        WatermarkError(status: 400, code: "incomplete_request", message: detail)
    }
}
