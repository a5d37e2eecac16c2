import Testing
import WatermarkCore

/// The rules as the pure function every store calls: a snapshot in, a plan out, nothing read or changed
/// behind their back. (The stores' own tests and the conformance suite cover them through each store.)
@Suite("Watermark rules: snapshot in, plan out")
struct WatermarkRulesTests {
    let id: SourceID
    let now: Timestamp
    let policy = WatermarkPolicy()

    init() throws {
        id = try SourceID("rules")
        now = try Timestamp(rfc3339: "2026-01-01T00:00:00Z")
    }

    func at(_ text: String) throws -> Timestamp { try Timestamp(rfc3339: text) }

    func success(_ text: String) throws -> WatermarkUpdate {
        WatermarkUpdate(timestamp: try at(text), status: .success, recordsCollected: 3)
    }

    @Test func aFirstWriteAfterAResetContinuesTheVersions() throws {
        let write = WatermarkWrite(sourceID: id, update: try success("2025-12-31T00:00:00Z"))
        let plan = try WatermarkRules.apply(
            write, to: WatermarkSnapshot(latestVersion: 7), now: now, policy: policy)
        let changes = try #require(plan.changes)
        #expect(plan.outcome.created && plan.outcome.watermark.version == 8)
        #expect(changes.watermark == plan.outcome.watermark && changes.run.version == 8)
        #expect(changes.run.recordedAt == now && changes.keepRuns == policy.historyRetention)
        #expect(changes.idempotencyRecord == nil)
    }

    @Test func aReplayedKeyAnswersTheStoredOutcomeAndChangesNothing() throws {
        let write = WatermarkWrite(
            sourceID: id, update: try success("2025-12-31T00:00:00Z"), idempotencyKey: "run-1")
        let first = try WatermarkRules.apply(write, to: WatermarkSnapshot(), now: now, policy: policy)
        let record = try #require(first.changes?.idempotencyRecord)
        let snapshot = WatermarkSnapshot(watermark: first.outcome.watermark, idempotencyRecord: record)
        let replay = try WatermarkRules.apply(write, to: snapshot, now: now.adding(.seconds(5)), policy: policy)
        #expect(replay.changes == nil && replay.outcome.replayed && replay.outcome.watermark == first.outcome.watermark)
        var other = write
        other.update = try success("2025-12-31T01:00:00Z")
        #expect(throws: WatermarkError.idempotencyKeyReused) {
            try WatermarkRules.apply(other, to: snapshot, now: now, policy: policy)
        }
    }

    /// Swift's `==` holds "caf\u{E9}" and "cafe\u{301}" equal (canonical equivalence); the rules compare what
    /// was sent, as the stores do.
    @Test func textsThatOnlyLookAlikeAreDifferentOwnersAndDifferentBodies() throws {
        let held = WatermarkSnapshot(
            lease: Lease(sourceID: id, owner: "caf\u{E9}", fencingToken: 5, expiresAt: now.adding(.seconds(60))))
        #expect(throws: WatermarkError.self) {
            try WatermarkRules.acquireLease(
                id, owner: "cafe\u{301}", ttl: .seconds(60), to: held, now: now, policy: policy)
        }
        let renewed = try WatermarkRules.acquireLease(
            id, owner: "caf\u{E9}", ttl: .seconds(60), to: held, now: now, policy: policy)
        #expect(renewed.fencingToken == 5)

        // U+212B and "A" + U+030A: canonically equivalent, three bytes each, so the fingerprints' length prefixes match.
        let write = WatermarkWrite(
            sourceID: id, update: .failed("\u{212B}"), idempotencyKey: "run-1")
        let first = try WatermarkRules.apply(write, to: WatermarkSnapshot(), now: now, policy: policy)
        let snapshot = WatermarkSnapshot(
            watermark: first.outcome.watermark, idempotencyRecord: try #require(first.changes?.idempotencyRecord))
        var other = write
        other.update = .failed("A\u{30A}")
        #expect(throws: WatermarkError.idempotencyKeyReused) {
            try WatermarkRules.apply(other, to: snapshot, now: now, policy: policy)
        }
    }

    /// A key's record lasts the retention (24 hours): after it the key is new again, whether or not a later keyed
    /// write has deleted the record yet.
    @Test func aKeyOlderThanTheRetentionIsANewRequest() throws {
        let write = WatermarkWrite(
            sourceID: id, update: try success("2025-12-31T00:00:00Z"), idempotencyKey: "run-1")
        let first = try WatermarkRules.apply(write, to: WatermarkSnapshot(), now: now, policy: policy)
        let snapshot = WatermarkSnapshot(
            watermark: first.outcome.watermark, idempotencyRecord: try #require(first.changes?.idempotencyRecord))
        var later = write
        later.update = try success("2025-12-31T06:00:00Z")
        let withinDay = now.adding(policy.idempotencyRetention)
        #expect(throws: WatermarkError.idempotencyKeyReused) {
            try WatermarkRules.apply(later, to: snapshot, now: withinDay, policy: policy)
        }
        let afterDay = withinDay.adding(.nanoseconds(1))
        let applied = try WatermarkRules.apply(later, to: snapshot, now: afterDay, policy: policy)
        #expect(!applied.outcome.replayed && applied.outcome.watermark.version == 2)
        #expect(applied.changes?.idempotencyRecord?.recordedAt == afterDay)
    }

    @Test func refusalsThrowInsteadOfPlanning() throws {
        let stored = try WatermarkRules.apply(
            WatermarkWrite(sourceID: id, update: try success("2025-12-31T00:00:00Z")), to: WatermarkSnapshot(),
            now: now, policy: policy
        ).outcome.watermark
        let snapshot = WatermarkSnapshot(watermark: stored)
        let older = WatermarkWrite(sourceID: id, update: try success("2025-12-01T00:00:00Z"))
        #expect(throws: WatermarkError.self) { try WatermarkRules.apply(older, to: snapshot, now: now, policy: policy) }
        let forced = WatermarkWrite(sourceID: id, update: try success("2025-12-01T00:00:00Z"), force: true)
        #expect(try WatermarkRules.apply(forced, to: snapshot, now: now, policy: policy).outcome.watermark.version == 2)
        let stale = WatermarkWrite(
            sourceID: id, update: try success("2025-12-31T00:00:00Z"), precondition: .version(9))
        #expect(throws: WatermarkError.self) { try WatermarkRules.apply(stale, to: snapshot, now: now, policy: policy) }
    }

    @Test func leasesAreGrantedRenewedFencedAndReleasedAsPlans() throws {
        let granted = try WatermarkRules.acquireLease(
            id, owner: "a", ttl: .seconds(60), to: WatermarkSnapshot(), now: now, policy: policy)
        #expect(granted.fencingToken == 1 && granted.expiresAt == now.adding(.seconds(60)))
        let held = WatermarkSnapshot(lease: granted)
        #expect(throws: WatermarkError.self) {
            try WatermarkRules.acquireLease(id, owner: "b", ttl: .seconds(60), to: held, now: now, policy: policy)
        }
        let renewed = try WatermarkRules.acquireLease(
            id, owner: "a", ttl: .seconds(60), to: held, now: now.adding(.seconds(30)), policy: policy)
        #expect(renewed.fencingToken == 1)
        let later = now.adding(.seconds(120))
        #expect(
            try WatermarkRules.acquireLease(id, owner: "b", ttl: .seconds(60), to: held, now: later, policy: policy)
                .fencingToken == 2)
        // A write during the lease needs its token.
        let unfenced = WatermarkWrite(sourceID: id, update: try success("2025-12-31T00:00:00Z"))
        #expect(throws: WatermarkError.self) { try WatermarkRules.apply(unfenced, to: held, now: now, policy: policy) }
        // Release: the ended lease to save, or nothing once it lapsed.
        let ended = try #require(try WatermarkRules.releaseLease(id, token: 1, to: held, now: now))
        #expect(ended.expiresAt == now)
        #expect(try WatermarkRules.releaseLease(id, token: 1, to: held, now: later) == nil)
    }

    @Test func aDeleteNeedsAWatermarkAndPlansItsRemovalWithAResetRun() throws {
        #expect(throws: WatermarkError.self) {
            try WatermarkRules.delete(id, precondition: nil, leaseToken: nil, to: WatermarkSnapshot(), now: now)
        }
        let stored = try WatermarkRules.apply(
            WatermarkWrite(sourceID: id, update: try success("2025-12-31T00:00:00Z")), to: WatermarkSnapshot(),
            now: now, policy: policy
        ).outcome.watermark
        let plan = try WatermarkRules.delete(
            id, precondition: .version(1), leaseToken: nil, attribution: Attribution(caller: "ops", reason: "replay"),
            to: WatermarkSnapshot(watermark: stored), now: now, policy: policy)
        let run = WatermarkRun(
            version: 2, recordedAt: now, status: .reset, timestamp: nil, lastSuccessfulTimestamp: nil,
            recordsCollected: 0, errorMessage: nil, actor: "ops", reason: "replay")
        #expect(plan == DeletePlan(sourceID: id, run: run, keepRuns: policy.historyRetention))
        // `If-None-Match: *` means nothing on a DELETE: 400, with or without a live lease.
        let leased = WatermarkSnapshot(
            watermark: stored,
            lease: Lease(sourceID: id, owner: "a", fencingToken: 1, expiresAt: now.adding(.seconds(60))))
        for snapshot in [WatermarkSnapshot(watermark: stored), leased] {
            #expect(throws: WatermarkError.invalidHeader("If-None-Match", "'*' has no meaning on DELETE; use If-Match"))
            {
                try WatermarkRules.delete(id, precondition: .absent, leaseToken: nil, to: snapshot, now: now)
            }
        }
    }

    @Test func theActorIsTheLeaseOwnerWhenTheWriteCarriesItsTokenElseTheTokenName() throws {
        let lease = Lease(sourceID: id, owner: "collector-a", fencingToken: 4, expiresAt: now.adding(.seconds(60)))
        let caller = Attribution(caller: "ci", reason: "nightly")
        let withLease = try WatermarkRules.apply(
            WatermarkWrite(
                sourceID: id, update: try success("2025-12-31T00:00:00Z"), leaseToken: 4, attribution: caller),
            to: WatermarkSnapshot(lease: lease), now: now, policy: policy)
        #expect(withLease.changes?.run.actor == "collector-a")
        #expect(withLease.changes?.run.reason == "nightly")
        // After the lease lapsed, a write without its token is the token's.
        let lapsed = try WatermarkRules.apply(
            WatermarkWrite(sourceID: id, update: try success("2025-12-31T00:00:00Z"), attribution: caller),
            to: WatermarkSnapshot(lease: lease), now: now.adding(.seconds(61)), policy: policy)
        #expect(lapsed.changes?.run.actor == "ci")
        let anonymous = try WatermarkRules.apply(
            WatermarkWrite(sourceID: id, update: try success("2025-12-31T00:00:00Z")), to: WatermarkSnapshot(),
            now: now, policy: policy)
        #expect(anonymous.changes?.run.actor == nil && anonymous.changes?.run.reason == nil)
    }
}
