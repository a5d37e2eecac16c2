/// What the rules read about one source, loaded by a store inside the transaction that will persist the plan:
/// the rules themselves read nothing and change nothing, so a store on any database (or in memory, or a
/// client's local projection) applies exactly the same rules.
public struct WatermarkSnapshot: Sendable, Equatable {
    public var watermark: Watermark?
    /// The last lease granted on the source, live or not; `nil` if none ever was.
    public var lease: Lease?
    /// The highest version ever recorded for the source (it outlives a delete; the watermark's own when there
    /// is one), 0 if none.
    public var latestVersion: Int64
    /// The first answer stored for the write's `Idempotency-Key`, if it has one and it was seen.
    public var idempotencyRecord: IdempotencyRecord?

    public init(
        watermark: Watermark? = nil, lease: Lease? = nil, latestVersion: Int64? = nil,
        idempotencyRecord: IdempotencyRecord? = nil
    ) {
        self.watermark = watermark
        self.lease = lease
        self.latestVersion = latestVersion ?? watermark?.version ?? 0
        self.idempotencyRecord = idempotencyRecord
    }
}

/// What a store persists for an accepted write, and the answer to give once it has.
public struct WritePlan: Sendable, Equatable {
    /// The rows to write; `nil` for the replay of a stored answer, which changes nothing.
    public struct Changes: Sendable, Equatable {
        /// Saved in place of the source's watermark.
        public var watermark: Watermark
        /// Appended to the history, of which only the newest `keepRuns` runs stay.
        public var run: WatermarkRun
        public var keepRuns: Int
        /// Stored for the write's key; the source's records recorded before `idempotencyExpiredBefore` go.
        public var idempotencyRecord: IdempotencyRecord?
        public var idempotencyExpiredBefore: Timestamp
    }

    public var outcome: WriteOutcome
    public var changes: Changes?
}

/// A reset to persist: the source's watermark goes; its runs, highest version, lease and idempotency records stay,
/// and `run` (status `reset`, the next version) is appended to the history like an update's. A keyed update retried
/// after the reset (a collector's queue replayed, its first answer lost) is answered its first answer and changes
/// nothing: deleted with the reset, its key let it apply again, silently undoing the reset.
public struct DeletePlan: Sendable, Equatable {
    public var sourceID: SourceID
    public var run: WatermarkRun
    public var keepRuns: Int

    public init(sourceID: SourceID, run: WatermarkRun, keepRuns: Int) {
        self.sourceID = sourceID
        self.run = run
        self.keepRuns = keepRuns
    }
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

    /// Accepts or refuses one update. A refusal throws; nothing is persisted unless the store persists the plan.
    public static func apply(
        _ write: WatermarkWrite, to snapshot: WatermarkSnapshot, now: Timestamp, policy: WatermarkPolicy
    ) throws -> WritePlan {
        let id = write.sourceID
        let update = write.update
        // The service validated the body as it decoded it; a store's own caller gets the same refusals.
        try update.validate()
        // A record older than the retention is gone, whether or not a later keyed write has deleted it yet.
        if write.idempotencyKey != nil, let record = snapshot.idempotencyRecord,
            record.recordedAt >= now.adding(.zero - policy.idempotencyRetention)
        {
            guard sameText(record.fingerprint, write.fingerprint) else { throw WatermarkError.idempotencyKeyReused }
            return WritePlan(
                outcome: WriteOutcome(watermark: record.watermark, created: record.created, replayed: true),
                changes: nil)
        }
        if update.status == .success {
            guard let timestamp = update.timestamp else { throw WatermarkError.missingTimestamp }
            if timestamp > now.adding(policy.futureTolerance) {
                throw WatermarkError.timestampInFuture(timestamp, tolerance: policy.futureTolerance)
            }
        }
        try checkFencing(id, token: write.leaseToken, lease: snapshot.lease, now: now)
        let existing = snapshot.watermark
        try check(write.precondition, existing: existing)
        if update.status == .success, let timestamp = update.timestamp, let stored = existing?.lastSuccessfulTimestamp,
            timestamp < stored, !write.force
        {
            throw WatermarkError.watermarkRegression(stored: stored, requested: timestamp)
        }

        let version = (existing?.version ?? snapshot.latestVersion) + 1
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
        let run = WatermarkRun(
            version: version, recordedAt: now, status: HistoryStatus(update.status), timestamp: update.timestamp,
            lastSuccessfulTimestamp: watermark.lastSuccessfulTimestamp, recordsCollected: watermark.recordsCollected,
            errorMessage: update.errorMessage,
            actor: write.attribution.actor(leaseToken: write.leaseToken, lease: snapshot.lease),
            reason: write.attribution.reason
        )
        let outcome = WriteOutcome(watermark: watermark, created: existing == nil)
        let record = write.idempotencyKey.map { key in
            IdempotencyRecord(
                key: key, fingerprint: write.fingerprint, watermark: watermark, created: outcome.created,
                recordedAt: now)
        }
        return WritePlan(
            outcome: outcome,
            changes: WritePlan.Changes(
                watermark: watermark, run: run, keepRuns: max(1, policy.historyRetention), idempotencyRecord: record,
                idempotencyExpiredBefore: now.adding(.zero - policy.idempotencyRetention)))
    }

    /// Resets a source: its next run starts from the default lookback. Its runs, its highest version and the
    /// lease counter stay, and the reset itself becomes the newest run (status `reset`, with who and why), so
    /// the history tells what happened.
    public static func delete(
        _ id: SourceID, precondition: WritePrecondition?, leaseToken: Int64?, attribution: Attribution = Attribution(),
        to snapshot: WatermarkSnapshot, now: Timestamp, policy: WatermarkPolicy = WatermarkPolicy()
    ) throws -> DeletePlan {
        // A request that cannot mean anything is 400 whatever the source's state (it was 409 while a lease was live).
        if precondition == .absent {
            throw WatermarkError.invalidHeader("If-None-Match", "'*' has no meaning on DELETE; use If-Match")
        }
        try checkFencing(id, token: leaseToken, lease: snapshot.lease, now: now)
        try check(precondition, existing: snapshot.watermark)
        guard let existing = snapshot.watermark else { throw WatermarkError.watermarkNotFound(id) }
        let run = WatermarkRun(
            version: existing.version + 1, recordedAt: now, status: .reset, timestamp: nil,
            lastSuccessfulTimestamp: nil, recordsCollected: 0, errorMessage: nil,
            actor: attribution.actor(leaseToken: leaseToken, lease: snapshot.lease), reason: attribution.reason)
        return DeletePlan(sourceID: id, run: run, keepRuns: max(1, policy.historyRetention))
    }

    /// Grants, renews or refuses a lease. A source needs no watermark to be leased (its first run). The plan is
    /// the lease to save, which is also the answer.
    public static func acquireLease(
        _ id: SourceID, owner: String, ttl: Duration, to snapshot: WatermarkSnapshot, now: Timestamp,
        policy: WatermarkPolicy
    ) throws -> Lease {
        try validateLease(owner: owner, ttl: ttl, policy: policy)
        let expiresAt = now.adding(ttl)
        if let current = snapshot.lease, current.isLive(at: now) {
            guard sameText(current.owner, owner) else { throw WatermarkError.leaseHeld(current) }
            return Lease(sourceID: id, owner: owner, fencingToken: current.fencingToken, expiresAt: expiresAt)
        }
        return Lease(
            sourceID: id, owner: owner, fencingToken: (snapshot.lease?.fencingToken ?? 0) + 1, expiresAt: expiresAt)
    }

    /// Ends a live lease early: the plan is the ended lease to save, `nil` when there is nothing to end (releasing
    /// a lease that already expired is not an error).
    public static func releaseLease(
        _ id: SourceID, token: Int64?, to snapshot: WatermarkSnapshot, now: Timestamp
    ) throws -> Lease? {
        guard var current = snapshot.lease, current.isLive(at: now) else { return nil }
        guard let token else { throw WatermarkError.leaseRequired(id) }
        guard token == current.fencingToken else { throw WatermarkError.staleLease(id, token: token) }
        current.expiresAt = now
        return current
    }

    /// Whether two texts are the same characters as sent. Swift's `==` compares strings by canonical equivalence
    /// ("caf\u{E9}" equals "cafe\u{301}"), so two collectors whose owners differ only so would have shared one lease,
    /// and two error messages so would have replayed one key; the stores compare bytes, and so do the rules.
    static func sameText(_ a: String, _ b: String) -> Bool {
        a.utf8.elementsEqual(b.utf8)
    }

    /// Validates the body of a lease request.
    public static func validateLease(owner: String, ttl: Duration, policy: WatermarkPolicy) throws {
        guard isValidOwner(owner) else {
            throw WatermarkError.invalidBody("field \"owner\" must be 1 to \(maxOwnerLength) printable characters")
        }
        guard ttl >= .seconds(1), ttl <= policy.maxLeaseTTL else {
            throw WatermarkError.invalidBody(
                "field \"ttl_seconds\" must be from 1 to \(policy.maxLeaseTTL.components.seconds)"
            )
        }
    }

    /// Whether `owner` can hold a lease: 1 to `maxOwnerLength` printable characters. Lengths count characters as
    /// JSON Schema's maxLength does (Unicode code points), not bytes.
    public static func isValidOwner(_ owner: String) -> Bool {
        !owner.isEmpty && owner.unicodeScalars.count <= maxOwnerLength
            && owner.unicodeScalars.allSatisfy({ $0.value >= 0x20 && $0.value != 0x7F })
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
