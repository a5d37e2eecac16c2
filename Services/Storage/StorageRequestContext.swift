import Hummingbird

/// The per-request context of the storage service.
struct StorageRequestContext: RequestContext {
    var coreContext: CoreRequestContextStorage

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
    }

    /// The contract's body limit, the one definition of it: 64 KiB, answered with 413 beyond.
    var maxUploadSize: Int { 64 * 1024 }

    /// `request.decode(as:context:)` reads JSON bodies with the contract's refusals.
    var requestDecoder: ContractJSONDecoder { ContractJSONDecoder() }
}

/// Reads a request body as JSON the way the contract says: 415 for a content type that is not JSON, 413 over
/// the context's `maxUploadSize`, 400 naming what is wrong with the JSON or the field at fault.
struct ContractJSONDecoder: RequestDecoder {
    func decode<T: Decodable>(_ type: T.Type, from request: Request, context: some RequestContext) async throws -> T {
        var request = request
        return try await request.decodeJSON(type, limit: context.maxUploadSize)
    }
}
