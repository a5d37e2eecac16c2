import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import NIOFoundationCompat
import WatermarkCore

/// The per-request context of the storage service.
struct StorageRequestContext: CallerRequestContext {
    var coreContext: CoreRequestContextStorage
    var caller: String?

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
    }

    /// The contract's body limit, the one definition of it: 64 KiB, answered with 413 beyond.
    var maxUploadSize: Int { 64 * 1024 }

    /// `request.decode(as:context:)` reads JSON bodies with the contract's refusals.
    var requestDecoder: ContractJSONDecoder { ContractJSONDecoder() }

    /// Handlers return `ResponseEncodable` values; this writes them as the contract's JSON.
    var responseEncoder: ContractJSONEncoder { ContractJSONEncoder() }
}

/// The contract's JSON answers: keys sorted, slashes not escaped, one line and a newline, `application/json`.
struct ContractJSONEncoder: ResponseEncoder {
    func encode(_ value: some Encodable, from request: Request, context: some RequestContext) throws -> Response {
        try Self.response(value)
    }

    /// One encoder for every answer: its options are set once and it keeps nothing between calls.
    private static let encoder = JSONEncoder.contract()

    /// The body of `value`: the one place the JSON is written (the read cache keeps these bytes).
    static func body(_ value: some Encodable) throws -> ByteBuffer {
        var buffer = ByteBuffer()
        try encoder.encode(value, into: &buffer)
        buffer.writeString("\n")
        return buffer
    }

    static func response(
        _ value: some Encodable, status: HTTPResponse.Status = .ok, headers: HTTPFields = [:]
    ) throws -> Response {
        response(body: try body(value), status: status, headers: headers)
    }

    static func response(body: ByteBuffer, status: HTTPResponse.Status = .ok, headers: HTTPFields = [:]) -> Response {
        var fields = headers
        fields[.contentType] = "application/json"
        return Response(status: status, headers: fields, body: .init(byteBuffer: body))
    }

    /// The contract's error body: `{"error": {"code", "message"}}` (plus holder and expiry for a held lease).
    static func error(_ error: WatermarkError, headers: HTTPFields = [:]) -> Response {
        do {
            return try response(ErrorEnvelope(error), status: error.status, headers: headers)
        } catch {
            return Response(status: .internalServerError)
        }
    }
}

/// Reads a request body as JSON the way the contract says: 415 for a content type that is not JSON, 413 over
/// the context's `maxUploadSize`, 400 naming what is wrong with the JSON or the field at fault.
struct ContractJSONDecoder: RequestDecoder {
    func decode<T: Decodable>(_ type: T.Type, from request: Request, context: some RequestContext) async throws -> T {
        var request = request
        return try await request.decodeJSON(type, limit: context.maxUploadSize)
    }
}
