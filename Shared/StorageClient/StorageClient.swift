import WatermarkCore

/// How a collector reads and moves watermarks. Both services and every user of the platform talk to the
/// Storage Service through this protocol only; `HTTPStorageClient` speaks to the real service and
/// `InMemoryStorageClient` applies the very same rules in memory for tests and development.
public protocol StorageClient: Sendable {
    /// The source's watermark, or `nil` when it has none yet (its first collection).
    func getWatermark(sourceID: SourceID) async throws -> Watermark?

    /// Records one run. A success moves `last_successful_timestamp` to `timestamp`; a failure keeps it.
    @discardableResult
    func updateWatermark(
        sourceID: SourceID, timestamp: Timestamp?, status: RunStatus, errorMessage: String?,
        recordsCollected: Int64?, options: UpdateOptions
    ) async throws -> Watermark

    /// Resets a source so that its next run starts from the default lookback; the history keeps a `reset` run with
    /// `reason`.
    func deleteWatermark(
        sourceID: SourceID, precondition: WritePrecondition?, leaseToken: Int64?, reason: String?
    ) async throws

    func listWatermarks(_ query: WatermarkQuery) async throws -> WatermarkPage

    /// Accepted updates, newest first.
    func history(sourceID: SourceID, limit: Int?) async throws -> [WatermarkRun]

    /// The live lease on the source (who holds it, until when), `nil` when none is live.
    func lease(sourceID: SourceID) async throws -> Lease?

    func acquireLease(sourceID: SourceID, owner: String, ttl: Duration) async throws -> Lease

    func releaseLease(sourceID: SourceID, token: Int64) async throws

    /// `true` when the storage answers and its database can be used; never throws.
    func healthCheck() async -> Bool

    /// Releases what the client holds (connections); call once when done. In memory: nothing to do.
    func shutdown() async throws
}

/// The optional parts of an update: conditions, retry safety and fencing.
public struct UpdateOptions: Sendable, Equatable {
    /// `If-Match` / `If-None-Match: *`.
    public var precondition: WritePrecondition?
    /// Makes retries safe: the server applies one key once. The HTTP client generates one per call when
    /// this is `nil`; pass your own to make a retry across a process restart safe too.
    public var idempotencyKey: String?
    /// The fencing token of the caller's lease on the source.
    public var leaseToken: Int64?
    /// Accept a success timestamp older than the stored one (deliberate backfill).
    public var force: Bool
    /// Why, recorded in the history with the run (`X-Reason`).
    public var reason: String?

    public init(
        precondition: WritePrecondition? = nil, idempotencyKey: String? = nil, leaseToken: Int64? = nil,
        force: Bool = false, reason: String? = nil
    ) {
        self.precondition = precondition
        self.idempotencyKey = idempotencyKey
        self.leaseToken = leaseToken
        self.force = force
        self.reason = reason
    }
}

extension StorageClient {
    /// A reset without a reason.
    public func deleteWatermark(sourceID: SourceID, precondition: WritePrecondition?, leaseToken: Int64?) async throws {
        try await deleteWatermark(sourceID: sourceID, precondition: precondition, leaseToken: leaseToken, reason: nil)
    }

    /// The seed's call: `update_watermark(source_id, timestamp, status, error_message)` plus the count.
    @discardableResult
    public func updateWatermark(
        sourceID: SourceID, timestamp: Timestamp?, status: RunStatus, errorMessage: String? = nil,
        recordsCollected: Int64? = nil, ifVersion version: Int64? = nil, idempotencyKey: String? = nil,
        leaseToken: Int64? = nil
    ) async throws -> Watermark {
        try await updateWatermark(
            sourceID: sourceID, timestamp: timestamp, status: status, errorMessage: errorMessage,
            recordsCollected: recordsCollected,
            options: UpdateOptions(
                precondition: version.map { .version($0) }, idempotencyKey: idempotencyKey, leaseToken: leaseToken
            )
        )
    }
}

/// What went wrong talking to the storage. Carries the server's error code and message, so a caller can
/// tell a regression from a lost lease without parsing text.
public enum StorageClientError: Error, Sendable, CustomStringConvertible {
    /// 404: no such watermark (or history).
    case notFound(message: String)
    /// 409: `watermark_regression`, `lease_held`, `lease_required`, `stale_lease`, `idempotency_key_reused`.
    case conflict(code: String, message: String)
    /// 412: `If-Match` / `If-None-Match` did not hold.
    case preconditionFailed(message: String)
    /// 401, or 403 for a read-only token.
    case unauthorized(message: String)
    /// Other 4xx: the request itself is wrong (`code` is the server's error code).
    case invalidRequest(code: String, message: String)
    /// Transport failures, timeouts, 408, 429, 5xx, unreadable answers: worth retrying later.
    case unavailable(underlying: any Error)

    /// Maps the service's error body (or the in-memory store's refusal) to a case.
    public init(_ error: WatermarkError) {
        switch error.statusCode {
        case 404: self = .notFound(message: error.message)
        case 409: self = .conflict(code: error.code, message: error.message)
        case 412: self = .preconditionFailed(message: error.message)
        case 401, 403: self = .unauthorized(message: error.message)
        // A rate limit or a request timeout says the storage could not take the request now, not that the request
        // is wrong: the same call may succeed later (a queued update stays queued).
        case 408, 429: self = .unavailable(underlying: error)
        case 400..<500: self = .invalidRequest(code: error.code, message: error.message)
        default: self = .unavailable(underlying: error)
        }
    }

    /// The server's snake_case code where there is one.
    public var code: String? {
        switch self {
        case .notFound: "watermark_not_found"
        case .conflict(let code, _), .invalidRequest(let code, _): code
        case .preconditionFailed: "precondition_failed"
        case .unauthorized: "unauthorized"
        case .unavailable(let underlying): (underlying as? WatermarkError)?.code
        }
    }

    /// `true` when the same call may succeed later unchanged (storage down, slow or failing).
    public var isTransient: Bool {
        if case .unavailable = self { return true }
        return false
    }

    /// `true` when the storage refused the call for a lease: required, held by another, or a token it replaced.
    public var isLeaseRefusal: Bool {
        guard case .conflict(let code, _) = self else { return false }
        return ["lease_required", "stale_lease", "lease_held"].contains(code)
    }

    public var description: String {
        switch self {
        case .notFound(let message): "not found: \(message)"
        case .conflict(let code, let message): "conflict (\(code)): \(message)"
        case .preconditionFailed(let message): "precondition failed: \(message)"
        case .unauthorized(let message): "unauthorized: \(message)"
        case .invalidRequest(let code, let message): "invalid request (\(code)): \(message)"
        case .unavailable(let underlying): "storage unavailable: \(underlying)"
        }
    }
}
