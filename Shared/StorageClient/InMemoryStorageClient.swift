import WatermarkCore
import WatermarkStores

/// A `StorageClient` that keeps watermarks in memory, for unit tests and development without a Storage
/// Service.
///
/// It has the service's semantics because it runs the service's rules: it wraps `MemoryWatermarkStore`,
/// which applies `WatermarkRules` (404, versions, regression, failed runs, leases, fencing, idempotency),
/// and maps each refusal to the same `StorageClientError` the HTTP client builds from the service's error
/// body. The few checks the service makes on the wire (query limits, whole-second TTLs) are mirrored
/// here, so the same conformance suite passes against both.
///
/// `setAvailable(false)` simulates an outage: every call then fails as `.unavailable`, as the HTTP client
/// does when the service cannot be reached.
public actor InMemoryStorageClient: StorageClient {
    /// The store holding the state; share it to inspect or seed data in a test.
    public let store: MemoryWatermarkStore
    private var available = true

    public init(store: MemoryWatermarkStore = MemoryWatermarkStore()) {
        self.store = store
    }

    public init(policy: WatermarkPolicy, clock: @escaping @Sendable () -> Timestamp = Timestamp.now) {
        self.store = MemoryWatermarkStore(policy: policy, clock: clock)
    }

    /// Simulates the storage going away (`false`) and coming back (`true`).
    public func setAvailable(_ available: Bool) {
        self.available = available
    }

    public func getWatermark(sourceID: SourceID) async throws -> Watermark? {
        try await call { await store.watermark(for: sourceID) }
    }

    @discardableResult
    public func updateWatermark(
        sourceID: SourceID, timestamp: Timestamp?, status: RunStatus, errorMessage: String?,
        recordsCollected: Int64?, options: UpdateOptions
    ) async throws -> Watermark {
        try await call {
            if let key = options.idempotencyKey { try WatermarkRules.validateIdempotencyKey(key) }
            let update = WatermarkUpdate(
                timestamp: timestamp, status: status, errorMessage: errorMessage, recordsCollected: recordsCollected
            )
            // The same checks the service makes when it decodes the body.
            try update.validate()
            let write = WatermarkWrite(
                sourceID: sourceID, update: update, force: options.force, precondition: options.precondition,
                leaseToken: options.leaseToken, idempotencyKey: options.idempotencyKey,
                attribution: Attribution(reason: options.reason)
            )
            return try await store.write(write).watermark
        }
    }

    public func deleteWatermark(
        sourceID: SourceID, precondition: WritePrecondition?, leaseToken: Int64?, reason: String?
    ) async throws {
        try await call {
            try await store.delete(
                sourceID, precondition: precondition, leaseToken: leaseToken, attribution: Attribution(reason: reason))
        }
    }

    public func lease(sourceID: SourceID) async throws -> Lease? {
        try await call { try await store.lease(for: sourceID) }
    }

    public func listWatermarks(_ query: WatermarkQuery) async throws -> WatermarkPage {
        try await call {
            try Self.check("limit", query.limit, in: 1...WatermarkQuery.maxLimit)
            var query = query
            // The wire carries whole seconds.
            query.staleAfter = query.staleAfter.map { .seconds($0.components.seconds) }
            if let staleAfter = query.staleAfter {
                try Self.check("stale_after_seconds", Int(staleAfter.components.seconds), in: 0...3_153_600_000)
            }
            return await store.list(query)
        }
    }

    public func history(sourceID: SourceID, limit: Int?) async throws -> [WatermarkRun] {
        try await call {
            let limit = limit ?? Self.defaultHistoryLimit
            try Self.check("limit", limit, in: 1...1000)
            return try await store.history(for: sourceID, limit: limit)
        }
    }

    public func acquireLease(sourceID: SourceID, owner: String, ttl: Duration) async throws -> Lease {
        try await call {
            // The wire carries whole seconds, at least 1.
            let seconds = ttl.components.seconds
            guard seconds >= 1 else { throw WatermarkError.invalidBody("field \"ttl_seconds\" must be at least 1") }
            return try await store.acquireLease(for: sourceID, owner: owner, ttl: .seconds(seconds))
        }
    }

    public func releaseLease(sourceID: SourceID, token: Int64) async throws {
        try await call { try await store.releaseLease(for: sourceID, token: token) }
    }

    public func healthCheck() async -> Bool {
        guard available else { return false }
        await store.checkHealth()
        return true
    }

    // MARK: -

    /// The service's default for `GET .../history` without `limit`.
    static let defaultHistoryLimit = 50

    /// Runs one call with the service's error mapping.
    private func call<T: Sendable>(_ body: () async throws -> T) async throws -> T {
        guard available else { throw StorageClientError.unavailable(underlying: SimulatedOutage()) }
        do {
            return try await body()
        } catch let error as WatermarkError {
            throw StorageClientError(error)
        }
    }

    private static func check(_ name: String, _ value: Int, in range: ClosedRange<Int>) throws {
        guard range.contains(value) else {
            throw WatermarkError.invalidParameter(
                name, "'\(value)' is not a whole number from \(range.lowerBound) to \(range.upperBound)"
            )
        }
    }
}

/// The error of an `InMemoryStorageClient` switched off with `setAvailable(false)`.
public struct SimulatedOutage: Error, Sendable, CustomStringConvertible {
    public init() {}
    public var description: String { "simulated storage outage" }
}
