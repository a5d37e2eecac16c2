/// A `WatermarkStore` in memory, for tests and the mock storage client.
///
/// Each call copies the state into a transaction, runs the shared rules on the copy and keeps the copy
/// only if they succeed: a refused request changes nothing, exactly as a rolled-back SQL transaction.
public actor MemoryWatermarkStore: WatermarkStore {
    private var state = MemoryTransaction()
    private let policy: WatermarkPolicy
    private let clock: @Sendable () -> Timestamp

    public init(policy: WatermarkPolicy = WatermarkPolicy(), clock: @escaping @Sendable () -> Timestamp = Timestamp.now)
    {
        self.policy = policy
        self.clock = clock
    }

    private func transact<T>(_ body: (inout MemoryTransaction, Timestamp) throws -> T) throws -> T {
        var tx = state
        let result = try body(&tx, clock())
        state = tx
        return result
    }

    public func watermark(for sourceID: SourceID) -> Watermark? {
        state.watermarks[sourceID]
    }

    public func write(_ write: WatermarkWrite) throws -> WriteOutcome {
        try transact { tx, now in try WatermarkRules.apply(write, now: now, policy: policy, in: &tx) }
    }

    public func delete(_ sourceID: SourceID, precondition: WritePrecondition?, leaseToken: Int64?) throws {
        try transact { tx, now in
            try WatermarkRules.delete(sourceID, precondition: precondition, leaseToken: leaseToken, now: now, in: &tx)
        }
    }

    public func list(_ query: WatermarkQuery) -> WatermarkPage {
        let cutoff = query.staleAfter.map { WatermarkRules.staleCutoff(now: clock(), staleAfter: $0) }
        let rows = state.watermarks.values
            .filter { watermark in
                (query.after.map { watermark.sourceID > $0 } ?? true)
                    && (query.status.map { watermark.status == $0 } ?? true)
                    && (cutoff.map { watermark.isStale(before: $0) } ?? true)
            }
            .sorted { $0.sourceID < $1.sourceID }
            .prefix(query.limit + 1)
        return WatermarkPage(rows: Array(rows), limit: query.limit)
    }

    /// The source's runs, newest first. A reset source (no watermark) answers 404 like one never seen; its runs are
    /// kept and show again after its next update.
    public func history(for sourceID: SourceID, limit: Int) throws -> [WatermarkRun] {
        guard state.watermarks[sourceID] != nil, let runs = state.history[sourceID], !runs.isEmpty else {
            throw WatermarkError.watermarkNotFound(sourceID)
        }
        return Array(runs.reversed().prefix(limit))
    }

    public func acquireLease(for sourceID: SourceID, owner: String, ttl: Duration) throws -> Lease {
        try transact { tx, now in
            try WatermarkRules.acquireLease(sourceID, owner: owner, ttl: ttl, now: now, policy: policy, in: &tx)
        }
    }

    public func releaseLease(for sourceID: SourceID, token: Int64?) throws {
        try transact { tx, now in try WatermarkRules.releaseLease(sourceID, token: token, now: now, in: &tx) }
    }

    public func summary() -> WatermarkSummary {
        let cutoff = WatermarkRules.staleCutoff(now: clock(), staleAfter: policy.staleAfter)
        let all = state.watermarks.values
        return WatermarkSummary(
            total: all.count, failed: all.count { $0.status == .failed },
            stale: all.count { $0.isStale(before: cutoff) }
        )
    }

    public func checkHealth() {}

    public func info() -> StoreInfo {
        StoreInfo(path: ":memory:", sizeBytes: 0, journalMode: "memory")
    }
}

/// The whole in-memory state; a value type, so a copy is a transaction.
struct MemoryTransaction: WatermarkTransaction {
    var watermarks: [SourceID: Watermark] = [:]
    var leases: [SourceID: Lease] = [:]
    /// Oldest first.
    var history: [SourceID: [WatermarkRun]] = [:]
    var idempotency: [SourceID: [String: IdempotencyRecord]] = [:]

    func watermark(_ sourceID: SourceID) -> Watermark? { watermarks[sourceID] }
    func lease(_ sourceID: SourceID) -> Lease? { leases[sourceID] }
    func latestVersion(_ sourceID: SourceID) -> Int64 { history[sourceID]?.last?.version ?? 0 }
    func idempotencyRecord(_ sourceID: SourceID, key: String) -> IdempotencyRecord? { idempotency[sourceID]?[key] }

    mutating func save(_ watermark: Watermark) { watermarks[watermark.sourceID] = watermark }
    mutating func deleteWatermark(_ sourceID: SourceID) { watermarks[sourceID] = nil }

    mutating func append(_ run: WatermarkRun, for sourceID: SourceID, keep: Int) {
        var runs = history[sourceID, default: []]
        runs.append(run)
        if runs.count > keep { runs.removeFirst(runs.count - keep) }
        history[sourceID] = runs
    }

    mutating func save(_ lease: Lease) { leases[lease.sourceID] = lease }

    mutating func save(_ record: IdempotencyRecord, for sourceID: SourceID, expiredBefore: Timestamp) {
        var records = idempotency[sourceID, default: [:]].filter { $0.value.recordedAt >= expiredBefore }
        records[record.key] = record
        idempotency[sourceID] = records
    }

    mutating func deleteIdempotencyRecords(_ sourceID: SourceID) { idempotency[sourceID] = nil }
}
