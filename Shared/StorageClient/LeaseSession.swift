import Logging
import WatermarkCore

/// Why `WatermarkManager.withLease` did not run its body.
public enum LeaseRefusal: Error, Sendable, CustomStringConvertible {
    /// Another owner holds the source's lease (the storage's message says who and until when).
    case held(String)
    /// The storage cannot be asked and the caller requires the lease.
    case storageUnreachable(any Error)
    /// The storage refused the lease for another reason (a bad owner, the token, ...).
    case refused(StorageClientError)

    public var description: String {
        switch self {
        case .held(let message): "another collector holds the lease: \(message)"
        case .storageUnreachable(let error): "storage unreachable, not running without the lease: \(error)"
        case .refused(let error): "cannot take the source's lease: \(error)"
        }
    }
}

/// The run's lease ran out: the storage could not be asked for a renewal within its TTL, or a renewal answered a
/// grant that did not follow the run's own (the lease had lapsed, and another collector may have held it
/// meanwhile). Only with `requireLease`: a run that may go on without a lease keeps going, fenced with the token
/// it holds.
public struct LeaseLost: Error, Sendable, CustomStringConvertible {
    public let description: String
}

/// A run's hold on one source, from `WatermarkManager.withLease`: the lease (or none in degraded mode), renewed
/// as it runs, and the watermark calls, each fenced with the lease's token. The session is the one thing a run
/// needs to read and move its mark.
public struct LeaseSession: Sendable {
    public let sourceID: SourceID
    /// The lease held; `nil` when the storage could not be asked and the caller allowed running without one.
    public private(set) var lease: Lease?
    /// What replaying the updates an earlier run queued did, right after the lease was taken (`nil`: none queued).
    public let replay: ReplaySummary?
    /// Why there is no lease (the storage could not be asked), for the run's log.
    public let unreachable: String?
    let manager: WatermarkManager
    let owner: String
    let ttl: Duration
    /// How long after taking or renewing the lease the next page boundary renews it.
    let renewEvery: Duration
    /// Whether the run must stop once its lease cannot be vouched for (`REQUIRE_LEASE`).
    let requireLease: Bool
    /// When the lease was last asked for and granted: it runs out `ttl` after, at the latest.
    private var renewedAt: ContinuousClock.Instant
    /// The storage's clock when it granted the lease the session started with (its `expires_at` less the TTL asked
    /// for), and when that answer arrived here: what a collector whose own clock runs ahead of the storage's reads the
    /// storage's clock from. `nil` without a lease.
    public let grant: (storageTime: Timestamp, answeredAt: ContinuousClock.Instant)?
    /// After a renewal the storage could not answer, none is asked for before this, half a renewal period later (the
    /// cadence at which a run waiting for a page wakes up to renew): asked again at every call, each failing one took
    /// its retries and timeouts (seconds to a minute while the storage's host drops packets) at every page and
    /// every wake-up of the run. Half a period, not a whole one: a lease renewed every third of its TTL still gets
    /// three more tries before it runs out, one renewed every half of it two.
    private var nextAttempt: ContinuousClock.Instant?
    /// The clock the session's times are read on (a test's own, to step it).
    var now: @Sendable () -> ContinuousClock.Instant = { ContinuousClock.now }

    init(
        sourceID: SourceID, lease: Lease?, replay: ReplaySummary?, unreachable: String?, manager: WatermarkManager,
        owner: String, ttl: Duration, renewEvery: Duration, requireLease: Bool, askedAt: ContinuousClock.Instant,
        answeredAt: ContinuousClock.Instant? = nil
    ) {
        self.sourceID = sourceID
        self.lease = lease
        self.replay = replay
        self.unreachable = unreachable
        self.manager = manager
        self.owner = owner
        self.ttl = ttl
        self.renewEvery = renewEvery
        self.requireLease = requireLease
        // From when the lease was asked for, not from now: replaying what an earlier run queued came in between and
        // may have taken longer than the lease lasts.
        self.renewedAt = askedAt
        if let lease, let answeredAt {
            self.grant = (lease.expiresAt.adding(.zero - ttl), answeredAt)
        } else {
            self.grant = nil
        }
    }

    /// Whether the run goes on without a lease (single-replica degraded mode).
    public var withoutLease: Bool { lease == nil }

    /// Renews the lease once `renewEvery` has passed since it was taken or last renewed. While the storage is away the
    /// lease held is kept (the fenced updates are refused if it was lost meanwhile), for its TTL at most with
    /// `requireLease`.
    ///
    /// - Throws: `StorageClientError` when the storage refuses the renewal (another owner took over); `LeaseLost`
    ///   with `requireLease` when the lease ran out while the storage was away, or lapsed and another grant came
    ///   between.
    public mutating func renewIfDue() async throws {
        guard let held = lease, now() - renewedAt > renewEvery else { return }
        let asked = now()
        // Asked again before the pause ends only once the lease may have run out, for `LeaseLost` or a lapsed lease
        // that comes back.
        if let next = nextAttempt, asked < next, !(requireLease && asked - renewedAt >= ttl) { return }
        let renewed: Lease
        do {
            renewed = try await manager.storage.acquireLease(sourceID: sourceID, owner: owner, ttl: ttl)
        } catch let error as StorageClientError where error.isTransient {
            nextAttempt = asked + renewEvery / 2
            guard requireLease, now() - renewedAt >= ttl else { return }
            throw LeaseLost(
                description:
                    "the lease on \(sourceID) ran out (\(ttl.components.seconds) s) while the storage could not "
                    + "renew it: \(error)")
        }
        // The same owner renewing a live lease keeps its token, and tokens grow by one a grant: the next token means
        // it lapsed and came back to this run with no other collector in between; a later one, that another may have
        // run the source meanwhile. The lease is the renewed one either way, so that the run's failure is recorded
        // and the lease released under the token the storage holds.
        lease = renewed
        renewedAt = asked
        nextAttempt = nil
        if renewed.fencingToken == held.fencingToken + 1 {
            // The run's updates still queued under the lapsed lease are its own work under this one: carried on
            // now, not at the run's next update, which a run stopped before it never makes (the next run's grant
            // would then be two tokens on, and they would be dead-lettered as maybe overtaken by another collector).
            await manager.carryQueued(sourceID, to: renewed.fencingToken)
        }
        if requireLease, renewed.fencingToken > held.fencingToken + 1 {
            throw LeaseLost(
                description: "the lease on \(sourceID) lapsed and was granted to others meanwhile (token "
                    + "\(held.fencingToken) -> \(renewed.fencingToken)): another collector may have run the source")
        }
    }

    /// The source's watermark (the last known one while the storage is away).
    public func getWatermark() async throws -> Watermark? {
        try await manager.getWatermark(sourceID: sourceID)
    }

    /// Moves the mark, fenced with the lease's token; queued when the storage is away.
    @discardableResult
    public func commit(_ timestamp: Timestamp, recordsCollected: Int64) async throws -> WatermarkUpdateResult {
        try await manager.updateWatermark(
            sourceID: sourceID, timestamp: timestamp, status: .success, recordsCollected: recordsCollected,
            options: UpdateOptions(leaseToken: lease?.fencingToken))
    }

    /// Records a failed run (the mark stays), fenced like `commit`.
    @discardableResult
    public func recordFailure(_ message: String, recordsCollected: Int64) async throws -> WatermarkUpdateResult {
        try await manager.updateWatermark(
            sourceID: sourceID, timestamp: nil, status: .failed, errorMessage: message,
            recordsCollected: recordsCollected, options: UpdateOptions(leaseToken: lease?.fencingToken))
    }
}

extension WatermarkManager {
    /// Runs `body` holding the source's lease: takes it (one owner per source across replicas), replays what an
    /// earlier run of the source queued under it, hands `body` a session whose watermark calls carry its fencing
    /// token, and releases it when `body` returns or throws (an unreleased lease expires by itself).
    ///
    /// When the storage cannot be asked, `requireLease: false` runs `body` without a lease (a single replica
    /// collecting through an outage) and `true` refuses.
    ///
    /// - Throws: `LeaseRefusal` when `body` did not run; else whatever `body` throws.
    /// `renewEvery` (default half the TTL) is how long after taking or renewing the lease the run's next page
    /// boundary renews it.
    public nonisolated func withLease<T: Sendable>(
        _ sourceID: SourceID, owner: String, ttl: Duration, renewEvery: Duration? = nil, requireLease: Bool,
        _ body: (inout LeaseSession) async throws -> T
    ) async throws -> T {
        var lease: Lease?
        var unreachable: String?
        let askedAt = ContinuousClock.now
        var answeredAt: ContinuousClock.Instant?
        do {
            lease = try await storage.acquireLease(sourceID: sourceID, owner: owner, ttl: ttl)
            answeredAt = ContinuousClock.now
        } catch let error as StorageClientError where !error.isTransient {
            if case .conflict(let code, let message) = error, code == "lease_held" { throw LeaseRefusal.held(message) }
            throw LeaseRefusal.refused(error)
        } catch {
            if requireLease { throw LeaseRefusal.storageUnreachable(error) }
            unreachable = "\(error)"
        }
        var replay: ReplaySummary?
        if await pendingCount(sourceID: sourceID) > 0 {
            replay = await flush(sourceID: sourceID, leaseToken: lease?.fencingToken)
        }
        var session = LeaseSession(
            sourceID: sourceID, lease: lease, replay: replay, unreachable: unreachable, manager: self, owner: owner,
            ttl: ttl, renewEvery: renewEvery ?? ttl / 2, requireLease: requireLease, askedAt: askedAt,
            answeredAt: answeredAt)
        do {
            let result = try await body(&session)
            await release(session.lease)
            return result
        } catch {
            await release(session.lease)
            throw error
        }
    }

    /// Releases `lease` if there is one; a failure only means it expires by itself.
    private nonisolated func release(_ lease: Lease?) async {
        guard let lease else { return }
        do {
            try await storage.releaseLease(sourceID: lease.sourceID, token: lease.fencingToken)
        } catch {
            logger.warning(
                "cannot release the lease; it expires by itself",
                metadata: ["source_id": "\(lease.sourceID)", "error": "\(error)"])
        }
    }
}
