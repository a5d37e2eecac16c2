import Foundation
import GRDB
import Logging
import Prometheus
import StorageClient
import Synchronization
import TestSupport
import Testing
import WatermarkCore

@testable import CollectionService

// Over 300 lines for a reason: the runner's suite and the RunnerFixture that other suites of this target use.

/// A collector that serves fixed pages and can fail at a chosen page, to simulate crashes and errors.
struct ScriptedCollector: Collector {
    let pages: [[CollectedRecord]]
    var failAtPage: Int?
    var highWaterMark: Timestamp?
    /// What the failing page's answer says.
    var failure = "maintenance"

    func fetchPage(since: Timestamp, cursor: String?) async throws(CollectorError) -> CollectorPage {
        let index = cursor.flatMap(Int.init) ?? 0
        if index == failAtPage { throw .httpStatus(503, url: "http://source/feed", detail: failure) }
        let records = pages.isEmpty ? [] : pages[index].filter { $0.mark >= since }
        let next = index + 1 < pages.count ? String(index + 1) : nil
        return CollectorPage(records: records, highWaterMark: next == nil ? highWaterMark : nil, next: next)
    }
}

func record(_ id: String, _ mark: String) -> CollectedRecord {
    CollectedRecord(id: id, version: mark, mark: ts(mark), json: Data(#"{"id":"\#(id)"}"#.utf8))
}

/// A collector during whose page the watermark is moved past the page's records under the run's own lease (an
/// operator's correction, say), so that the run's final update is refused as a regression.
struct OvertakenCollector: Collector {
    let storage: InMemoryStorageClient
    let source: SourceID

    func fetchPage(since: Timestamp, cursor: String?) async throws(CollectorError) -> CollectorPage {
        do {
            let lease = try await storage.lease(sourceID: source)
            try await storage.updateWatermark(
                sourceID: source, timestamp: ts("2026-11-26T12:00:00Z"), status: .success, errorMessage: nil,
                recordsCollected: 0, options: UpdateOptions(leaseToken: lease?.fencingToken))
        } catch {
            throw .malformed("the test could not move the watermark: \(error)")
        }
        return CollectorPage(records: [record("a", "2026-11-25T00:00:00Z")], next: nil)
    }
}

/// A runner on an in-memory storage and a temporary data directory.
struct RunnerFixture {
    let dir: String
    let storage: InMemoryStorageClient
    let manager: WatermarkManager
    let runner: CollectionRunner
    let source: SourceConfiguration

    init(owner: String = "test-replica", now: Timestamp = ts("2026-11-27T00:00:00Z"), logger: Logger = Logger.quiet)
        throws
    {
        try self.init(owner: owner, clock: { now }, logger: logger)
    }

    init(
        owner: String = "test-replica", clock: @escaping @Sendable () -> Timestamp, requireLease: Bool = false,
        storage: InMemoryStorageClient = InMemoryStorageClient(), logger: Logger = Logger.quiet
    ) throws {
        dir = try makeTemporaryDirectory()
        self.storage = storage
        manager = try WatermarkManager(client: storage, stateDirectory: dir + "/.state", logger: logger)
        runner = CollectionRunner(
            manager: manager, sink: NDJSONFileSink(dataDirectory: dir), owner: owner, logger: logger,
            requireLease: requireLease, clock: clock
        )
        source = SourceConfiguration(id: try SourceID("feed"), kind: .directory(DirectorySettings(path: dir + "/in")))
    }

    var sink: NDJSONSink { NDJSONSink(dataDirectory: dir, sourceID: source.id) }

    /// The source's drop folder (created) and a directory collector on it with its ledger in the state folder.
    func inbox() throws -> (path: String, collector: DirectoryCollector) {
        let path = dir + "/in"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        let ledger = FileLedger(stateDirectory: dir + "/.state", sourceID: source.id)
        return (path, DirectoryCollector(settings: DirectorySettings(path: path), ledger: ledger))
    }
    func ids() -> [String] { sink.allEntries().map(\.id) }
}

@Suite("Collection runs")
struct RunnerTests {
    @Test func firstRunWritesEverythingAndMovesTheMarkToTheNewestRecord() async throws {
        let f = try RunnerFixture()
        defer { removeTemporary(f.dir) }
        let collector = ScriptedCollector(pages: [
            [record("a", "2026-11-25T00:00:00Z")], [record("b", "2026-11-26T00:00:00.123456789Z")],
        ])
        let report = await f.runner.run(f.source, collector: collector)
        #expect(report.outcome == .success)
        #expect(report.recordsCollected == 2)
        #expect(f.ids() == ["a", "b"])
        let stored = try await f.storage.getWatermark(sourceID: f.source.id)
        #expect(stored?.lastSuccessfulTimestamp == ts("2026-11-26T00:00:00.123456789Z"))
        #expect(stored?.recordsCollected == 2)
    }

    /// A final update the storage refuses for a reason other than the lease (a regression: the watermark was moved
    /// past the run's mark meanwhile) fails the run, and the storage records the failure: it went on showing the
    /// last success.
    @Test func aFinalUpdateRefusedForARegressionIsRecordedAsAFailedRun() async throws {
        let f = try RunnerFixture()
        defer { removeTemporary(f.dir) }
        let report = await f.runner.run(
            f.source, collector: OvertakenCollector(storage: f.storage, source: f.source.id))
        #expect(report.outcome == .failed)
        #expect(report.errorMessage?.contains("watermark update refused") == true, "\(report.errorMessage ?? "")")
        #expect(f.ids() == ["a"])
        let stored = try #require(try await f.storage.getWatermark(sourceID: f.source.id))
        #expect(stored.status == .failed && stored.consecutiveFailures == 1)
        #expect(stored.lastSuccessfulTimestamp == ts("2026-11-26T12:00:00Z"))
    }

    @Test func recordsOlderThanTheLookbackAreNotAskedFor() async throws {
        let f = try RunnerFixture()
        defer { removeTemporary(f.dir) }
        let collector = ScriptedCollector(pages: [
            [record("old", "2026-11-01T00:00:00Z"), record("new", "2026-11-25T00:00:00Z")]
        ])
        _ = await f.runner.run(f.source, collector: collector)
        #expect(f.ids() == ["new"])  // since = now - 7 days
    }

    @Test func theBoundaryRecordComingAgainIsNotWrittenTwiceAndANoNewsRunKeepsTheMark() async throws {
        let f = try RunnerFixture()
        defer { removeTemporary(f.dir) }
        let collector = ScriptedCollector(pages: [
            [record("a", "2026-11-25T00:00:00Z"), record("b", "2026-11-26T00:00:00Z")]
        ])
        _ = await f.runner.run(f.source, collector: collector)
        // The source's filter is inclusive: "b" (at the mark) comes again.
        let second = await f.runner.run(f.source, collector: collector)
        #expect(second.outcome == .success)
        #expect(second.recordsCollected == 0 && second.duplicatesDropped == 1)
        #expect(f.ids() == ["a", "b"])
        let stored = try await f.storage.getWatermark(sourceID: f.source.id)
        #expect(stored?.lastSuccessfulTimestamp == ts("2026-11-26T00:00:00Z"))
        #expect(stored?.version == 2 && stored?.status == .success && stored?.recordsCollected == 0)
    }

    @Test func aFirstRunWithNothingRecordsSuccessAtSince() async throws {
        let f = try RunnerFixture()
        defer { removeTemporary(f.dir) }
        let report = await f.runner.run(f.source, collector: ScriptedCollector(pages: []))
        #expect(report.outcome == .success && report.recordsCollected == 0)
        let stored = try await f.storage.getWatermark(sourceID: f.source.id)
        #expect(stored?.lastSuccessfulTimestamp == ts("2026-11-20T00:00:00Z"))
    }

    @Test func theSourcesHighWaterMarkMovesTheMarkEvenWithoutNewRecords() async throws {
        let f = try RunnerFixture()
        defer { removeTemporary(f.dir) }
        let collector = ScriptedCollector(pages: [[]], highWaterMark: ts("2026-11-26T12:00:00Z"))
        _ = await f.runner.run(f.source, collector: collector)
        #expect(
            try await f.storage.getWatermark(sourceID: f.source.id)?.lastSuccessfulTimestamp
                == ts("2026-11-26T12:00:00Z"))
    }

    @Test func aFailureMidRunRecordsFailedKeepsTheMarkAndTheRetryWritesNothingTwice() async throws {
        let f = try RunnerFixture()
        defer { removeTemporary(f.dir) }
        let pages = [[record("a", "2026-11-25T00:00:00Z")], [record("b", "2026-11-26T00:00:00Z")]]
        _ = await f.runner.run(f.source, collector: ScriptedCollector(pages: [[record("z", "2026-11-24T00:00:00Z")]]))
        let failed = await f.runner.run(f.source, collector: ScriptedCollector(pages: pages, failAtPage: 1))
        #expect(failed.outcome == .failed)
        #expect(failed.errorMessage == "HTTP 503 from http://source/feed: maintenance")
        let afterFailure = try #require(try await f.storage.getWatermark(sourceID: f.source.id))
        #expect(afterFailure.status == .failed && afterFailure.errorMessage == failed.errorMessage)
        #expect(afterFailure.lastSuccessfulTimestamp == ts("2026-11-24T00:00:00Z"))
        #expect(f.ids() == ["z", "a"])  // page 1 was fsynced before page 2 failed
        let retry = await f.runner.run(f.source, collector: ScriptedCollector(pages: pages))
        #expect(retry.outcome == .success && retry.recordsCollected == 1 && retry.duplicatesDropped == 1)
        #expect(f.ids() == ["z", "a", "b"])
    }

    /// A source that refuses with a `Retry-After` longer than a run waits fails the run, and the next run comes when
    /// it said (at most a day), not a whole interval later nor sooner; another failure keeps the interval.
    @Test(arguments: [(Int64(3600), Int64?(3600)), (30 * 86_400, 86_400), (0, nil)])
    func aRateLimitedRunComesBackWhenTheSourceSaid(retryAfter: Int64, expected: Int64?) async throws {
        struct Refusing: Collector {
            let seconds: Int64
            func fetchPage(since: Timestamp, cursor: String?) async throws(CollectorError) -> CollectorPage {
                throw .rateLimited(url: "http://source/feed", retryAfterSeconds: seconds)
            }
        }
        let f = try RunnerFixture()
        defer { removeTemporary(f.dir) }
        let report = await f.runner.run(f.source, collector: Refusing(seconds: retryAfter))
        #expect(report.outcome == .failed)
        #expect(report.retryAfter == expected.map { .seconds($0) })
        let failed = await f.runner.run(f.source, collector: ScriptedCollector(pages: [[]], failAtPage: 0))
        #expect(failed.outcome == .failed && failed.retryAfter == nil)
    }

    /// Before the watermark moves mid-run, the sink commits the dedup index's keys of the pages so far. The index
    /// commits lazily (a crash's lost keys are indexed again from the day files), but a day file shipped away before
    /// the next run cannot be: the records the next run's overlap sent again were then written twice.
    @Test func theSinkCommitsItsIndexBeforeEachCheckpoint() async throws {
        let f = try RunnerFixture()
        defer { removeTemporary(f.dir) }
        let index = CollectionConfiguration.stateDirectory(of: f.dir) + "/dedup/\(f.source.id).sqlite"
        let seen = Mutex<[(committedKeys: Int, watermark: Timestamp?)]>([])
        let sink = CheckpointProbe(inner: NDJSONFileSink(dataDirectory: f.dir)) {
            // What another connection sees: the committed keys only.
            var configuration = Configuration()
            configuration.readonly = true
            let keys = try? await DatabaseQueue(path: index, configuration: configuration).read { db in
                try Int.fetchOne(db, sql: "SELECT count(*) FROM record_key") ?? -1
            }
            let watermark = try? await f.storage.getWatermark(sourceID: f.source.id)?.lastSuccessfulTimestamp
            seen.withLock { $0.append((keys ?? -1, watermark)) }
        }
        let runner = CollectionRunner(
            manager: f.manager, sink: sink, owner: "test-replica", logger: .quiet, clock: { ts("2026-11-27T00:00:00Z") }
        )
        var source = f.source
        source.checkpointPages = 1
        source.checkpointInterval = .zero
        let pages: [MarkedPagesCollector.Page] = (1...4).map { hour in
            let time = ts("2026-11-26T0\(hour):00:00Z")
            return .init(records: [record("r\(hour)", time.description)], first: time, last: time)
        }
        let report = await runner.run(source, collector: MarkedPagesCollector(pages: pages))
        #expect(report.outcome == .success && report.checkpoints == 2)
        let probes = seen.withLock { $0 }
        #expect(probes.count == 2, "\(probes)")
        // Each time: the keys of every page before the checkpoint committed, the watermark not moved there yet.
        for (number, probe) in probes.enumerated() {
            #expect(probe.committedKeys >= number + 1, "\(probes)")
            #expect(probe.watermark.map { $0 < ts("2026-11-26T0\(number + 1):00:00Z") } ?? true, "\(probes)")
        }
    }

    /// A TAXII server that ignores `next` and keeps answering its first page with `more` would be asked forever
    /// (every page dropped as duplicates, no checkpoint, the run never ending): the run fails, naming why, and what it
    /// fetched stays written.
    @Test(.timeLimit(.minutes(1)))
    func aSourceAnsweringTheSamePageAgainFailsTheRunInsteadOfLoopingForever() async throws {
        let f = try RunnerFixture()
        defer { removeTemporary(f.dir) }
        let server = FakeTAXIIServer()
        await TAXII21CollectorTests.addFiveIndicators(to: server)
        await server.setQuirks(.init(ignoresNext: true))
        let report = try await withFakeServer(path: TAXII21CollectorTests.path, handler: { await server.handle($0) }) {
            port in
            try await withHTTPClient { client in
                let collector = TAXII21CollectorTests().collector(port: port, client: client)
                return await f.runner.run(f.source, collector: collector)
            }
        }
        #expect(report.outcome == .failed)
        #expect(report.errorMessage?.contains("it does not page by next") == true, "\(report.errorMessage ?? "")")
        #expect(await server.requests.count == 2)
        #expect(f.ids() == ["indicator--1", "indicator--2"])
    }

    /// Any source whose next page is its page again, same cursor and same records (an OTX `next` that names itself),
    /// fails the run rather than looping.
    @Test(.timeLimit(.minutes(1)))
    func aCursorThatNeverMovesFailsTheRun() async throws {
        struct Looping: Collector {
            func fetchPage(since: Timestamp, cursor: String?) async throws(CollectorError) -> CollectorPage {
                CollectorPage(
                    records: [record("a", "2026-11-25T00:00:00Z"), record("b", "2026-11-25T00:00:01Z")], next: "same")
            }
        }
        let f = try RunnerFixture()
        defer { removeTemporary(f.dir) }
        let report = await f.runner.run(f.source, collector: Looping())
        #expect(report.outcome == .failed)
        #expect(report.errorMessage?.contains("the same 2 records again") == true, "\(report.errorMessage ?? "")")
        #expect(f.ids() == ["a", "b"])
    }

    /// A page that keeps failing and whose retry can only go back to where the run started (a TAXII server without
    /// date headers) walks the same pages again and again, each under a new cursor: the run fails when the retried
    /// page comes a third time, where it went on for ever. (Here the source stops after 30 pages, so the test ends
    /// either way.) Pages alike that are no retries (drop files with the same records) are fine.
    @Test(.timeLimit(.minutes(1)), arguments: [true, false])
    func aRunThatKeepsStartingOverFailsInsteadOfGoingOnForever(retried: Bool) async throws {
        struct StartingOver: Collector {
            let retried: Bool
            func fetchPage(since: Timestamp, cursor: String?) async throws(CollectorError) -> CollectorPage {
                let served = Int(cursor ?? "0") ?? 0
                let index = served % 3
                let mark = "2026-11-25T00:00:0\(index)Z"
                var page = CollectorPage(
                    records: [record("p\(index)a", mark), record("p\(index)b", mark)],
                    next: served < 30 ? String(served + 1) : nil)
                // Each start over is the answer of a request asked again.
                page.retried = retried && served > 0 && index == 0
                return page
            }
        }
        let f = try RunnerFixture()
        defer { removeTemporary(f.dir) }
        let report = await f.runner.run(f.source, collector: StartingOver(retried: retried))
        if retried {
            #expect(report.outcome == .failed)
            #expect(report.errorMessage?.contains("a third time") == true, "\(report.errorMessage ?? "")")
        } else {
            #expect(report.outcome == .success, "\(report.errorMessage ?? "")")
        }
        #expect(f.ids() == ["p0a", "p0b", "p1a", "p1b", "p2a", "p2b"])
    }

    /// A source whose cursors go round in a circle of two pages (an OTX `next` chain page=2 -> page=3 -> page=2)
    /// fails the run when a page comes a third time, where it paged for ever, every page dropped as duplicates.
    @Test(.timeLimit(.minutes(1)))
    func cursorsGoingRoundInACircleFailTheRun() async throws {
        struct Circle: Collector {
            func fetchPage(since: Timestamp, cursor: String?) async throws(CollectorError) -> CollectorPage {
                let onB = cursor == "b"
                let mark = onB ? "2026-11-25T00:00:01Z" : "2026-11-25T00:00:00Z"
                return CollectorPage(
                    records: [record(onB ? "b1" : "a1", mark), record(onB ? "b2" : "a2", mark)],
                    next: onB ? "a" : "b")
            }
        }
        let f = try RunnerFixture()
        defer { removeTemporary(f.dir) }
        let report = await f.runner.run(f.source, collector: Circle())
        #expect(report.outcome == .failed)
        #expect(report.errorMessage?.contains("a third time") == true, "\(report.errorMessage ?? "")")
        #expect(f.ids() == ["a1", "a2", "b1", "b2"])
    }

    /// A run waiting for a slow page stops as soon as shutdown begins, at that page boundary: it was woken only by
    /// its lease's ticker (half a renewal period, 10 s by default; here a quarter of an hour), so a SIGTERM outlasted
    /// the grace period. (Twenty seconds without a report fail the test rather than hang it.)
    @Test func aRunWaitingForAPageStopsWhenShutdownBegins() async throws {
        struct Stuck: Collector {
            let asked: Latch
            func fetchPage(since: Timestamp, cursor: String?) async throws(CollectorError) -> CollectorPage {
                guard cursor != nil else {
                    return CollectorPage(records: [record("before", "2026-11-25T00:00:00Z")], next: "2")
                }
                asked.open()
                try? await Task.sleep(for: .seconds(3600))
                return CollectorPage(records: [record("after", "2026-11-26T00:00:00Z")])
            }
        }
        let f = try RunnerFixture()
        defer { removeTemporary(f.dir) }
        let (stopping, asked) = (Latch(), Latch())
        var runner = f.runner
        runner.leaseTTL = .seconds(3600)
        runner.leaseRenewal = .seconds(3600)
        // Asked before the first page is fetched, before each batch is taken: the third time, the first page is
        // on disk and the run is about to wait for the second (stopped earlier, it sees it before it waits).
        final class Checks: Sendable {
            let count = Mutex(0)
        }
        let checks = Checks()
        runner.isStopping = {
            checks.count.withLock { $0 += 1 }
            return stopping.isOpen
        }
        runner.untilStopping = { await stopping.wait() }
        let configured = runner
        let report = await withTaskGroup(of: RunReport?.self) { group in
            group.addTask { await configured.run(f.source, collector: Stuck(asked: asked)) }
            group.addTask {
                await asked.wait()
                let deadline = ContinuousClock.now + .seconds(10)
                while checks.count.withLock({ $0 }) < 3, ContinuousClock.now < deadline {
                    try? await Task.sleep(for: .milliseconds(1))
                }
                stopping.open()
                try? await Task.sleep(for: .seconds(20))
                return nil
            }
            defer { group.cancelAll() }
            return await group.next() ?? nil
        }
        #expect(report?.outcome == .abandoned, "\(String(describing: report))")
        #expect(f.ids() == ["before"])
        // The lease was released: another owner takes it at once.
        _ = try await f.storage.acquireLease(sourceID: f.source.id, owner: "other", ttl: .seconds(60))
    }

    /// A feed's answer quoted in the failure may hold a NUL, which no store keeps: the failure is still recorded, the
    /// NUL shown as U+FFFD.
    @Test func aFailureQuotingANulIsRecordedWithTheNulReplaced() async throws {
        let f = try RunnerFixture()
        defer { removeTemporary(f.dir) }
        let collector = ScriptedCollector(
            pages: [[record("a", "2026-11-25T00:00:00Z")]], failAtPage: 0, failure: "bad\u{0}byte")
        let failed = await f.runner.run(f.source, collector: collector)
        #expect(failed.outcome == .failed && failed.updateQueued == false)
        let stored = try #require(try await f.storage.getWatermark(sourceID: f.source.id))
        #expect(stored.status == .failed)
        #expect(stored.errorMessage == "HTTP 503 from http://source/feed: bad\u{FFFD}byte")
    }

    @Test func aCrashBeforeTheUpdateIsRepairedByDedup() async throws {
        // The process wrote both pages and died before updating the watermark: simulate by writing the sink
        // directly, then run normally.
        let f = try RunnerFixture()
        defer { removeTemporary(f.dir) }
        let pages = [[record("a", "2026-11-25T00:00:00Z")], [record("b", "2026-11-26T00:00:00Z")]]
        try f.sink.append(pages[0] + pages[1], collectedAt: ts("2026-11-26T23:00:00Z"))
        let report = await f.runner.run(f.source, collector: ScriptedCollector(pages: pages))
        #expect(report.outcome == .success && report.recordsCollected == 0 && report.duplicatesDropped == 2)
        #expect(f.ids() == ["a", "b"])
        #expect(
            try await f.storage.getWatermark(sourceID: f.source.id)?.lastSuccessfulTimestamp
                == ts("2026-11-26T00:00:00Z"))
    }

    @Test func aRecordStampedInTheFutureDoesNotPushTheMarkPastNow() async throws {
        let f = try RunnerFixture(now: Timestamp.now())
        defer { removeTemporary(f.dir) }
        let future = Timestamp.now().adding(.seconds(86_400)).description
        let collector = ScriptedCollector(pages: [[record("future", future)]])
        let first = await f.runner.run(f.source, collector: collector)
        #expect(first.outcome == .success, "\(first.errorMessage ?? "")")
        let mark = try #require(try await f.storage.getWatermark(sourceID: f.source.id)?.lastSuccessfulTimestamp)
        #expect(mark < ts(future) && mark <= Timestamp.now())
        let second = await f.runner.run(f.source, collector: collector)
        #expect(second.outcome == .success && second.recordsCollected == 0 && second.duplicatesDropped == 1)
        #expect(f.ids() == ["future"])
    }

    @Test func aLeaseHeldByAnotherReplicaSkipsTheRun() async throws {
        let f = try RunnerFixture()
        defer { removeTemporary(f.dir) }
        _ = try await f.storage.acquireLease(sourceID: f.source.id, owner: "other-replica", ttl: .seconds(300))
        let report = await f.runner.run(
            f.source, collector: ScriptedCollector(pages: [[record("a", "2026-11-25T00:00:00Z")]]))
        #expect(report.outcome == .skipped)
        // Asked again once the lease could have lapsed (its 60 s TTL), not at the next interval (300 s).
        #expect(report.retryAfter == .seconds(60))
        #expect(f.ids().isEmpty)
        #expect(try await f.storage.getWatermark(sourceID: f.source.id) == nil)
    }

    @Test func theLeaseIsReleasedAfterARunAndItsTokenFencesTheUpdate() async throws {
        let f = try RunnerFixture()
        defer { removeTemporary(f.dir) }
        let report = await f.runner.run(
            f.source, collector: ScriptedCollector(pages: [[record("a", "2026-11-25T00:00:00Z")]]))
        // The update went through while the run's lease was live, so it carried the token: a write without it
        // would have been refused with lease_required and the run would have failed.
        #expect(report.outcome == .success && !report.withoutLease)
        #expect(try await f.storage.getWatermark(sourceID: f.source.id)?.lastSuccessfulTimestamp != nil)
        // Released: another owner can take it at once, and gets the next token (the run held the first).
        let lease = try await f.storage.acquireLease(sourceID: f.source.id, owner: "other", ttl: .seconds(60))
        #expect(lease.owner == "other" && lease.fencingToken == 2)
    }

    @Test func storageDownQueuesTheUpdateRunsWithoutLeaseAndReplaysLater() async throws {
        let f = try RunnerFixture()
        defer { removeTemporary(f.dir) }
        _ = await f.runner.run(f.source, collector: ScriptedCollector(pages: [[record("a", "2026-11-25T00:00:00Z")]]))
        await f.storage.setAvailable(false)
        let collector = ScriptedCollector(pages: [
            [record("a", "2026-11-25T00:00:00Z"), record("b", "2026-11-26T00:00:00Z")]
        ])
        let offline = await f.runner.run(f.source, collector: collector)
        #expect(offline.outcome == .success && offline.updateQueued && offline.withoutLease)
        #expect(await f.manager.pendingCount() == 1)
        // Still offline: the next run continues from the queued (local) mark, nothing is written twice.
        let again = await f.runner.run(f.source, collector: collector)
        #expect(again.recordsCollected == 0)
        #expect(f.ids() == ["a", "b"])
        await f.storage.setAvailable(true)
        let summary = await f.manager.replayPending()
        #expect(summary.remaining == 0)
        #expect(
            try await f.storage.getWatermark(sourceID: f.source.id)?.lastSuccessfulTimestamp
                == ts("2026-11-26T00:00:00Z"))
    }

    @Test func shutdownAbandonsBetweenPagesWithoutMovingTheMark() async throws {
        let f = try RunnerFixture()
        defer { removeTemporary(f.dir) }
        var runner = f.runner
        runner.isStopping = { true }
        let report = await runner.run(
            f.source, collector: ScriptedCollector(pages: [[record("a", "2026-11-25T00:00:00Z")]]))
        #expect(report.outcome == .abandoned)
        #expect(try await f.storage.getWatermark(sourceID: f.source.id) == nil)
    }
}

extension NDJSONSink {
    /// Every key of `name` and where its last complete line ends, through the chunked reader.
    func keys(in name: String, chunkBytes: Int = 4 << 20) throws -> (keys: [RecordKey], end: Int) {
        var all: [RecordKey] = []
        var end = 0
        try forEachKeys(in: name, from: 0, chunkBytes: chunkBytes) { keys, chunkEnd in
            all += keys
            end = chunkEnd
        }
        return (all, end)
    }
}

/// Empty pages that say more follows, with the same `next` every time (`pagesBeforeLoop` pages first).
struct EmptyPagesCollector: Collector {
    var pagesBeforeLoop: Int
    let asked = Counter()

    func fetchPage(since: Timestamp, cursor: String?) async throws(CollectorError) -> CollectorPage {
        asked.add()
        let index = cursor.flatMap(Int.init) ?? 0
        return CollectorPage(records: [], next: String(min(index + 1, pagesBeforeLoop)))
    }
}

@Suite("Sources that do not page as they say", .timeLimit(.minutes(1)))
struct EmptyPagingTests {
    /// A source answering empty pages that say more follows at the place it was asked for: the run fails at once
    /// (it never ended). Empty pages that move on (a drop folder's empty files) are a source's right.
    @Test(arguments: [0, 150])
    func anEmptyPageThatSendsTheRunBackToItsCursorEndsIt(pagesBeforeLoop: Int) async throws {
        let f = try RunnerFixture()
        defer { removeTemporary(f.dir) }
        let collector = EmptyPagesCollector(pagesBeforeLoop: pagesBeforeLoop)
        let report = await f.runner.run(f.source, collector: collector)
        #expect(report.outcome == .failed)
        #expect(
            report.errorMessage?.contains("empty page that says more follows") == true, "\(report.errorMessage ?? "")")
        #expect(collector.asked.value == max(2, pagesBeforeLoop + 1))
    }
}

@Suite("NDJSON sink")
struct SinkTests {
    /// Whether files can be made immutable here (`chattr +i`: root with `CAP_LINUX_IMMUTABLE`, not every container).
    static let canMakeImmutable: Bool = {
        let path = NSTemporaryDirectory() + "/immutable-probe-\(UUID().uuidString)"
        guard FileManager.default.createFile(atPath: path, contents: Data()) else { return false }
        defer { try? FileManager.default.removeItem(atPath: path) }
        let made = (try? runToEnd(["chattr", "+i", path]).status) == 0
        if made { _ = try? runToEnd(["chattr", "-i", path]) }
        return made
    }()

    @Test func aTornLastLineIsCutBeforeTheNextAppendAndIgnoredWhenReading() throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir) }
        let sink = NDJSONSink(dataDirectory: dir, sourceID: try SourceID("s"))
        try sink.append([record("a", "2026-11-25T00:00:00Z")], collectedAt: ts("2026-11-27T01:00:00Z"))
        let path = dir + "/s/2026-11-27.ndjson"
        let handle = try #require(FileHandle(forWritingAtPath: path))
        handle.seekToEndOfFile()
        handle.write(Data(#"{"source_id":"s","id":"torn","mar"#.utf8))
        try handle.close()
        let read = try sink.keys(in: "2026-11-27.ndjson")
        #expect(read.keys == [RecordKey(id: "a", version: "2026-11-25T00:00:00Z")])
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        #expect(read.end == (bytes.firstIndex(of: UInt8(ascii: "\n")) ?? -2) + 1, "the end of the complete line")
        try sink.append([record("b", "2026-11-26T00:00:00Z")], collectedAt: ts("2026-11-27T02:00:00Z"))
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 2)
        #expect(sink.allEntries().map(\.id) == ["a", "b"])
        let first = try JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as? [String: Any]
        #expect(first?["source_id"] as? String == "s")
        #expect(first?["collected_at"] as? String == "2026-11-27T01:00:00Z")
        #expect((first?["record"] as? [String: Any])?["id"] as? String == "a")
    }

    /// Two records whose ids differ only in how an accent is written (one scalar, or a letter and a combining mark)
    /// are two records to the source, to the index and to PostgreSQL's keys: Swift's string equality took them for
    /// one, and the second of a page was dropped as a duplicate.
    @Test func keysThatDifferInTheirBytesAreTwoRecords() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir) }
        let composed = record("caf\u{E9}", "2026-11-25T00:00:00Z")
        let decomposed = record("cafe\u{301}", "2026-11-25T00:00:00Z")
        #expect(composed.id == decomposed.id, "equal as Swift strings")
        #expect(Set([composed.key, decomposed.key, composed.key]).count == 2)
        let writer = try await NDJSONFileSink(dataDirectory: dir).open(try SourceID("s"))
        let written = try await writer.write([composed, decomposed], collectedAt: ts("2026-11-27T01:00:00Z"))
        try await writer.finish()
        #expect(written.map { Array($0.id.utf8) } == [Array(composed.id.utf8), Array(decomposed.id.utf8)])
        let again = try await NDJSONFileSink(dataDirectory: dir).open(try SourceID("s"))
        #expect(try await again.write([decomposed, composed], collectedAt: ts("2026-11-27T02:00:00Z")).isEmpty)
    }

    /// Entries of the source's folder that are not plain files, under a sink file's name (a folder, a link to
    /// nothing), are not the sink's: recovering and indexing the folder failed on them at every run.
    @Test func entriesThatAreNotPlainFilesAreNotTheSinks() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir) }
        let sink = NDJSONSink(dataDirectory: dir, sourceID: try SourceID("s"))
        try sink.append([record("a", "2026-11-25T00:00:00Z")], collectedAt: ts("2026-11-27T01:00:00Z"))
        try FileManager.default.createDirectory(
            atPath: sink.directory + "/2026-11-28.ndjson", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(
            atPath: sink.directory + "/2026-11-29.ndjson", withDestinationPath: dir + "/nowhere")
        #expect(sink.files() == ["2026-11-27.ndjson"])
        // A file removed after the folder was listed (a shipper taking old days away) is gone, not a failure.
        #expect(try sink.size(of: "2026-11-20.ndjson") == nil)
        try sink.forEachKeys(in: "2026-11-20.ndjson", from: 0) { keys, _ in Issue.record("read \(keys)") }
        let writer = try await NDJSONFileSink(dataDirectory: dir).open(try SourceID("s"))
        let fresh = try await writer.write(
            [record("a", "2026-11-25T00:00:00Z"), record("b", "2026-11-25T00:00:01Z")],
            collectedAt: ts("2026-11-27T02:00:00Z"))
        #expect(fresh.map(\.id) == ["b"])
    }

    /// A day file made immutable (archived: `chattr +i`) is read, not opened for writing: recovering the folder
    /// opened every file read-write and failed every run on it. A torn one still fails, since it must be cut.
    @Test(.enabled(if: SinkTests.canMakeImmutable, "chattr +i needs CAP_LINUX_IMMUTABLE and a file system with it"))
    func anImmutableDayFileIsReadNotOpenedForWriting() async throws {
        let dir = try makeTemporaryDirectory()
        let sink = NDJSONSink(dataDirectory: dir, sourceID: try SourceID("s"))
        try sink.append([record("a", "2026-11-25T00:00:00Z")], collectedAt: ts("2026-11-26T01:00:00Z"))
        let path = sink.directory + "/2026-11-26.ndjson"
        try #require(try runToEnd(["chattr", "+i", path]).status == 0)
        defer {
            _ = try? runToEnd(["chattr", "-i", path])
            removeTemporary(dir)
        }
        let writer = try await NDJSONFileSink(dataDirectory: dir).open(try SourceID("s"))
        let fresh = try await writer.write(
            [record("a", "2026-11-25T00:00:00Z"), record("b", "2026-11-25T00:00:01Z")],
            collectedAt: ts("2026-11-27T01:00:00Z"))
        #expect(fresh.map(\.id) == ["b"])
        // Torn (written before it was made immutable): it cannot be cut, and the run fails.
        _ = try runToEnd(["chattr", "-i", path])
        let handle = try #require(FileHandle(forWritingAtPath: path))
        handle.seekToEndOfFile()
        handle.write(Data(#"{"source_id":"s","id":"torn"#.utf8))
        try handle.close()
        try #require(try runToEnd(["chattr", "+i", path]).status == 0)
        #expect(throws: SinkError.self) { try sink.recover() }
    }

    /// A sync that fails (a disk's I/O error) leaves lines that may live in the page cache only, the error reported
    /// once: the next run would count them as written and drop their records as duplicates, to lose them with the
    /// pages. The append cuts the file back to where it began, so that sending the page again writes it once.
    @Test func anAppendWhoseSyncFailsLeavesTheFileAsItWas() throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir) }
        var sink = NDJSONSink(dataDirectory: dir, sourceID: try SourceID("s"))
        let at = ts("2026-11-27T01:00:00Z")
        try sink.append([record("a", "2026-11-25T00:00:00Z")], collectedAt: at)
        let path = dir + "/s/2026-11-27.ndjson"
        let before = try Data(contentsOf: URL(fileURLWithPath: path))
        let page = [record("b", "2026-11-26T00:00:00Z"), record("c", "2026-11-26T00:00:01Z")]
        sink.syncFile = { _ in
            errno = EIO
            return -1
        }
        #expect(throws: SinkError.self) { try sink.append(page, collectedAt: at) }
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == before)
        sink.syncFile = { fsync($0) }
        try sink.append(page, collectedAt: at)
        #expect(sink.allEntries().map(\.id) == ["a", "b", "c"])
    }

    /// A folder's entries are synced on a process's first append to the source, not only when that append created
    /// them: an earlier process may have died between creating the day file and syncing its folder, and the file
    /// then exists for this one, on disk in the page cache only. Later appends to the file leave the folder be.
    @Test func theFirstAppendOfAProcessSyncsTheFoldersOfAFileItFinds() throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir) }
        var sink = NDJSONSink(dataDirectory: dir, sourceID: try SourceID("first-append"))
        try FileManager.default.createDirectory(atPath: sink.directory, withIntermediateDirectories: true)
        #expect(FileManager.default.createFile(atPath: sink.directory + "/2026-11-27.ndjson", contents: Data()))
        let synced = Mutex<[String]>([])
        sink.syncFolder = { path throws(SinkError) in synced.withLock { $0.append(path) } }
        let at = ts("2026-11-27T01:00:00Z")
        try sink.append([record("a", "2026-11-25T00:00:00Z")], collectedAt: at)
        #expect(synced.withLock { $0 } == [sink.directory, dir])
        try sink.append([record("b", "2026-11-25T00:00:01Z")], collectedAt: at)
        #expect(synced.withLock { $0 } == [sink.directory, dir])

        // A run's first step, recovering the folder, syncs it already: the index it then builds from the files is
        // durable, and should not know a file whose folder entry is not.
        var other = NDJSONSink(dataDirectory: dir, sourceID: try SourceID("first-recover"))
        try FileManager.default.createDirectory(atPath: other.directory, withIntermediateDirectories: true)
        #expect(FileManager.default.createFile(atPath: other.directory + "/2026-11-27.ndjson", contents: Data()))
        let recovered = Mutex<[String]>([])
        other.syncFolder = { path throws(SinkError) in recovered.withLock { $0.append(path) } }
        try other.recover()
        #expect(recovered.withLock { $0 } == [other.directory, dir])
        try other.append([record("a", "2026-11-25T00:00:00Z")], collectedAt: at)
        #expect(recovered.withLock { $0 } == [other.directory, dir])
    }

    /// The index is rebuilt a chunk at a time: read in chunks far smaller than a line, every key comes back in
    /// order, each chunk ending on a line's end, and a torn last line is left out as before.
    @Test func keysAreReadAChunkAtATimeWithLinesLongerThanAChunk() throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir) }
        let sink = NDJSONSink(dataDirectory: dir, sourceID: try SourceID("s"))
        let records = (0..<40).map { record("r\($0)", "2026-11-25T00:00:\(String(format: "%02d", $0))Z") }
        try sink.append(records, collectedAt: ts("2026-11-27T01:00:00Z"))
        let path = dir + "/s/2026-11-27.ndjson"
        let complete = try Data(contentsOf: URL(fileURLWithPath: path)).count
        let handle = try #require(FileHandle(forWritingAtPath: path))
        handle.seekToEndOfFile()
        handle.write(Data(#"{"source_id":"s","id":"torn","mar"#.utf8))
        try handle.close()
        for chunkBytes in [1, 7, 64, 1000, 1 << 20] {
            var ends: [Int] = []
            var keys: [RecordKey] = []
            try sink.forEachKeys(in: "2026-11-27.ndjson", from: 0, chunkBytes: chunkBytes) { chunk, end in
                keys += chunk
                ends.append(end)
            }
            #expect(keys.map(\.id) == records.map(\.id), "chunks of \(chunkBytes)")
            #expect(ends == ends.sorted() && ends.last == complete, "chunks of \(chunkBytes): \(ends)")
            let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
            #expect(ends.allSatisfy { bytes[$0 - 1] == UInt8(ascii: "\n") }, "chunks of \(chunkBytes)")
        }
        // From an offset: what follows it.
        let lineEnd = try sink.keys(in: "2026-11-27.ndjson", chunkBytes: 1).end
        var fromSecond: [RecordKey] = []
        let firstLine = try Data(contentsOf: URL(fileURLWithPath: path)).firstIndex(of: UInt8(ascii: "\n"))! + 1
        try sink.forEachKeys(in: "2026-11-27.ndjson", from: firstLine, chunkBytes: 100) { keys, _ in fromSecond += keys
        }
        #expect(fromSecond.map(\.id) == records.dropFirst().map(\.id) && lineEnd == complete)
    }

    /// Rebuilding the dedup index reads the sink's own fields of each line, whatever the record holds: a number
    /// beyond a `Double` (valid JSON, which the collectors accept) made `JSONSerialization` refuse the whole line,
    /// and the record was left out of the index, to be written again.
    @Test func everyLineIsKnownAgainWhateverNumbersItsRecordHolds() throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir) }
        let sink = NDJSONSink(dataDirectory: dir, sourceID: try SourceID("s"))
        var big = record("big", "2026-11-25T00:00:00Z")
        big.json = Data(#"{"id":"big","type":"x-count","n":1e400,"m":-123456789012345678901234567890.5}"#.utf8)
        try sink.append([record("a", "2026-11-25T00:00:00Z"), big], collectedAt: ts("2026-11-27T01:00:00Z"))
        let read = try sink.keys(in: "2026-11-27.ndjson")
        #expect(read.keys.map(\.id) == ["a", "big"])
        #expect(sink.allEntries().map(\.id) == ["a", "big"])
    }

    /// A record nested as deep as the collectors accept (512 levels) is one level deeper in its sink line: the
    /// rebuilt index still knows it (the line was refused, so a lost index let the record be written again).
    @Test func aRecordNestedAsDeepAsAcceptedIsKnownAgain() throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir) }
        let sink = NDJSONSink(dataDirectory: dir, sourceID: try SourceID("s"))
        var deep = record("deep", "2026-11-25T00:00:00Z")
        deep.json = Data(
            (#"{"id":"deep","a":"# + String(repeating: "[", count: 511) + "1" + String(repeating: "]", count: 511) + "}")
                .utf8)
        #expect((try? JSONRecords.fields(deep.json, wanted: ["id"])) != nil, "accepted from a source")
        try sink.append([deep, record("a", "2026-11-25T00:00:00Z")], collectedAt: ts("2026-11-27T01:00:00Z"))
        #expect(try sink.keys(in: "2026-11-27.ndjson").keys.map(\.id) == ["deep", "a"])
    }

    /// The index commits every few pages, not every page: pages admitted since its last commit are lost with the
    /// process (the connection closes with the transaction open), yet their records are in the sink, so the next
    /// open indexes them again and a second admission of the same records keeps none of them.
    @Test func pagesAdmittedAfterTheIndexsLastCommitAreKnownAgainAfterARestart() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir) }
        let sink = NDJSONSink(dataDirectory: dir, sourceID: try SourceID("s"))
        let path = dir + "/index/s.sqlite"
        let pages = (0..<3).map { page in
            (0..<5).map { record("p\(page)-\($0)", "2026-11-0\(page + 1)T00:00:00Z") }
        }
        do {
            // Cadence of the service's (128 pages), without its 4 s timer, so a loaded machine changes nothing.
            let index = try DedupIndex(path: path, commitInterval: .seconds(3600))
            try index.catchUp(with: sink)
            for page in pages {
                let fresh = try await index.admit(page) { records throws(SinkError) in
                    try sink.append(records, collectedAt: ts("2026-11-27T01:00:00Z"))
                }
                #expect(fresh.count == 5)
            }
            // Under `commitPages` pages and well within `commitInterval`: nothing committed yet.
            #expect(pages.count < DedupIndex.commitPages)
        }
        let reopened = try DedupIndex(path: path)
        #expect(try reopened.count() == 0)
        try reopened.catchUp(with: sink)
        #expect(try reopened.count() == 15)
        let again = try await reopened.admit(pages.flatMap { $0 }) { records throws(SinkError) in
            Issue.record("\(records.count) records written twice")
            return nil
        }
        #expect(again.isEmpty)

        // flush() commits: a third open finds every key without catching up.
        let more = [record("late", "2026-11-05T00:00:00Z")]
        _ = try await reopened.admit(more) { records throws(SinkError) in
            try sink.append(records, collectedAt: ts("2026-11-27T02:00:00Z"))
        }
        try await reopened.flush()
        #expect(try DedupIndex(path: path).count() == 16)
    }

    /// `/status` and `collection_consecutive_failures` (which the alert on three failed runs in a row reads) give the
    /// storage's count: this process's own began at 0 after a restart or a skipped run.
    @Test func consecutiveFailuresAreTheStoragesCount() async throws {
        let f = try RunnerFixture()
        defer { removeTemporary(f.dir) }
        for _ in 0..<5 {
            _ = try await f.storage.updateWatermark(
                sourceID: f.source.id, timestamp: nil, status: .failed, errorMessage: "down", recordsCollected: nil,
                options: UpdateOptions())
        }
        let report = await f.runner.run(f.source, collector: ScriptedCollector(pages: [[]], failAtPage: 0))
        #expect(report.outcome == .failed)
        // This process (restarted before the run) saw one failure; the storage counts six in a row.
        var entry = SourceBoard.Entry(source: f.source)
        entry.lastRun = report
        entry.consecutiveFailures = 1
        let known = await f.manager.lastKnownWatermark(sourceID: f.source.id)
        #expect(CollectionEngine.consecutiveFailures(entry: entry, known: known) == 6)
        // Nothing known from the storage (never reached): this process's count.
        #expect(CollectionEngine.consecutiveFailures(entry: entry, known: nil) == 1)
    }

    /// A checkpoint's commit that fails rolls back the keys of the pages before it, whose lines are on disk. The run
    /// goes on (a checkpoint costs time only); the next page's savepoint then recorded its file's end past those
    /// lines, so no open indexed them again, and a source sending them again had them written twice.
    @Test func aFailedIndexCommitLosesNoKeyOfTheRecordsOnDisk() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir) }
        let source = try SourceID("feed")
        let writer = try #require(try await NDJSONFileSink(dataDirectory: dir).open(source) as? NDJSONFileSink.Writer)
        let failing = FailingCommit()
        writer.index.observe(failing)
        let first = (0..<3).map { record("a\($0)", "2026-11-26T00:00:0\($0)Z") }
        let now = ts("2026-11-27T01:00:00Z")
        #expect(try await writer.write(first, collectedAt: now).count == 3)
        failing.failNext()
        await #expect(throws: SinkError.self) { try await writer.checkpoint() }
        #expect(try writer.index.known(first.map(\.key)).isEmpty)  // rolled back: the failure is real
        // Behind its sink, the index admits nothing before it has caught up.
        await #expect(throws: SinkError.self) {
            try await writer.index.admit([record("c", "2026-11-26T00:00:08Z")]) { records throws(SinkError) in
                Issue.record("\(records.count) records admitted before the index caught up")
                return nil
            }
        }
        #expect(try await writer.write([record("b", "2026-11-26T00:00:09Z")], collectedAt: now).count == 1)
        try await writer.checkpoint()
        // Sent again in the same run, and after a restart: each record is on disk once.
        #expect(try await writer.write(first, collectedAt: now).isEmpty)
        try await writer.finish()
        let again = try await NDJSONFileSink(dataDirectory: dir).open(source)
        #expect(try await again.write(first, collectedAt: now).isEmpty)
        #expect(try ExactlyOnceTests.linesOnDisk(dir).sorted() == ["a0", "a1", "a2", "b"])
    }

    /// The index follows the sink: it catches up with lines written after its last commit (a crash between the
    /// sink's fsync and the index's commit), starts over when a file shrank, survives its own loss, and keeps
    /// the keys of sink files that were removed.
    @Test func theDedupIndexFollowsTheSinkWhateverHappensBetweenThem() throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir) }
        let sink = NDJSONSink(dataDirectory: dir, sourceID: try SourceID("s"))
        let path = dir + "/index/s.sqlite"
        let old = record("old", "2026-10-01T00:00:00Z")
        let new = record("new", "2026-11-26T00:00:00Z")
        let written = try #require(try sink.append([old], collectedAt: ts("2026-10-01T01:00:00Z")))
        let index = try DedupIndex(path: path)
        try index.catchUp(with: sink)
        #expect(try index.known([old.key, new.key]) == [old.key])
        let size = try #require(try sink.size(of: written.file))
        #expect(written.file == "2026-10-01.ndjson" && written.end == size)

        // Written to the sink, never added to the index: the next open catches up.
        try sink.append([new], collectedAt: ts("2026-11-26T01:00:00Z"))
        #expect(try index.known([new.key]).isEmpty)
        try DedupIndex(path: path).catchUp(with: sink)
        #expect(try DedupIndex(path: path).known([old.key, new.key]) == [old.key, new.key])
        #expect(sink.files() == ["2026-11-26.ndjson", "2026-10-01.ndjson"])

        // A file truncated (rotated by copy and truncate, edited by hand): what it held went elsewhere, as a removed
        // file's did, so its keys stay; what it holds from then on is indexed from its start.
        let newFile = dir + "/s/2026-11-26.ndjson"
        try Data().write(to: URL(fileURLWithPath: newFile))
        let late = record("l", "2026-11-26T00:00:01Z")
        let lateEnd = try #require(try sink.append([late], collectedAt: ts("2026-11-26T02:00:00Z"))).end
        #expect(lateEnd < size + 1_000)
        let shrunk = try DedupIndex(path: path)
        try shrunk.catchUp(with: sink)
        #expect(try shrunk.known([old.key, new.key, late.key]) == [old.key, new.key, late.key])
        try Data().write(to: URL(fileURLWithPath: newFile))

        // The index lost or garbled: rebuilt from the sink. (Its WAL goes too: SQLite would read the header from it.)
        for suffix in ["-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) }
        try Data("not a database".utf8).write(to: URL(fileURLWithPath: path))
        let fresh = try DedupIndex(path: path)
        try fresh.catchUp(with: sink)
        let count = try fresh.count()
        #expect(try fresh.known([old.key]) == [old.key])
        #expect(count == 1)

        // A sink file shipped elsewhere and removed: its records are still known.
        try FileManager.default.removeItem(atPath: dir + "/s/2026-10-01.ndjson")
        try fresh.catchUp(with: sink)
        #expect(try fresh.known([old.key]) == [old.key])
    }

    /// Only a damaged index is removed and rebuilt from the sink (the keys of files removed since are lost with it):
    /// one that cannot be opened for another reason (here a folder where the file should be; a full disk, too many
    /// open files) fails the run and is left as it is. Every failure removed it.
    @Test func anIndexThatCannotBeOpenedButIsNotDamagedIsLeftBe() throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir) }
        let path = dir + "/index/s.sqlite"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        #expect(FileManager.default.createFile(atPath: path + "/keep", contents: Data("x".utf8)))
        let error = #expect(throws: SinkError.self) { _ = try DedupIndex(path: path) }
        #expect(error?.operation == "open index")
        #expect(FileManager.default.fileExists(atPath: path + "/keep"))
    }

    /// A key SQLite refuses to insert fails the page: nothing of it reaches the sink and the index is as before
    /// (a refusal taken for "already known" would drop the record for good).
    @Test func anIndexInsertSQLiteRefusesFailsThePageAndWritesNothing() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir) }
        let sink = NDJSONSink(dataDirectory: dir, sourceID: try SourceID("s"))
        let path = dir + "/index/s.sqlite"
        let index = try DedupIndex(path: path)
        try index.catchUp(with: sink)
        try await DatabaseQueue(path: path).write { db in
            try db.execute(
                sql: """
                    CREATE TRIGGER refuse BEFORE INSERT ON record_key WHEN NEW.id = 'poison'
                    BEGIN SELECT RAISE(ABORT, 'refused by the test'); END
                    """)
        }
        let page = ["a", "poison", "b"].map { record($0, "2026-11-01T00:00:00Z") }
        await #expect {
            _ = try await index.admit(page) { records throws(SinkError) in
                try sink.append(records, collectedAt: ts("2026-11-27T01:00:00Z"))
            }
        } throws: { error in
            let failure = error as? SinkError
            return failure?.operation == "index write" && failure?.detail.contains("refused by the test") == true
        }
        #expect(sink.files().isEmpty)
        #expect(try index.known(page.map(\.key)).isEmpty)

        // The next page goes through.
        let next = try await index.admit([page[0], page[2]]) { records throws(SinkError) in
            try sink.append(records, collectedAt: ts("2026-11-27T01:00:00Z"))
        }
        #expect(next.map(\.id) == ["a", "b"])
    }

    @Test func anUnwritableFolderFailsWithTheOperationAndPath() throws {
        let sink = NDJSONSink(dataDirectory: "/proc/nope", sourceID: try SourceID("s"))
        #expect(throws: SinkError.self) {
            try sink.append([record("a", "2026-11-25T00:00:00Z")], collectedAt: ts("2026-11-27T00:00:00Z"))
        }
    }
}

/// A sink that runs `probe` at each checkpoint, once the sink it wraps has done its part.
struct CheckpointProbe: Sink {
    let inner: any Sink
    let probe: @Sendable () async -> Void

    func open(_ source: SourceID) async throws(SinkError) -> any SinkWriter {
        Writer(inner: try await inner.open(source), probe: probe)
    }

    struct Writer: SinkWriter {
        let inner: any SinkWriter
        let probe: @Sendable () async -> Void

        func write(_ records: [CollectedRecord], collectedAt: Timestamp) async throws(SinkError) -> [CollectedRecord] {
            try await inner.write(records, collectedAt: collectedAt)
        }

        func checkpoint() async throws(SinkError) {
            try await inner.checkpoint()
            await probe()
        }

        func finish() async throws(SinkError) { try await inner.finish() }
    }
}

/// Fails the next commit of the transactions it observes, once (SQLite turns the commit into a rollback, as when the
/// WAL cannot be written).
private final class FailingCommit: TransactionObserver, Sendable {
    private let armed = Mutex(false)

    func failNext() { armed.withLock { $0 = true } }

    func observes(eventsOfKind eventKind: DatabaseEventKind) -> Bool { true }
    func databaseDidChange(with event: DatabaseEvent) {}
    func databaseWillCommit() throws {
        let fail = armed.withLock { armed in
            defer { armed = false }
            return armed
        }
        if fail { throw DatabaseError(resultCode: .SQLITE_IOERR, message: "disk I/O error (test)") }
    }
    func databaseDidCommit(_ db: Database) {}
    func databaseDidRollback(_ db: Database) {}
}
