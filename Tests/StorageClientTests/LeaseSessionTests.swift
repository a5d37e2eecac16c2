import Logging
import Synchronization
import TestSupport
import Testing
import WatermarkCore

@testable import StorageClient

/// `WatermarkManager.withLease`: one dependency for a run's lease, its fenced mark and its release.
@Suite("Lease session")
struct LeaseSessionTests {
    let id = sid("leased")
    let mark = Timestamp.at("2026-01-01T00:00:00Z")

    @Test func theBodyRunsFencedAndTheLeaseIsReleasedAfterIt() async throws {
        let storage = InMemoryStorageClient()
        try await withTemporaryDirectory { folder in
            let manager = try WatermarkManager(client: storage, stateDirectory: folder, logger: Logger(label: "t"))
            let token = try await manager.withLease(id, owner: "a", ttl: .seconds(60), requireLease: true) {
                session in
                #expect(!session.withoutLease && session.replay == nil)
                try await session.commit(mark, recordsCollected: 4)
                // Held now: another owner is refused, and an unfenced write too.
                await #expect(throws: StorageClientError.self) {
                    try await storage.acquireLease(sourceID: id, owner: "b", ttl: .seconds(60))
                }
                await #expect(throws: StorageClientError.self) {
                    try await storage.updateWatermark(sourceID: id, timestamp: mark, status: .success)
                }
                return session.lease?.fencingToken
            }
            #expect(token == 1)
            #expect(try await storage.getWatermark(sourceID: id)?.lastSuccessfulTimestamp == mark)
            // Released: another owner gets it at once.
            #expect(try await storage.acquireLease(sourceID: id, owner: "b", ttl: .seconds(60)).fencingToken == 2)
        }
    }

    /// A renewal the storage could not answer is asked for again a renewal period later, not at the next call: each
    /// failing request took its retries and timeouts at every page and wake-up of the run. (A session taken two
    /// minutes ago, renewed every minute: due now, and a minute is longer than any stall of a loaded machine.)
    @Test func aRenewalThatFailedIsAskedAgainAPeriodLater() async throws {
        let flaky = FlakyClient(InMemoryStorageClient())
        try await withTemporaryDirectory { folder in
            let manager = try WatermarkManager(client: flaky, stateDirectory: folder, logger: Logger.quiet)
            let lease = Lease(sourceID: id, owner: "a", fencingToken: 1, expiresAt: mark)
            var session = LeaseSession(
                sourceID: id, lease: lease, replay: nil, unreachable: nil, manager: manager, owner: "a",
                ttl: .seconds(600), renewEvery: .seconds(60), requireLease: false,
                askedAt: ContinuousClock.now - .seconds(120))
            await flaky.failLeases(true)
            try await session.renewIfDue()
            #expect(await flaky.leaseRequests == 1)
            for _ in 0..<5 { try await session.renewIfDue() }
            #expect(await flaky.leaseRequests == 1, "asked again within the period")
            #expect(session.lease == lease)
        }
    }

    /// ... and is asked for again half a period after the failed one (not a whole one: a lease renewed every third of
    /// its TTL got two tries before it ran out), on a clock the test steps.
    @Test func aRenewalThatFailedIsAskedAgainHalfAPeriodLater() async throws {
        final class Clock: Sendable {
            let start = ContinuousClock.now
            let offset = Mutex(Duration.zero)
            func advance(_ by: Duration) { offset.withLock { $0 += by } }
            func now() -> ContinuousClock.Instant { start + offset.withLock { $0 } }
        }
        let flaky = FlakyClient(InMemoryStorageClient())
        let clock = Clock()
        try await withTemporaryDirectory { folder in
            let manager = try WatermarkManager(client: flaky, stateDirectory: folder, logger: Logger.quiet)
            var session = LeaseSession(
                sourceID: id, lease: Lease(sourceID: id, owner: "a", fencingToken: 1, expiresAt: mark), replay: nil,
                unreachable: nil, manager: manager, owner: "a", ttl: .seconds(60), renewEvery: .seconds(20),
                requireLease: false, askedAt: clock.now())
            session.now = { clock.now() }
            await flaky.failLeases(true)
            clock.advance(.seconds(21))
            try await session.renewIfDue()
            #expect(await flaky.leaseRequests == 1)
            clock.advance(.seconds(9))
            try await session.renewIfDue()
            #expect(await flaky.leaseRequests == 1, "asked again before half a period")
            clock.advance(.seconds(2))
            try await session.renewIfDue()
            #expect(await flaky.leaseRequests == 2, "not asked again after half a period")
        }
    }

    /// A lease that lapsed and came back to the run at the next token carries the run's updates queued under the old
    /// one at once: a run stopped before its next update left them under the old token, the next run's grant came
    /// two tokens on, and they were dead-lettered as maybe overtaken by another collector when none came between.
    @Test func updatesQueuedBeforeALapseAreCarriedOnWhenTheLeaseComesBack() async throws {
        let clock = ManualClock()
        let storage = InMemoryStorageClient(policy: WatermarkPolicy(), clock: { clock.now() })
        try await withTemporaryDirectory { folder in
            let manager = try WatermarkManager(client: storage, stateDirectory: folder, logger: Logger.quiet)
            let first = try await storage.acquireLease(sourceID: id, owner: "a", ttl: .seconds(1))
            var session = LeaseSession(
                sourceID: id, lease: first, replay: nil, unreachable: nil, manager: manager, owner: "a",
                ttl: .seconds(1), renewEvery: .zero, requireLease: false, askedAt: ContinuousClock.now - .seconds(5))
            await storage.setAvailable(false)
            #expect(try await session.commit(mark, recordsCollected: 3).isQueued)
            await storage.setAvailable(true)
            clock.advance(.seconds(2))  // lapsed; the same owner gets the next token
            try await session.renewIfDue()
            #expect(session.lease?.fencingToken == 2)
            #expect(await manager.pendingUpdates().map(\.options.leaseToken) == [2])
            // The run stops here; the next one's grant follows it.
            clock.advance(.seconds(2))
            let next = try await storage.acquireLease(sourceID: id, owner: "a", ttl: .seconds(60))
            #expect(
                await manager.flush(sourceID: id, leaseToken: next.fencingToken)
                    == ReplaySummary(applied: 1, dropped: 0, remaining: 0))
            #expect(await manager.deadLetters().isEmpty)
            #expect(try await storage.getWatermark(sourceID: id)?.lastSuccessfulTimestamp == mark)
        }
    }

    @Test func aThrowingBodyStillReleasesAndAHeldLeaseRefusesToRun() async throws {
        let storage = InMemoryStorageClient()
        try await withTemporaryDirectory { folder in
            let manager = try WatermarkManager(client: storage, stateDirectory: folder, logger: Logger(label: "t"))
            struct Boom: Error {}
            await #expect(throws: Boom.self) {
                try await manager.withLease(id, owner: "a", ttl: .seconds(60), requireLease: true) { _ in throw Boom() }
            }
            _ = try await storage.acquireLease(sourceID: id, owner: "b", ttl: .seconds(60))
            var ran = false
            do {
                try await manager.withLease(id, owner: "a", ttl: .seconds(60), requireLease: false) { _ in ran = true }
                Issue.record("ran while another owner held the lease")
            } catch LeaseRefusal.held(let message) {
                #expect(message.contains("'b'"), "\(message)")
            }
            #expect(!ran)
        }
    }
}
