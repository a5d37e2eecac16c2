import Hummingbird

/// The per-request context of the storage service.
struct StorageRequestContext: RequestContext {
    var coreContext: CoreRequestContextStorage

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
    }

    /// The contract's body limit: 64 KiB, answered with 413 beyond.
    var maxUploadSize: Int { 64 * 1024 }
}
