/// What a store must be able to read and change inside one transaction. The rules below are written
/// against this protocol only, so the SQLite store, the in-memory store and the mock client all apply
/// exactly the same rules; a store contributes data access and atomicity, nothing else.
public protocol WatermarkTransaction {
    func watermark(_ sourceID: SourceID) throws -> Watermark?
    /// The last lease granted on the source, live or not; `nil` if none ever was.
    func lease(_ sourceID: SourceID) throws -> Lease?
    /// The highest version ever recorded for the source (it outlives a delete), 0 if none.
    func latestVersion(_ sourceID: SourceID) throws -> Int64
    func idempotencyRecord(_ sourceID: SourceID, key: String) throws -> IdempotencyRecord?
    mutating func save(_ watermark: Watermark) throws
    mutating func deleteWatermark(_ sourceID: SourceID) throws
    /// Appends a run and keeps only the newest `keep` runs of that source.
    mutating func append(_ run: WatermarkRun, for sourceID: SourceID, keep: Int) throws
    mutating func save(_ lease: Lease) throws
    /// Stores a first answer and forgets the source's records recorded before `expiredBefore`.
    mutating func save(_ record: IdempotencyRecord, for sourceID: SourceID, expiredBefore: Timestamp) throws
    mutating func deleteIdempotencyRecords(_ sourceID: SourceID) throws
}

/// The first answer given to an idempotency key.
public struct IdempotencyRecord: Sendable, Equatable {
    public var key: String
    public var fingerprint: String
    public var watermark: Watermark
    public var created: Bool
    public var recordedAt: Timestamp

    public init(key: String, fingerprint: String, watermark: Watermark, created: Bool, recordedAt: Timestamp) {
        self.key = key
        self.fingerprint = fingerprint
        self.watermark = watermark
        self.created = created
        self.recordedAt = recordedAt
    }
}

/// The rules of a watermark, in one place: regression, versions, preconditions, leases and fencing,
/// idempotency, future timestamps and failure counting.
public enum WatermarkRules {
    public static let maxOwnerLength = 256
    public static let maxIdempotencyKeyLength = 255

    /// Accepts or refuses one update. A refusal throws before anything is changed.
    public static func apply(
        _ write: WatermarkWrite, now: Timestamp, policy: WatermarkPolicy, in tx: inout some WatermarkTransaction
    ) throws -> WriteOutcome {
        let id = write.sourceID
        let update = write.update
        if let key = write.idempotencyKey, let record = try tx.idempotencyRecord(id, key: key) {
            guard record.fingerprint == write.fingerprint else { throw WatermarkError.idempotencyKeyReused }
            return WriteOutcome(watermark: record.watermark, created: record.created, replayed: true)
        }
        if update.status == .success {
            guard let timestamp = update.timestamp else { throw WatermarkError.missingTimestamp }
            if timestamp > now.adding(policy.futureTolerance) {
                throw WatermarkError.timestampInFuture(timestamp, tolerance: policy.futureTolerance)
            }
        }
        try checkFencing(id, token: write.leaseToken, lease: tx.lease(id), now: now)
        let existing = try tx.watermark(id)
        try check(write.precondition, existing: existing)
        if update.status == .success, let timestamp = update.timestamp, let stored = existing?.lastSuccessfulTimestamp,
            timestamp < stored, !write.force
        {
            throw WatermarkError.watermarkRegression(stored: stored, requested: timestamp)
        }

        let version = try (existing?.version ?? tx.latestVersion(id)) + 1
        let success = update.status == .success
        let watermark = Watermark(
            sourceID: id,
            lastSuccessfulTimestamp: success ? update.timestamp : existing?.lastSuccessfulTimestamp,
            lastRunTimestamp: now,
            status: update.status,
            recordsCollected: update.recordsCollected ?? 0,
            errorMessage: update.errorMessage,
            version: version,
            consecutiveFailures: success ? 0 : (existing?.consecutiveFailures ?? 0) + 1,
            createdAt: existing?.createdAt ?? now
        )
        try tx.save(watermark)
        let run = WatermarkRun(
            version: version, recordedAt: now, status: update.status, timestamp: update.timestamp,
            lastSuccessfulTimestamp: watermark.lastSuccessfulTimestamp, recordsCollected: watermark.recordsCollected,
            errorMessage: update.errorMessage
        )
        try tx.append(run, for: id, keep: max(1, policy.historyRetention))
        let outcome = WriteOutcome(watermark: watermark, created: existing == nil)
        if let key = write.idempotencyKey {
            let record = IdempotencyRecord(
                key: key, fingerprint: write.fingerprint, watermark: watermark, created: outcome.created,
                recordedAt: now
            )
            try tx.save(record, for: id, expiredBefore: now.adding(.zero - policy.idempotencyRetention))
        }
        return outcome
    }

    /// Resets a source: its next run starts from the default lookback. Its runs (answered again by the history
    /// after its next update), its highest version and the lease counter stay.
    public static func delete(
        _ id: SourceID, precondition: WritePrecondition?, leaseToken: Int64?, now: Timestamp,
        in tx: inout some WatermarkTransaction
    ) throws {
        try checkFencing(id, token: leaseToken, lease: tx.lease(id), now: now)
        let existing = try tx.watermark(id)
        if precondition == .absent {
            throw WatermarkError.invalidHeader("If-None-Match", "'*' has no meaning on DELETE; use If-Match")
        }
        try check(precondition, existing: existing)
        guard existing != nil else { throw WatermarkError.watermarkNotFound(id) }
        try tx.deleteWatermark(id)
        try tx.deleteIdempotencyRecords(id)
    }

    /// Grants, renews or refuses a lease. A source needs no watermark to be leased (its first run).
    public static func acquireLease(
        _ id: SourceID, owner: String, ttl: Duration, now: Timestamp, policy: WatermarkPolicy,
        in tx: inout some WatermarkTransaction
    ) throws -> Lease {
        try validateLease(owner: owner, ttl: ttl, policy: policy)
        let expiresAt = now.adding(ttl)
        let current = try tx.lease(id)
        let lease: Lease
        if let current, current.isLive(at: now) {
            guard current.owner == owner else { throw WatermarkError.leaseHeld(current) }
            lease = Lease(sourceID: id, owner: owner, fencingToken: current.fencingToken, expiresAt: expiresAt)
        } else {
            lease = Lease(
                sourceID: id, owner: owner, fencingToken: (current?.fencingToken ?? 0) + 1, expiresAt: expiresAt)
        }
        try tx.save(lease)
        return lease
    }

    /// Ends a live lease early. Releasing a lease that already expired is not an error.
    public static func releaseLease(
        _ id: SourceID, token: Int64?, now: Timestamp, in tx: inout some WatermarkTransaction
    ) throws {
        guard var current = try tx.lease(id), current.isLive(at: now) else { return }
        guard let token else { throw WatermarkError.leaseRequired(id) }
        guard token == current.fencingToken else { throw WatermarkError.staleLease(id, token: token) }
        current.expiresAt = now
        try tx.save(current)
    }

    /// Validates the body of a lease request.
    public static func validateLease(owner: String, ttl: Duration, policy: WatermarkPolicy) throws {
        // Lengths count characters as JSON Schema's maxLength does (Unicode code points), not bytes.
        guard !owner.isEmpty, owner.unicodeScalars.count <= maxOwnerLength,
            owner.unicodeScalars.allSatisfy({ $0.value >= 0x20 && $0.value != 0x7F })
        else {
            throw WatermarkError.invalidBody("field \"owner\" must be 1 to \(maxOwnerLength) printable characters")
        }
        guard ttl >= .seconds(1), ttl <= policy.maxLeaseTTL else {
            throw WatermarkError.invalidBody(
                "field \"ttl_seconds\" must be from 1 to \(policy.maxLeaseTTL.components.seconds)"
            )
        }
    }

    /// Validates an `Idempotency-Key` header value: 1 to 255 visible ASCII characters.
    public static func validateIdempotencyKey(_ key: String) throws {
        guard (1...maxIdempotencyKeyLength).contains(key.utf8.count),
            key.utf8.allSatisfy({ (0x21...0x7E).contains($0) })
        else {
            throw WatermarkError.invalidHeader(
                "Idempotency-Key", "use 1 to \(maxIdempotencyKeyLength) visible ASCII characters, e.g. a UUID"
            )
        }
    }

    /// While a lease is live, a write needs its token. After it lapsed, a token is still checked: a holder
    /// whose lease was taken over (a newer token exists) is refused, one whose lease merely ran out is not.
    static func checkFencing(_ id: SourceID, token: Int64?, lease: Lease?, now: Timestamp) throws {
        if let lease, lease.isLive(at: now) {
            guard let token else { throw WatermarkError.leaseRequired(id) }
            guard token == lease.fencingToken else { throw WatermarkError.staleLease(id, token: token) }
        } else if let token, token != lease?.fencingToken {
            throw WatermarkError.staleLease(id, token: token)
        }
    }

    static func check(_ precondition: WritePrecondition?, existing: Watermark?) throws {
        switch precondition {
        case nil:
            return
        case .absent:
            if let existing {
                throw WatermarkError.preconditionFailed(
                    "If-None-Match: * but source '\(existing.sourceID)' already exists (version \(existing.version))"
                )
            }
        case .exists:
            if existing == nil { throw WatermarkError.preconditionFailed("If-Match: * but the source does not exist") }
        case .version(let expected):
            guard let existing else {
                throw WatermarkError.preconditionFailed("If-Match: \"\(expected)\" but the source does not exist")
            }
            if existing.version != expected {
                throw WatermarkError.preconditionFailed(
                    "If-Match: \"\(expected)\" but the stored version is \(existing.version); read it again"
                )
            }
        }
    }

    /// The instant before which a last success counts as stale.
    public static func staleCutoff(now: Timestamp, staleAfter: Duration) -> Timestamp {
        now.adding(.zero - staleAfter)
    }
}
