import WatermarkCore

/// A `WatermarkStore` in memory, for tests and the mock storage client.
///
/// Each call reads a snapshot of the source, runs the shared rules on it and persists their plan; a refused
/// request changes nothing. The actor makes each call one transaction.
public actor MemoryWatermarkStore: WatermarkStore {
    private var state = MemoryState()
    private let policy: WatermarkPolicy
    private let clock: @Sendable () -> Timestamp

    public init(policy: WatermarkPolicy = WatermarkPolicy(), clock: @escaping @Sendable () -> Timestamp = Timestamp.now)
    {
        self.policy = policy
        self.clock = clock
    }

    public func watermark(for sourceID: SourceID) -> Watermark? {
        state.watermarks[sourceID]
    }

    public func write(_ write: WatermarkWrite) throws -> WriteOutcome {
        let snapshot = state.snapshot(write.sourceID, idempotencyKey: write.idempotencyKey)
        let plan = try WatermarkRules.apply(write, to: snapshot, now: clock(), policy: policy)
        state.persist(plan)
        return plan.outcome
    }

    public func delete(
        _ sourceID: SourceID, precondition: WritePrecondition?, leaseToken: Int64?, attribution: Attribution
    ) throws {
        let snapshot = state.snapshot(sourceID, idempotencyKey: nil)
        state.persist(
            try WatermarkRules.delete(
                sourceID, precondition: precondition, leaseToken: leaseToken, attribution: attribution,
                to: snapshot, now: clock(), policy: policy))
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

    /// The source's runs, newest first; a reset source answers them too (the newest is the reset).
    public func history(for sourceID: SourceID, limit: Int) throws -> [WatermarkRun] {
        guard let runs = state.history[sourceID], !runs.isEmpty else {
            throw WatermarkError.watermarkNotFound(sourceID)
        }
        return Array(runs.reversed().prefix(limit))
    }

    public func lease(for sourceID: SourceID) -> Lease? {
        state.leases[sourceID].flatMap { $0.isLive(at: clock()) ? $0 : nil }
    }

    public func acquireLease(for sourceID: SourceID, owner: String, ttl: Duration) throws -> Lease {
        let snapshot = state.snapshot(sourceID, idempotencyKey: nil)
        let lease = try WatermarkRules.acquireLease(
            sourceID, owner: owner, ttl: ttl, to: snapshot, now: clock(), policy: policy)
        state.leases[sourceID] = lease
        return lease
    }

    public func releaseLease(for sourceID: SourceID, token: Int64?) throws {
        let snapshot = state.snapshot(sourceID, idempotencyKey: nil)
        if let ended = try WatermarkRules.releaseLease(sourceID, token: token, to: snapshot, now: clock()) {
            state.leases[sourceID] = ended
        }
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
        StoreInfo(backend: "memory", path: ":memory:", sizeBytes: 0, details: ["journal_mode": "memory"])
    }
}

/// The whole in-memory state.
struct MemoryState {
    var watermarks: [SourceID: Watermark] = [:]
    var leases: [SourceID: Lease] = [:]
    /// Oldest first.
    var history: [SourceID: [WatermarkRun]] = [:]
    var idempotency: [SourceID: [String: IdempotencyRecord]] = [:]

    func snapshot(_ sourceID: SourceID, idempotencyKey: String?) -> WatermarkSnapshot {
        WatermarkSnapshot(
            watermark: watermarks[sourceID], lease: leases[sourceID],
            latestVersion: history[sourceID]?.last?.version ?? 0,
            idempotencyRecord: idempotencyKey.flatMap { idempotency[sourceID]?[$0] })
    }

    mutating func persist(_ plan: WritePlan) {
        guard let changes = plan.changes else { return }
        let id = changes.watermark.sourceID
        watermarks[id] = changes.watermark
        append(changes.run, for: id, keep: changes.keepRuns)
        if let record = changes.idempotencyRecord {
            var records = idempotency[id, default: [:]].filter {
                $0.value.recordedAt >= changes.idempotencyExpiredBefore
            }
            records[record.key] = record
            idempotency[id] = records
        }
    }

    mutating func persist(_ plan: DeletePlan) {
        watermarks[plan.sourceID] = nil
        append(plan.run, for: plan.sourceID, keep: plan.keepRuns)
    }

    private mutating func append(_ run: WatermarkRun, for id: SourceID, keep: Int) {
        var runs = history[id, default: []]
        runs.append(run)
        if runs.count > keep { runs.removeFirst(runs.count - keep) }
        history[id] = runs
    }
}
