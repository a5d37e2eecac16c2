import Foundation
import Logging
import Prometheus
import ServiceLifecycle
import ServiceSupport
import StorageClient
import Synchronization
import TestSupport
import Testing
import WatermarkCore

@testable import CollectionService

/// A collector that counts its calls and can hold a run open until released.
actor CallCounter {
    var calls: [SourceID] = []
    var running = 0
    var maxRunning = 0
    func begin(_ id: SourceID) { calls.append(id); running += 1; maxRunning = max(maxRunning, running) }
    func end() { running -= 1 }
    func count(_ id: SourceID) -> Int { calls.count { $0 == id } }
}

/// Counts calls from any thread.
final class Counter: Sendable {
    private let count = Mutex(0)
    func add() { count.withLock { $0 += 1 } }
    var value: Int { count.withLock { $0 } }
}

struct SlowCollector: Collector {
    let id: SourceID
    let counter: CallCounter
    var delay: Duration = .milliseconds(300)

    func fetchPage(since: Timestamp, cursor: String?) async throws(CollectorError) -> CollectorPage {
        await counter.begin(id)
        try? await Task.sleep(for: delay)
        await counter.end()
        return CollectorPage(records: [])
    }
}

@Suite("Scheduler", .timeLimit(.minutes(1)))
struct SchedulerTests {
    func engine(
        dir: String, sources: [SourceConfiguration], counter: CallCounter, delay: Duration,
        delays: [SourceID: Duration] = [:]
    ) throws -> CollectionEngine {
        let storage = InMemoryStorageClient()
        let manager = try WatermarkManager(client: storage, stateDirectory: dir + "/.state", logger: Logger.quiet)
        let board = SourceBoard(sources: sources)
        let runner = CollectionRunner(
            manager: manager, sink: NDJSONFileSink(dataDirectory: dir), owner: "t", logger: Logger.quiet,
            isStopping: { board.isStopping() }
        )
        return CollectionEngine(
            board: board, runner: runner, manager: manager,
            metrics: CollectionMetrics(registry: PrometheusCollectorRegistry()),
            makeCollector: { SlowCollector(id: $0.id, counter: counter, delay: delays[$0.id] ?? delay) },
            logger: Logger.quiet,
            startedAt: Timestamp.now()
        )
    }

    /// The deadline is a liveness bound, not a speed claim: in the full parallel run on 2 cores the first
    /// seconds are saturated by CPU-bound suites (a test with no waits at all took 13 to 15 s to finish there,
    /// 0.05 s alone), so a 10 s bound failed while the scheduler was merely not given a thread.
    func waitFor(_ what: String, timeout: Duration = .seconds(30), _ condition: () async -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while !(await condition()) {
            guard ContinuousClock.now < deadline else { throw CancellationError() }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// The next run, and a retry sooner than it (a lease held elsewhere, the storage away), come a tenth later at most
    /// at random: replicas skipped together do not come back in lockstep.
    @Test func delaysGetUpToATenthMoreAtRandom() {
        #expect(CollectionScheduler.jittered(.seconds(15), fraction: 0.1, random: 0) == .seconds(15))
        #expect(CollectionScheduler.jittered(.seconds(15), fraction: 0.1, random: 1) == .milliseconds(16_500))
        #expect(CollectionScheduler.jittered(.seconds(300), fraction: 0.1, random: 0.5) == .seconds(315))
    }

    @Test func runsOnIntervalWithinTheConcurrencyLimitAndStopsOnGracefulShutdown() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir) }
        let sources = try ["a", "b", "c"].map { name in
            SourceConfiguration(
                id: try SourceID(name), kind: .directory(DirectorySettings(path: dir)), interval: .seconds(1))
        }
        let counter = CallCounter()
        let engine = try engine(dir: dir, sources: sources, counter: counter, delay: .milliseconds(200))
        let scheduler = CollectionScheduler(engine: engine, configuration: .init(maxConcurrentRuns: 2))
        let group = ServiceGroup(services: [scheduler], logger: Logger.quiet)
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            // Every source twice: the interval (1 s + jitter) brings each back.
            try await waitFor("two runs of every source") {
                for source in sources where await counter.count(source.id) < 2 { return false }
                return true
            }
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
        #expect(await counter.maxRunning <= 2)
        #expect(await engine.board.runningCount == 0)
        let entry = try #require(await engine.board.entry(sources[0].id))
        // The interval may have started a third run just before the shutdown, which then abandons it (a
        // correct outcome, seen on a loaded CI machine).
        let outcome = try #require(entry.lastRun?.outcome)
        #expect([.success, .abandoned].contains(outcome) && entry.nextRunAt != nil, "\(outcome)")
    }

    @Test func aTriggerWhileRunningIsRefusedAndOneWhileWaitingIsCoalesced() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir) }
        let source = SourceConfiguration(
            id: try SourceID("a"), kind: .directory(DirectorySettings(path: dir)), interval: .seconds(3600))
        let counter = CallCounter()
        let engine = try engine(dir: dir, sources: [source], counter: counter, delay: .milliseconds(400))
        let scheduler = CollectionScheduler(engine: engine, configuration: .init(maxConcurrentRuns: 1))
        let group = ServiceGroup(services: [scheduler], logger: Logger.quiet)
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            try await waitFor("the first run") { await counter.running == 1 }
            #expect(await engine.board.trigger(source.id) == .alreadyRunning)
            try await waitFor("the first run to end") { await engine.board.entry(source.id)?.lastRun != nil }
            #expect(await engine.board.trigger(source.id) == .accepted)
            #expect(await engine.board.trigger(source.id) == .accepted)  // coalesced with the first
            try await waitFor("the triggered run") { await counter.count(source.id) == 2 }
            // Once that run has ended, nothing is left queued: a second run for the second trigger would show as
            // `triggered` (waiting for the slot) or as a third call.
            try await waitFor("the triggered run to end") {
                guard let entry = await engine.board.entry(source.id), !entry.running else { return false }
                return await counter.running == 0
            }
            #expect(await engine.board.entry(source.id)?.triggered == false)
            #expect(await counter.count(source.id) == 2)
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
    }

    /// One slot, taken by a long run while another source is overdue: the scheduler waits for the run to end
    /// (it reads the clock a few times a second at most), where it looped on the overdue source's past due time,
    /// taking a core from the run.
    @Test func anOverdueSourceWithEverySlotTakenDoesNotSpinTheScheduler() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir) }
        let sources = try ["a", "b"].map { name in
            SourceConfiguration(
                id: try SourceID(name), kind: .directory(DirectorySettings(path: dir)), interval: .milliseconds(100))
        }
        let counter = CallCounter()
        let clockReads = Counter()
        var engine = try engine(
            dir: dir, sources: sources, counter: counter, delay: .milliseconds(1),
            delays: [sources[0].id: .milliseconds(1500)])
        engine.clock = {
            clockReads.add()
            return Timestamp.now()
        }
        let scheduler = CollectionScheduler(engine: engine, configuration: .init(maxConcurrentRuns: 1))
        let group = ServiceGroup(services: [scheduler], logger: Logger.quiet)
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            // a runs (1.5 s), then b (never run: first), then a again while b falls due 100 ms later.
            try await waitFor("a second run of a") { await counter.count(sources[0].id) == 2 }
            let before = clockReads.value
            try await waitFor("the second run of a to end") { await counter.running == 0 }
            let during = clockReads.value - before
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
            #expect(during < 100, "\(during) clock reads while every slot was taken")
        }
    }

    /// With the slots busy, the source due longest is claimed first, whatever its place in the configuration.
    @Test func theSourceDueLongestIsClaimedFirst() async throws {
        let sources = try ["a", "b", "c"].map { name in
            SourceConfiguration(id: try SourceID(name), kind: .directory(DirectorySettings(path: "/nonexistent")))
        }
        let board = SourceBoard(sources: sources)
        let now = Timestamp.now()
        #expect(await board.claimDue(now: now, limit: 3).map(\.id) == sources.map(\.id))
        for (source, due) in zip(
            sources, [now.adding(.seconds(-1)), now.adding(.seconds(-2)), now.adding(.seconds(-100))])
        {
            await board.finish(
                RunReport(sourceID: source.id, outcome: .success, startedAt: now, finishedAt: now), nextRunAt: due)
        }
        #expect(await board.claimDue(now: now, limit: 1).map(\.id) == [sources[2].id])
        #expect(await board.claimDue(now: now, limit: 1).map(\.id) == [sources[1].id])
    }

    @Test func gracefulShutdownAbandonsARunningRunAtItsNextPage() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir) }
        let source = SourceConfiguration(id: try SourceID("a"), kind: .directory(DirectorySettings(path: dir)))
        let counter = CallCounter()
        let engine = try engine(dir: dir, sources: [source], counter: counter, delay: .milliseconds(300))
        engine.board.stop()
        let report = await engine.execute(source)
        #expect(report.outcome == .abandoned)
        #expect(await counter.count(source.id) == 0)
        #expect(await engine.board.claimDue(now: Timestamp.now(), limit: 5).isEmpty)
    }
}

@Suite("Lease renewal")
struct LeaseRenewalTests {
    /// A clock that jumps 100 s on every read, so a 300 s lease passes half its TTL between pages.
    final class JumpingClock: Sendable {
        private let lock = NSLock()
        // Safe: only touched inside `lock.withLock`.
        private nonisolated(unsafe) var now = ts("2026-11-27T00:00:00Z")
        func read() -> Timestamp {
            lock.withLock {
                now = now.adding(.seconds(100)); return now
            }
        }
    }

    @Test func aLongRunRenewsItsLeaseAndKeepsItsToken() async throws {
        let f = try RunnerFixture()
        defer { removeTemporary(f.dir) }
        let clock = JumpingClock()
        var runner = f.runner
        runner.clock = { clock.read() }
        let pages = (1...5).map { [record("r\($0)", "2026-11-2\($0)T00:00:00Z")] }
        let report = await runner.run(f.source, collector: ScriptedCollector(pages: pages))
        #expect(report.outcome == .success, "\(report.errorMessage ?? "")")
        #expect(report.recordsCollected == 5)
        // Renewed by the same owner (token kept), released at the end: the next grant is token 2.
        let lease = try await f.storage.acquireLease(sourceID: f.source.id, owner: "other", ttl: .seconds(60))
        #expect(lease.fencingToken == 2)
    }

    /// A runner of a source collected into `dir` that requires its lease and renews it `renewal` after the last
    /// time, on a storage counting lease requests whose clock is `clock`; `now` is the runner's own clock.
    static func countingRunner(
        dir: String, clock: ManualClock, renewal: Duration, now: @escaping @Sendable () -> Timestamp
    ) throws -> (runner: CollectionRunner, storage: CountingLeases, source: SourceConfiguration) {
        let storage = CountingLeases(InMemoryStorageClient(policy: WatermarkPolicy(), clock: { clock.now() }))
        let manager = try WatermarkManager(client: storage, stateDirectory: dir + "/.state", logger: Logger.quiet)
        var runner = CollectionRunner(
            manager: manager, sink: NDJSONFileSink(dataDirectory: dir), owner: "replica-a", logger: Logger.quiet,
            requireLease: true, clock: now)
        runner.leaseRenewal = renewal
        let source = SourceConfiguration(id: try SourceID("feed"), kind: .directory(DirectorySettings(path: dir)))
        return (runner, storage, source)
    }

    /// A run whose lease is taken over while it waits for a page (the source slow or retrying, the lease expired)
    /// writes nothing of that page: the lease is renewed, or found lost, after the page arrives and before it is
    /// written. It was renewed only before the wait, so the page went into this replica's sink while another
    /// collected the source.
    @Test func aPageThatArrivesAfterTheLeaseWasTakenOverIsNotWritten() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir) }
        let clock = ManualClock()
        let (runner, storage, source) = try Self.countingRunner(dir: dir, clock: clock, renewal: .zero) { clock.now() }
        let takeover = TakeoverCollector(storage: storage, clock: clock, sourceID: source.id)
        let report = await runner.run(source, collector: takeover)
        #expect(report.outcome == .failed)
        let ids = NDJSONSink(dataDirectory: dir, sourceID: source.id).allEntries().map(\.id)
        #expect(!ids.contains("after-takeover"), "\(ids)")
    }
}

extension LeaseRenewalTests {
    /// A runner for `source` with a lease of one second, renewed at every page boundary.
    static func shortLeaseRunner(
        dir: String, storage: InMemoryStorageClient, requireLease: Bool
    ) throws -> (runner: CollectionRunner, source: SourceConfiguration) {
        let manager = try WatermarkManager(client: storage, stateDirectory: dir + "/.state", logger: Logger.quiet)
        var runner = CollectionRunner(
            manager: manager, sink: NDJSONFileSink(dataDirectory: dir), owner: "replica-a", logger: Logger.quiet,
            requireLease: requireLease, clock: { ts("2026-11-27T00:00:00Z") })
        runner.leaseTTL = .seconds(1)
        runner.leaseRenewal = .zero
        var source = SourceConfiguration(id: try SourceID("feed"), kind: .directory(DirectorySettings(path: dir)))
        source.timeout = .milliseconds(400)
        return (runner, source)
    }

    /// A run of `LeaseLapseCollector` on a storage whose clock stands still unless the lapse moves it (the lease
    /// never expires there by itself, however slow the machine): its report, the ids in its sink, the storage.
    static func lapsedRun(
        requireLease: Bool, _ lapse: (ManualClock) -> LeaseLapseCollector.Lapse
    ) async throws -> (report: RunReport, ids: [String], storage: InMemoryStorageClient, source: SourceID) {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir) }
        let clock = ManualClock()
        let storage = InMemoryStorageClient(policy: WatermarkPolicy(), clock: { clock.now() })
        let (runner, source) = try shortLeaseRunner(dir: dir, storage: storage, requireLease: requireLease)
        let report = await runner.run(source, collector: LeaseLapseCollector(storage: storage, lapse: lapse(clock)))
        return (report, NDJSONSink(dataDirectory: dir, sourceID: source.id).allEntries().map(\.id), storage, source.id)
    }

    /// With `REQUIRE_LEASE`, a run whose lease could not be renewed for longer than it lasts (the storage away) stops
    /// before it writes the next page: failed renewals were ignored for as long as the run went on, its lease long
    /// run out, while another replica could take the source. A run that may go on without its lease goes on.
    @Test(arguments: [true, false])
    func aLeaseThatRunsOutWhileTheStorageIsAwayStopsARunThatRequiresIt(requireLease: Bool) async throws {
        let (report, ids, _, _) = try await Self.lapsedRun(requireLease: requireLease) { _ in .outage }
        if requireLease {
            #expect(report.outcome == .failed && report.errorMessage?.contains("ran out") == true, "\(report)")
            #expect(ids == ["before"])
        } else {
            #expect(report.outcome == .success, "\(report)")
            #expect(ids == ["before", "after"])
        }
    }

    /// A renewal answered with a token granted after another's means the lease lapsed and another collector may
    /// have run the source meanwhile: with `REQUIRE_LEASE` the run stops before writing the page it waited for, and
    /// its failure is recorded and the lease released under the token it was given (with the old one both were
    /// refused, the source went on showing its last success and the lease stayed taken); it took the new token and
    /// wrote on.
    @Test(arguments: [true, false])
    func aLeaseThatWentToAnotherMeanwhileStopsARunThatRequiresIt(requireLease: Bool) async throws {
        let (report, ids, storage, source) = try await Self.lapsedRun(requireLease: requireLease) {
            .expiry($0, anotherMeanwhile: true)
        }
        if requireLease {
            #expect(
                report.outcome == .failed && report.errorMessage?.contains("granted to others") == true, "\(report)")
            #expect(ids == ["before"])
            let stored = try await storage.getWatermark(sourceID: source)
            #expect(stored?.status == .failed, "the failure is recorded under the live token")
        } else {
            #expect(report.outcome == .success, "\(report)")
            #expect(ids == ["before", "after"])
        }
        // Released either way: another owner takes the lease at once.
        _ = try await storage.acquireLease(sourceID: source, owner: "replica-c", ttl: .seconds(60))
    }

    /// A page that takes longer than the lease lasts (a source retrying for minutes) is waited for with the lease
    /// renewed: renewed only between pages, it ran out meanwhile and another replica took the source, and on a slow
    /// source two replicas could take it from each other for ever, every run failing.
    @Test func theLeaseIsRenewedWhileAPageIsAwaited() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir) }
        let (runner, storage, source) = try Self.countingRunner(
            dir: dir, clock: ManualClock(), renewal: .milliseconds(100)
        ) { ts("2026-11-27T00:00:00Z") }
        let collector = SlowPageCollector(storage: storage)
        let report = await runner.run(source, collector: collector)
        #expect(report.outcome == .success, "\(report)")
        #expect(collector.renewalsWhileWaiting.withLock { $0 } >= 3)
        #expect(NDJSONSink(dataDirectory: dir, sourceID: source.id).allEntries().map(\.id) == ["before", "after"])
    }

    /// A lease that lapsed and came back to the run itself (the next token: no grant came between) goes on.
    @Test func aLeaseThatLapsedAndCameBackToTheRunGoesOn() async throws {
        let (report, ids, _, _) = try await Self.lapsedRun(requireLease: true) { .expiry($0, anotherMeanwhile: false) }
        #expect(report.outcome == .success, "\(report)")
        #expect(ids == ["before", "after"])
    }
}

/// Serves a page, then takes its time over the second: until the storage has seen three more lease requests (the
/// run renewing while it waits), twenty seconds at most.
final class SlowPageCollector: Collector {
    let storage: CountingLeases
    let renewalsWhileWaiting = Mutex(0)

    init(storage: CountingLeases) { self.storage = storage }

    func fetchPage(since: Timestamp, cursor: String?) async throws(CollectorError) -> CollectorPage {
        guard cursor != nil else {
            return CollectorPage(records: [record("before", "2026-11-26T00:00:00Z")], next: "2")
        }
        let start = await storage.leaseRequests
        let deadline = ContinuousClock.now + .seconds(20)
        while await storage.leaseRequests < start + 3, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(10))
        }
        let renewals = await storage.leaseRequests - start
        renewalsWhileWaiting.withLock { $0 = renewals }
        return CollectorPage(records: [record("after", "2026-11-26T01:00:00Z")])
    }
}

/// Serves a page, then lets the run's lease lapse while the second is fetched: the storage goes away for longer
/// than the lease lasts (one second), or its clock moves an hour on so that the lease expires there.
final class LeaseLapseCollector: Collector {
    enum Lapse: Sendable {
        case outage
        /// The storage's clock moves an hour on; another owner takes the lease meanwhile and lets it go, or not.
        case expiry(ManualClock, anotherMeanwhile: Bool)
    }
    let storage: InMemoryStorageClient
    let lapse: Lapse

    init(storage: InMemoryStorageClient, lapse: Lapse) {
        self.storage = storage
        self.lapse = lapse
    }
    /// Set once the first page is on disk: the lease lapses only after that.
    let firstWritten = Mutex(false)

    func fetchPage(since: Timestamp, cursor: String?) async throws(CollectorError) -> CollectorPage {
        guard cursor != nil else {
            return CollectorPage(records: [record("before", "2026-11-26T00:00:00Z")], next: "2")
        }
        let deadline = ContinuousClock.now + .seconds(20)
        while !firstWritten.withLock({ $0 }), ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(5))
        }
        switch lapse {
        case .outage:
            // Every renewal from here on fails; the last that succeeded came before this instant.
            await storage.setAvailable(false)
            let away = ContinuousClock.now
            while ContinuousClock.now - away < .milliseconds(1_100) { try? await Task.sleep(for: .milliseconds(20)) }
        case .expiry(let clock, let anotherMeanwhile):
            clock.advance(.seconds(3600))
            if anotherMeanwhile {
                do {
                    let other = try await storage.acquireLease(
                        sourceID: SourceID("feed"), owner: "replica-b", ttl: .seconds(60))
                    try await storage.releaseLease(sourceID: SourceID("feed"), token: other.fencingToken)
                } catch {
                    throw .malformed("the test could not take the lease meanwhile: \(error)")
                }
            }
        }
        return CollectorPage(records: [record("after", "2026-11-26T01:00:00Z")])
    }

    func pageCommitted(_ page: CollectorPage) throws(CollectorError) -> [RejectedFile] {
        firstWritten.withLock { $0 = true }
        return []
    }
}

/// Forwards to the in-memory storage and counts the lease requests.
actor CountingLeases: StorageClient {
    let inner: InMemoryStorageClient
    private(set) var leaseRequests = 0
    /// History requests wait a minute (a storage that does not answer) unless cancelled.
    let historyHangs: Bool
    private(set) var historyRequests = 0

    init(_ inner: InMemoryStorageClient, historyHangs: Bool = false) {
        self.inner = inner
        self.historyHangs = historyHangs
    }

    func getWatermark(sourceID: SourceID) async throws -> Watermark? {
        try await inner.getWatermark(sourceID: sourceID)
    }
    func updateWatermark(
        sourceID: SourceID, timestamp: Timestamp?, status: RunStatus, errorMessage: String?,
        recordsCollected: Int64?, options: UpdateOptions
    ) async throws -> Watermark {
        try await inner.updateWatermark(
            sourceID: sourceID, timestamp: timestamp, status: status, errorMessage: errorMessage,
            recordsCollected: recordsCollected, options: options)
    }
    func deleteWatermark(
        sourceID: SourceID, precondition: WritePrecondition?, leaseToken: Int64?, reason: String?
    ) async throws {
        try await inner.deleteWatermark(
            sourceID: sourceID, precondition: precondition, leaseToken: leaseToken, reason: reason)
    }
    func listWatermarks(_ query: WatermarkQuery) async throws -> WatermarkPage { try await inner.listWatermarks(query) }
    func history(sourceID: SourceID, limit: Int?) async throws -> [WatermarkRun] {
        historyRequests += 1
        if historyHangs { try await Task.sleep(for: .seconds(60)) }
        return try await inner.history(sourceID: sourceID, limit: limit)
    }
    func lease(sourceID: SourceID) async throws -> Lease? { try await inner.lease(sourceID: sourceID) }
    func acquireLease(sourceID: SourceID, owner: String, ttl: Duration) async throws -> Lease {
        leaseRequests += 1
        return try await inner.acquireLease(sourceID: sourceID, owner: owner, ttl: ttl)
    }
    func releaseLease(sourceID: SourceID, token: Int64) async throws {
        try await inner.releaseLease(sourceID: sourceID, token: token)
    }
    func healthCheck() async -> Bool { await inner.healthCheck() }
    func shutdown() async throws {}
}

/// Two pages; the second arrives only after the run renewed its lease for the wait (three lease requests: the
/// first take and a renewal around each of the first page's writing and the wait), and meanwhile the lease
/// expires and another replica takes it.
struct TakeoverCollector: Collector {
    let storage: CountingLeases
    let clock: ManualClock
    let sourceID: SourceID

    func fetchPage(since: Timestamp, cursor: String?) async throws(CollectorError) -> CollectorPage {
        guard cursor != nil else {
            return CollectorPage(records: [record("before", "2026-11-26T00:00:00Z")], next: "2")
        }
        let deadline = ContinuousClock.now + .seconds(30)
        while await storage.leaseRequests < 3, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(5))
        }
        clock.advance(.seconds(3600))
        _ = try? await storage.acquireLease(sourceID: sourceID, owner: "replica-b", ttl: .seconds(600))
        return CollectorPage(records: [record("after-takeover", "2026-11-26T01:00:00Z")])
    }
}

@Suite("DATA_DIR lock")
struct DataDirectoryLockTests {
    /// One process per data directory: a second holder is refused, naming the first's pid, until the first lets
    /// go. (`flock` locks conflict between two descriptors of one process as between two processes.)
    @Test func aSecondHolderIsRefusedUntilTheFirstLetsGo() throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir) }
        var first: ProcessLock? = try Serve.holdDataDirectory(dir + "/data")
        #expect(FileManager.default.fileExists(atPath: dir + "/data/.state/lock"))
        let refusal = #expect(throws: ProcessLock.LockError.self) { try Serve.holdDataDirectory(dir + "/data") }
        #expect(refusal?.description.contains("in use by another collection-service (pid \(getpid()))") == true)
        withExtendedLifetime(first) {}
        first = nil
        _ = try Serve.holdDataDirectory(dir + "/data")
    }
}
