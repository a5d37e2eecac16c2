import Foundation
import Logging
import Synchronization
import TestSupport
import Testing
import WatermarkCore

@testable import StorageClient

// Over 300 lines for a reason: one suite of the manager with the faulty-storage fixture its cases share.

/// Wraps the in-memory client and makes chosen calls fail as a broken connection would: before reaching
/// the storage, or after the storage applied the update (the answer got lost on the way back).
actor FlakyClient: StorageClient {
    enum Failure {
        /// `none` lets one call through, to script a failure after it.
        case none, beforeSending, afterApplying
        /// Answered with this error without reaching the storage (a proxy's answer, say).
        case answered(StorageClientError)
    }

    let inner: InMemoryStorageClient
    private var failures: [Failure] = []
    private(set) var updatesSent = 0
    /// Lease requests seen, and whether they fail as a broken connection would.
    private(set) var leaseRequests = 0
    var leasesFail = false

    func failLeases(_ fail: Bool) { leasesFail = fail }

    /// Runs `action` once `count` more updates have been sent from now.
    private var afterUpdates: (target: Int, action: @Sendable () -> Void)?
    func after(updates count: Int, _ action: @escaping @Sendable () -> Void) {
        afterUpdates = (updatesSent + count, action)
    }

    init(_ inner: InMemoryStorageClient) {
        self.inner = inner
    }

    func fail(_ failures: Failure...) { self.failures.append(contentsOf: failures) }

    private func nextFailure() -> Failure? { failures.isEmpty ? nil : failures.removeFirst() }

    func getWatermark(sourceID: SourceID) async throws -> Watermark? {
        if nextFailure() != nil { throw StorageClientError.unavailable(underlying: SimulatedOutage()) }
        return try await inner.getWatermark(sourceID: sourceID)
    }

    func updateWatermark(
        sourceID: SourceID, timestamp: Timestamp?, status: RunStatus, errorMessage: String?,
        recordsCollected: Int64?, options: UpdateOptions
    ) async throws -> Watermark {
        updatesSent += 1
        if let after = afterUpdates, updatesSent == after.target { after.action() }
        let failure = nextFailure()
        switch failure {
        case .beforeSending: throw StorageClientError.unavailable(underlying: SimulatedOutage())
        case .answered(let error): throw error
        default: break
        }
        let watermark = try await inner.updateWatermark(
            sourceID: sourceID, timestamp: timestamp, status: status, errorMessage: errorMessage,
            recordsCollected: recordsCollected, options: options
        )
        if case .afterApplying = failure { throw StorageClientError.unavailable(underlying: SimulatedOutage()) }
        return watermark
    }

    func deleteWatermark(
        sourceID: SourceID, precondition: WritePrecondition?, leaseToken: Int64?, reason: String?
    ) async throws {
        try await inner.deleteWatermark(
            sourceID: sourceID, precondition: precondition, leaseToken: leaseToken, reason: reason)
    }

    func lease(sourceID: SourceID) async throws -> Lease? { try await inner.lease(sourceID: sourceID) }

    func listWatermarks(_ query: WatermarkQuery) async throws -> WatermarkPage { try await inner.listWatermarks(query) }

    func history(sourceID: SourceID, limit: Int?) async throws -> [WatermarkRun] {
        try await inner.history(sourceID: sourceID, limit: limit)
    }

    func acquireLease(sourceID: SourceID, owner: String, ttl: Duration) async throws -> Lease {
        leaseRequests += 1
        if leasesFail { throw StorageClientError.unavailable(underlying: SimulatedOutage()) }
        return try await inner.acquireLease(sourceID: sourceID, owner: owner, ttl: ttl)
    }

    func releaseLease(sourceID: SourceID, token: Int64) async throws {
        try await inner.releaseLease(sourceID: sourceID, token: token)
    }

    func healthCheck() async -> Bool { await inner.healthCheck() }
}

@Suite("WatermarkManager")
struct WatermarkManagerTests {
    let otx = sid("alienvault_otx")
    let t1 = Timestamp.at("2024-01-01T12:00:00Z")
    let t2 = Timestamp.at("2024-01-01T12:30:00.25Z")
    let t3 = Timestamp.at("2024-01-01T13:00:00Z")

    @Test func theSeedsFlowWorksOnline() async throws {
        try await withTemporaryDirectory { folder in
            let storage = InMemoryStorageClient()
            let manager = try WatermarkManager(client: storage, stateDirectory: folder, logger: Logger(label: "test"))
            let value1 = try await manager.getWatermark(sourceID: otx)
            #expect(value1 == nil)
            let result = try await manager.updateWatermark(
                sourceID: otx, timestamp: t1, status: .success, recordsCollected: 150
            )
            guard case .applied(let watermark) = result else {
                Issue.record("expected applied, got \(result)")
                return
            }
            #expect(watermark.recordsCollected == 150)
            #expect(try await manager.getWatermark(sourceID: otx)?.lastSuccessfulTimestamp == t1)
            #expect(try await storage.getWatermark(sourceID: otx) == watermark)
            #expect(await manager.lastKnownWatermark(sourceID: otx) == watermark)
            #expect(FileManager.default.fileExists(atPath: folder + "/watermarks.json"))
        }
    }

    @Test func readsFallBackToTheLastKnownValueWhenStorageIsDown() async throws {
        try await withTemporaryDirectory { folder in
            let storage = InMemoryStorageClient()
            let logs = LogRecorder()
            let manager = try WatermarkManager(client: storage, stateDirectory: folder, logger: logs.logger())
            let stored = try await manager.updateWatermark(sourceID: otx, timestamp: t1, status: .success).watermark
            await storage.setAvailable(false)
            #expect(try await manager.getWatermark(sourceID: otx) == stored)
            #expect(logs.messages(at: .warning).contains("Storage unavailable - using last known watermark"))

            // A restarted process still knows it, from the state file.
            let restarted = try WatermarkManager(client: storage, stateDirectory: folder, logger: Logger(label: "t"))
            #expect(try await restarted.getWatermark(sourceID: otx) == stored)
        }
    }

    /// A replica with no state of its own for a source (new, or its state directory lost) while the storage is
    /// unreachable: `nil` would start the run at its lookback, after the stored mark (ten days back here), and
    /// the days between would never be collected. It throws instead, also once the failed run's update is
    /// queued, and answers again from the storage once it is back. A source the storage said it has no
    /// watermark for is known to have none.
    @Test func withNothingKnownLocallyAnUnreachableStorageIsAnErrorNotAFirstCollection() async throws {
        let (otx, t1, t2) = (otx, t1, t2)
        try await withTemporaryDirectory { folder in
            let storage = InMemoryStorageClient()
            _ = try await storage.updateWatermark(
                sourceID: otx, timestamp: t1, status: .success, errorMessage: nil, recordsCollected: nil,
                options: UpdateOptions())
            let fresh = sid("fresh")
            let logs = LogRecorder()
            let manager = try WatermarkManager(client: storage, stateDirectory: folder, logger: logs.logger())
            #expect(try await manager.getWatermark(sourceID: fresh) == nil)
            await storage.setAvailable(false)
            let error = await thrown(StorageClientError.self) { _ = try await manager.getWatermark(sourceID: otx) }
            #expect(error?.isTransient == true && "\(error.map { "\($0)" } ?? "")".contains("no last known watermark"))
            #expect(
                logs.messages(at: .warning).contains("Storage unavailable and no last known watermark - not collecting")
            )
            // The failed run's update is queued, and still nothing is known.
            let failed = try await manager.updateWatermark(
                sourceID: otx, timestamp: nil, status: .failed, errorMessage: "storage unreachable")
            #expect(failed.isQueued)
            #expect(await thrown(StorageClientError.self) { _ = try await manager.getWatermark(sourceID: otx) } != nil)
            // The storage said it has none for `fresh`: a run starts from the lookback, and its queued update moves
            // the local value as the storage's will move.
            #expect(try await manager.getWatermark(sourceID: fresh) == nil)
            #expect(try await manager.updateWatermark(sourceID: fresh, timestamp: t2, status: .success).isQueued)
            #expect(try await manager.getWatermark(sourceID: fresh)?.lastSuccessfulTimestamp == t2)
            await storage.setAvailable(true)
            #expect(try await manager.getWatermark(sourceID: otx)?.lastSuccessfulTimestamp == t1)
            #expect(await manager.replayPending() == ReplaySummary(applied: 1, dropped: 0, remaining: 0))
            #expect(try await storage.getWatermark(sourceID: fresh)?.lastSuccessfulTimestamp == t2)
        }
    }

    @Test func updatesAreQueuedWhileDownAndReplayedInOrder() async throws {
        let (otx, t1, t2) = (otx, t1, t2)
        try await withTemporaryDirectory { folder in
            let storage = InMemoryStorageClient()
            let logs = LogRecorder()
            let manager = try WatermarkManager(client: storage, stateDirectory: folder, logger: logs.logger())
            try await manager.updateWatermark(sourceID: otx, timestamp: t1, status: .success)
            await storage.setAvailable(false)

            let second = try await manager.updateWatermark(
                sourceID: otx, timestamp: t2, status: .success, recordsCollected: 10
            )
            guard case .queued(let projected, let pending) = second else {
                Issue.record("expected queued, got \(second)")
                return
            }
            #expect(pending == 1)
            #expect(projected.lastSuccessfulTimestamp == t2)
            #expect(projected.recordsCollected == 10)
            #expect(projected.version == 2)
            // The next run continues from the queued value.
            #expect(try await manager.getWatermark(sourceID: otx)?.lastSuccessfulTimestamp == t2)

            let third = try await manager.updateWatermark(
                sourceID: otx, timestamp: nil, status: .failed, errorMessage: "feed down"
            )
            #expect(third.isQueued)
            #expect(third.watermark.lastSuccessfulTimestamp == t2)
            #expect(third.watermark.consecutiveFailures == 1)
            #expect(await manager.pendingCount() == 2)
            #expect(await manager.pendingCount(sourceID: sid("other")) == 0)
            #expect(logs.messages(at: .warning).contains("Storage unavailable - watermark update queued"))

            // Still down: nothing is lost, nothing is reordered.
            #expect(await manager.replayPending() == ReplaySummary(applied: 0, dropped: 0, remaining: 2))

            await storage.setAvailable(true)
            #expect(await manager.replayPending() == ReplaySummary(applied: 2, dropped: 0, remaining: 0))
            let runs = try await storage.history(sourceID: otx, limit: nil)
            #expect(runs.map(\.version) == [3, 2, 1])
            #expect(runs.map(\.status) == [.failed, .success, .success])
            #expect(runs[1].timestamp == t2)
            #expect(runs[1].recordsCollected == 10)
            let current = try #require(try await storage.getWatermark(sourceID: otx))
            #expect(current.lastSuccessfulTimestamp == t2)
            #expect(current.errorMessage == "feed down")
            #expect(await manager.lastKnownWatermark(sourceID: otx) == current)
            #expect(await manager.pendingCount() == 0)
        }
    }

    @Test func theQueueSurvivesARestartAndAppliesEachUpdateOnce() async throws {
        let (otx, t1, t2) = (otx, t1, t2)
        try await withTemporaryDirectory { folder in
            let storage = InMemoryStorageClient()
            let flaky = FlakyClient(storage)
            do {
                let first = try WatermarkManager(client: flaky, stateDirectory: folder, logger: Logger(label: "t"))
                // The storage applies the first update but the answer is lost: the manager cannot know.
                await flaky.fail(.afterApplying)
                #expect(try await first.updateWatermark(sourceID: otx, timestamp: t1, status: .success).isQueued)
                // Still down: the queued update fails again, so the new one queues behind it unsent.
                await flaky.fail(.beforeSending)
                #expect(
                    try await first.updateWatermark(
                        sourceID: otx, timestamp: t2, status: .success,
                        options: UpdateOptions(reason: "backfill: ticket 42")
                    ).isQueued)
                #expect(await first.pendingCount() == 2)
                let queued = await first.pendingUpdates()
                #expect(queued.map(\.sequence) == [1, 2])
                #expect(queued.allSatisfy { $0.options.idempotencyKey != nil })
            }
            // The collector restarts; the storage is back.
            let logs = LogRecorder()
            let restarted = try WatermarkManager(client: flaky, stateDirectory: folder, logger: logs.logger())
            #expect(await restarted.pendingCount(sourceID: otx) == 2)
            #expect(await restarted.lastKnownWatermark(sourceID: otx)?.lastSuccessfulTimestamp == t2)
            #expect(await restarted.replayPending() == ReplaySummary(applied: 2, dropped: 0, remaining: 0))
            // The first update reached the storage once only, although it was sent twice.
            let runs = try await storage.history(sourceID: otx, limit: nil)
            #expect(runs.map(\.version) == [2, 1])
            #expect(runs.map(\.timestamp) == [t2, t1])
            // The reason the second update gave survives the restart into the history.
            #expect(runs.map(\.reason) == ["backfill: ticket 42", nil])
            #expect(logs.messages(at: .notice).contains("Queued watermark updates found"))
        }
    }

    @Test func aNewUpdateWaitsBehindItsSourcesQueue() async throws {
        let (otx, t1, t2, t3) = (otx, t1, t2, t3)
        try await withTemporaryDirectory { folder in
            let storage = InMemoryStorageClient()
            let flaky = FlakyClient(storage)
            let manager = try WatermarkManager(client: flaky, stateDirectory: folder, logger: Logger(label: "t"))
            await flaky.fail(.beforeSending, .beforeSending)
            #expect(try await manager.updateWatermark(sourceID: otx, timestamp: t1, status: .success).isQueued)
            // The queue's retry fails (the second failure), so the newer update must not overtake it.
            #expect(try await manager.updateWatermark(sourceID: otx, timestamp: t2, status: .success).isQueued)
            #expect(await flaky.updatesSent == 2)
            #expect(await manager.pendingCount(sourceID: otx) == 2)

            // Storage is back: the next update first delivers the queue, then itself.
            let result = try await manager.updateWatermark(sourceID: otx, timestamp: t3, status: .success)
            #expect(result.watermark.version == 3)
            #expect(!result.isQueued)
            let runs = try await storage.history(sourceID: otx, limit: nil)
            #expect(runs.map(\.timestamp) == [t3, t2, t1])
            #expect(await manager.pendingCount() == 0)
        }
    }

    @Test func leaseRefusalsStayQueuedAndOnlyFinalRefusalsGoToTheDeadLetterFile() async throws {
        let (otx, t1, t2, t3) = (otx, t1, t2, t3)
        let clock = ManualClock()
        try await withTemporaryDirectory { folder in
            let storage = InMemoryStorageClient(policy: WatermarkPolicy(), clock: { clock.now() })
            let logs = LogRecorder()
            let manager = try WatermarkManager(client: storage, stateDirectory: folder, logger: logs.logger())
            let lease = try await storage.acquireLease(sourceID: otx, owner: "replica-a", ttl: .seconds(1))
            try await manager.updateWatermark(
                sourceID: otx, timestamp: t1, status: .success, leaseToken: lease.fencingToken)

            await storage.setAvailable(false)
            let stale = try await manager.updateWatermark(
                sourceID: otx, timestamp: t2, status: .success, leaseToken: lease.fencingToken
            )
            #expect(stale.isQueued)
            let other = sid("taxii_feed")
            #expect(try await manager.updateWatermark(sourceID: other, timestamp: t3, status: .success).isQueued)

            // Meanwhile the lease ran out and another replica took over.
            await storage.setAvailable(true)
            clock.advance(.seconds(2))
            let takeover = try await storage.acquireLease(sourceID: otx, owner: "replica-b", ttl: .seconds(60))
            #expect(takeover.fencingToken == 2)

            // A stale token can succeed later, under this replica's own lease: kept, not dropped. The other
            // source's update goes through.
            #expect(await manager.replayPending() == ReplaySummary(applied: 1, dropped: 0, remaining: 1))
            let kept = try #require(
                logs.all.first { $0.message == "Queued watermark update kept - the storage wants the source's lease" })
            #expect(kept.metadata["code"] == "stale_lease" && kept.metadata["source_id"] == "alienvault_otx")
            #expect(!logs.all.contains { $0.message.contains("dropped") })
            #expect(try await storage.getWatermark(sourceID: other)?.lastSuccessfulTimestamp == t3)

            // Replica b moves the mark past the queued one and goes away; replica a takes the lease back: its update
            // was made under lease 1, and lease 2 went to replica b in between, so it can never be sent (under the
            // new token it would overwrite replica b's work).
            _ = try await storage.updateWatermark(
                sourceID: otx, timestamp: t3, status: .success, errorMessage: nil, recordsCollected: nil,
                options: UpdateOptions(leaseToken: takeover.fencingToken))
            try await storage.releaseLease(sourceID: otx, token: takeover.fencingToken)
            let again = try await storage.acquireLease(sourceID: otx, owner: "replica-a", ttl: .seconds(60))
            #expect(
                await manager.flush(sourceID: otx, leaseToken: again.fencingToken)
                    == ReplaySummary(applied: 0, dropped: 1, remaining: 0))
            let moved = try #require(
                logs.all.first {
                    $0.message == "Queued watermark update refused by storage - moved to the dead-letter file"
                })
            #expect(moved.level == .error && moved.metadata["code"] == "stale_lease")
            let letters = await manager.deadLetters()
            #expect(letters.count == 1)
            #expect(letters.first?.code == "stale_lease" && letters.first?.update.update.timestamp == t2)
            let onDisk = try String(contentsOfFile: folder + "/dead-letter.json", encoding: .utf8)
            #expect(onDisk.contains("stale_lease"))
            #expect(try await storage.getWatermark(sourceID: otx)?.lastSuccessfulTimestamp == t3)
            #expect(await manager.pendingCount() == 0)
        }
    }

    /// A manager on a storage whose next call fails, with one update of `sourceID` queued by that failure.
    /// Two updates queued in an outage, the first delivered and the second not (the storage away again): the last
    /// known mark stays the second's, as the storage will have it. It fell back to the first's, and a run during the
    /// rest of the outage started there and queued a mark behind the second, refused as a regression at its replay.
    @Test func aPartialReplayKeepsTheLastKnownMarkOfWhatIsStillQueued() async throws {
        let (otx, t1, t2) = (otx, t1, t2)
        try await withTemporaryDirectory { folder in
            let storage = InMemoryStorageClient()
            let flaky = FlakyClient(storage)
            let manager = try WatermarkManager(client: flaky, stateDirectory: folder, logger: Logger.quiet)
            await flaky.fail(.beforeSending, .beforeSending)
            #expect(try await manager.updateWatermark(sourceID: otx, timestamp: t1, status: .success).isQueued)
            #expect(try await manager.updateWatermark(sourceID: otx, timestamp: t2, status: .success).isQueued)
            await flaky.fail(.none, .beforeSending)
            #expect(await manager.replayPending() == ReplaySummary(applied: 1, dropped: 0, remaining: 1))
            #expect(try await storage.getWatermark(sourceID: otx)?.lastSuccessfulTimestamp == t1)
            #expect(await manager.lastKnownWatermark(sourceID: otx)?.lastSuccessfulTimestamp == t2)
        }
    }

    /// A replay writes the queue file every hundred deliveries (or second) and once at its end: it rewrote the whole
    /// file at each delivery, n files of up to n entries for n queued updates (hours for the tens of thousands an
    /// outage of two days queues over a hundred sources, the manager held meanwhile). An update delivered but still
    /// in the file after a crash is sent again with its idempotency key, and applied once.
    @Test func aLongReplayWritesTheQueueInBatchesAndWhatACrashLeftIsAppliedOnce() async throws {
        let (otx, t1) = (otx, t1)
        try await withTemporaryDirectory { folder in
            let (storage, manager) = try await Self.queued(250, in: folder)
            let (file, journal) = (URL(fileURLWithPath: folder + "/pending.json"), folder + "/pending.journal")
            let leftByACrash = (try Data(contentsOf: file), try #require(FileManager.default.contents(atPath: journal)))
            await storage.setAvailable(true)
            let before = await (manager.pendingFileWrites, manager.lastKnownFileWrites)
            let started = ContinuousClock.now
            #expect(await manager.replayPending() == ReplaySummary(applied: 250, dropped: 0, remaining: 0))
            let seconds = Int((ContinuousClock.now - started).components.seconds)
            let writes = await manager.pendingFileWrites - before.0
            #expect(writes >= 1 && writes <= 250 / WatermarkManager.replaySaveEvery + seconds + 2, "\(writes) writes")
            // The last known value is written once, when the replay stops, not at each delivery.
            #expect(await manager.lastKnownFileWrites - before.1 <= 1)
            #expect(try await storage.getWatermark(sourceID: otx)?.version == 250)

            // The file as a crash before any of those writes left it: every update is sent again, none applied twice.
            try leftByACrash.0.write(to: file)
            try leftByACrash.1.write(to: URL(fileURLWithPath: journal))
            let restarted = try WatermarkManager(client: storage, stateDirectory: folder, logger: Logger.quiet)
            #expect(await restarted.replayPending() == ReplaySummary(applied: 250, dropped: 0, remaining: 0))
            let stored = try await storage.getWatermark(sourceID: otx)
            #expect(stored?.version == 250 && stored?.lastSuccessfulTimestamp == t1.adding(.seconds(249)))
        }
    }

    /// An outage's queue grows by a synced line per update once it is long, not by a rewrite of the whole file: the
    /// file is written again only when the journal holds half of it (4 times for 400 updates past the first 64), and
    /// a restart reads the queue back whole and in order.
    @Test func aLongQueueGrowsByALinePerUpdate() async throws {
        let (otx, t1) = (otx, t1)
        try await withTemporaryDirectory { folder in
            let count = 400
            let (storage, manager) = try await Self.queued(count, in: folder)
            let writes = await manager.pendingFileWrites
            #expect(writes >= WatermarkManager.journalFrom && writes <= WatermarkManager.journalFrom + 6, "\(writes)")
            let restarted = try WatermarkManager(client: storage, stateDirectory: folder, logger: Logger.quiet)
            #expect(await restarted.pendingUpdates().map(\.sequence) == (1...Int64(count)).map { $0 })
            await storage.setAvailable(true)
            #expect(await restarted.replayPending() == ReplaySummary(applied: count, dropped: 0, remaining: 0))
            let stored = try await storage.getWatermark(sourceID: otx)
            #expect(stored?.version == Int64(count) && stored?.lastSuccessfulTimestamp == t1.adding(.seconds(399)))
        }
    }

    /// The journal as a crash may leave it, cut at every byte: the updates of its complete lines are read back, the
    /// cut one is not (its call never returned), and the next update queued after such a start is not lost behind
    /// the cut line. A damaged line is skipped (logged, a copy kept) and the lines after it still count.
    @Test func aJournalCutAtAnyByteLosesNoUpdateThatWasQueued() async throws {
        let (otx, t1) = (otx, t1)
        try await withTemporaryDirectory { folder in
            let count = WatermarkManager.journalFrom + 2
            let (storage, _) = try await Self.queued(count, in: folder)
            let (file, journal) = (folder + "/pending.json", folder + "/pending.journal")
            let whole = try #require(FileManager.default.contents(atPath: file))
            let lines = try #require(FileManager.default.contents(atPath: journal))
            let known = try #require(FileManager.default.contents(atPath: folder + "/watermarks.json"))
            let lineEnds = lines.indices.filter { lines[$0] == UInt8(ascii: "\n") }.map { $0 + 1 }
            #expect(lineEnds.count == 2)
            for cut in 0...lines.count {
                try whole.write(to: URL(fileURLWithPath: file))
                try lines.prefix(cut).write(to: URL(fileURLWithPath: journal))
                try known.write(to: URL(fileURLWithPath: folder + "/watermarks.json"))
                let complete = lineEnds.filter { $0 <= cut }.count
                let reopened = try WatermarkManager(client: storage, stateDirectory: folder, logger: Logger.quiet)
                let expected = (1...Int64(count - 2 + complete)).map { $0 }
                #expect(await reopened.pendingUpdates().map(\.sequence) == expected, "cut at \(cut)")
                _ = try await reopened.updateWatermark(
                    sourceID: otx, timestamp: t1.adding(.seconds(Int64(count))), status: .success)
                let again = try WatermarkManager(client: storage, stateDirectory: folder, logger: Logger.quiet)
                #expect(
                    await again.pendingUpdates().map(\.sequence) == expected + [expected.last! + 1], "cut at \(cut)")
            }

            try whole.write(to: URL(fileURLWithPath: file))
            try (Data("{\"damaged\n".utf8) + lines).write(to: URL(fileURLWithPath: journal))
            let logs = LogRecorder()
            let reopened = try WatermarkManager(client: storage, stateDirectory: folder, logger: logs.logger())
            #expect(await reopened.pendingCount() == count)
            #expect(logs.messages(at: .error).contains("Queued watermark updates damaged on disk - skipped"))
            let copies = try FileManager.default.contentsOfDirectory(atPath: folder)
            #expect(copies.contains { $0.hasPrefix("pending.journal.damaged-") }, "\(copies)")
        }
    }

    /// An update whose journal line cannot be written (a full disk: the journal here is /dev/full) is refused to its
    /// caller, and the next update is written whole rather than after what the failed append may have left.
    @Test func aFailedJournalAppendIsReportedAndTheNextUpdateIsWrittenWhole() async throws {
        let (otx, t1) = (otx, t1)
        try await withTemporaryDirectory { folder in
            let count = WatermarkManager.journalFrom + 1
            let (storage, manager) = try await Self.queued(count, in: folder)
            let journal = folder + "/pending.journal"
            try FileManager.default.removeItem(atPath: journal)
            try FileManager.default.createSymbolicLink(atPath: journal, withDestinationPath: "/dev/full")
            await #expect(throws: DurableFile.IOError.self) {
                try await manager.updateWatermark(
                    sourceID: otx, timestamp: t1.adding(.seconds(Int64(count))), status: .success)
            }
            let writes = await manager.pendingFileWrites
            #expect(
                try await manager.updateWatermark(
                    sourceID: otx, timestamp: t1.adding(.seconds(Int64(count + 1))), status: .success
                ).isQueued)
            #expect(await manager.pendingFileWrites == writes + 1)
            let restarted = try WatermarkManager(client: storage, stateDirectory: folder, logger: Logger.quiet)
            #expect(await restarted.pendingCount() == count + 1)
        }
    }

    /// A crash after the queue was written whole, before its journal was emptied, leaves lines the file already
    /// holds or has seen delivered: they are not queued again.
    @Test func journalLinesTheWholeFileHasSeenAreNotQueuedAgain() async throws {
        let otx = otx
        try await withTemporaryDirectory { folder in
            let count = WatermarkManager.journalFrom + 2
            let (storage, manager) = try await Self.queued(count, in: folder)
            let journal = URL(fileURLWithPath: folder + "/pending.journal")
            let lines = try Data(contentsOf: journal)
            await storage.setAvailable(true)
            #expect(await manager.replayPending() == ReplaySummary(applied: count, dropped: 0, remaining: 0))
            #expect(try Data(contentsOf: journal).isEmpty)
            try lines.write(to: journal)
            let restarted = try WatermarkManager(client: storage, stateDirectory: folder, logger: Logger.quiet)
            #expect(await restarted.pendingCount() == 0)
            #expect(try await storage.getWatermark(sourceID: otx)?.version == Int64(count))
        }
    }

    /// At shutdown a replay stops between two deliveries (`stopReplaying`), the rest left queued for the next start:
    /// it ran through the whole queue of an outage, past the grace period, until the process was killed.
    @Test func aReplayStopsBetweenDeliveriesAtShutdown() async throws {
        let otx = otx
        try await withTemporaryDirectory { folder in
            let storage = InMemoryStorageClient()
            let flaky = FlakyClient(storage)
            let (_, manager) = try await Self.queued(10, in: folder, storage: storage, client: flaky)
            await storage.setAvailable(true)
            await flaky.after(updates: 3) { manager.stopReplaying() }
            #expect(await manager.replayPending() == ReplaySummary(applied: 3, dropped: 0, remaining: 7))
            let restarted = try WatermarkManager(client: storage, stateDirectory: folder, logger: Logger.quiet)
            #expect(await restarted.replayPending() == ReplaySummary(applied: 7, dropped: 0, remaining: 0))
            #expect(try await storage.getWatermark(sourceID: otx)?.version == 10)
        }
    }

    /// A manager on `storage` (through `client`), the storage down, with `count` successes of `alienvault_otx`
    /// queued, a second apart from 2024-01-01T12:00:00Z.
    static func queued(
        _ count: Int, in folder: String, storage: InMemoryStorageClient = InMemoryStorageClient(),
        client: (any StorageClient)? = nil
    ) async throws -> (InMemoryStorageClient, WatermarkManager) {
        let manager = try WatermarkManager(client: client ?? storage, stateDirectory: folder, logger: Logger.quiet)
        await storage.setAvailable(false)
        for second in 0..<count {
            _ = try await manager.updateWatermark(
                sourceID: sid("alienvault_otx"),
                timestamp: Timestamp.at("2024-01-01T12:00:00Z").adding(
                    .seconds(Int64(second))), status: .success)
        }
        return (storage, manager)
    }

    static func oneQueued(
        _ folder: String, _ sourceID: SourceID, timestamp: Timestamp?, status: RunStatus
    ) async throws -> (InMemoryStorageClient, FlakyClient, WatermarkManager) {
        let storage = InMemoryStorageClient()
        let flaky = FlakyClient(storage)
        let manager = try WatermarkManager(client: flaky, stateDirectory: folder, logger: Logger.quiet)
        await flaky.fail(.beforeSending)
        let result = try await manager.updateWatermark(
            sourceID: sourceID, timestamp: timestamp, status: status, errorMessage: status == .failed ? "x" : nil)
        #expect(result.isQueued)
        return (storage, flaky, manager)
    }

    /// A rate limit the client gave up on (429, or a `Retry-After` beyond its cap), a 408, or an answer that is not
    /// the service's (a proxy's plain 404 or 413) says nothing about the update: it stays queued, where each such
    /// answer moved it to the dead-letter file and the replay went on to the next one.
    @Test func answersThatAreNotTheServicesVerdictKeepTheUpdateQueued() async throws {
        let (otx, t1) = (otx, t1)
        try await withTemporaryDirectory { folder in
            let (storage, flaky, manager) = try await Self.oneQueued(folder, otx, timestamp: t1, status: .success)
            let answers = [
                WatermarkError(status: 429, code: "rate_limited", message: "slow down"),
                WatermarkError(status: 408, code: "http_408", message: "Request Timeout"),
                WatermarkError(status: 404, code: "http_404", message: "Not Found: default backend"),
                WatermarkError(status: 413, code: "http_413", message: "Payload Too Large: nginx"),
            ]
            for answer in answers {
                let error: StorageClientError =
                    answer.statusCode == 404
                    ? .invalidRequest(code: answer.code, message: answer.message)
                    : StorageClientError(answer)
                await flaky.fail(.answered(error))
                #expect(
                    await manager.replayPending() == ReplaySummary(applied: 0, dropped: 0, remaining: 1),
                    "\(answer.statusCode) \(answer.code)")
            }
            #expect(await manager.deadLetters().isEmpty)
            #expect(await manager.replayPending() == ReplaySummary(applied: 1, dropped: 0, remaining: 0))
            #expect(try await storage.getWatermark(sourceID: otx)?.lastSuccessfulTimestamp == t1)
        }
    }

    /// A dead-letter file that cannot be read is moved aside before the next letter is written, never overwritten
    /// with that letter alone.
    @Test func anUnreadableDeadLetterFileIsMovedAsideNotOverwritten() async throws {
        let otx = otx
        try await withTemporaryDirectory { folder in
            // Queued while the storage is away, then refused for good when replayed.
            let (_, flaky, manager) = try await Self.oneQueued(folder, otx, timestamp: nil, status: .failed)
            await flaky.fail(.answered(.conflict(code: "watermark_regression", message: "older")))
            let damaged = "[{\"update\": truncated"
            try damaged.write(toFile: folder + "/dead-letter.json", atomically: true, encoding: .utf8)
            #expect(await manager.replayPending() == ReplaySummary(applied: 0, dropped: 1, remaining: 0))
            #expect(try String(contentsOfFile: folder + "/dead-letter.json.corrupt", encoding: .utf8) == damaged)
            #expect(await manager.deadLetters().count == 1)
        }
    }

    /// An update queued under a lease that another collector's lease followed is never sent under this collector's
    /// next lease: a failed run's status, queued by a replica cut off from the storage, overwrote the success of the
    /// replica that took the source over (the mark is guarded by the regression rule; the status was not).
    @Test func anUpdateQueuedBeforeAnotherCollectorsLeaseIsNeverSentUnderALaterOne() async throws {
        let (otx, t1, t3) = (otx, t1, t3)
        let clock = ManualClock()
        try await withTemporaryDirectory { folder in
            let storage = InMemoryStorageClient(policy: WatermarkPolicy(), clock: { clock.now() })
            let manager = try WatermarkManager(client: storage, stateDirectory: folder, logger: Logger.quiet)
            let first = try await storage.acquireLease(sourceID: otx, owner: "replica-a", ttl: .seconds(1))
            try await manager.updateWatermark(sourceID: otx, timestamp: t1, status: .success, leaseToken: 1)
            await storage.setAvailable(false)
            #expect(
                try await manager.updateWatermark(
                    sourceID: otx, timestamp: nil, status: .failed, errorMessage: "cut off",
                    leaseToken: first.fencingToken
                ).isQueued)
            await storage.setAvailable(true)
            clock.advance(.seconds(2))
            let takeover = try await storage.acquireLease(sourceID: otx, owner: "replica-b", ttl: .seconds(60))
            _ = try await storage.updateWatermark(
                sourceID: otx, timestamp: t3, status: .success, errorMessage: nil, recordsCollected: nil,
                options: UpdateOptions(leaseToken: takeover.fencingToken))
            try await storage.releaseLease(sourceID: otx, token: takeover.fencingToken)
            let again = try await storage.acquireLease(sourceID: otx, owner: "replica-a", ttl: .seconds(60))
            #expect(again.fencingToken == 3)
            #expect(
                await manager.flush(sourceID: otx, leaseToken: again.fencingToken)
                    == ReplaySummary(applied: 0, dropped: 1, remaining: 0))
            let stored = try await storage.getWatermark(sourceID: otx)
            #expect(stored?.status == .success && stored?.consecutiveFailures == 0 && stored?.errorMessage == nil)
            #expect(await manager.deadLetters().map(\.code) == ["stale_lease"])
        }
    }

    /// Updates queued under a lease are this collector's own work under the lease granted right after it (tokens
    /// grow by one a grant, so none went to another in between): carried on to it, on disk before anything is sent,
    /// so that they are carried on again to the grant after, should the storage go away before they are delivered.
    @Test func updatesQueuedUnderALeaseAreCarriedOnToTheGrantsThatFollowIt() async throws {
        let (otx, t1, t2) = (otx, t1, t2)
        let clock = ManualClock()
        try await withTemporaryDirectory { folder in
            let storage = InMemoryStorageClient(policy: WatermarkPolicy(), clock: { clock.now() })
            let manager = try WatermarkManager(client: storage, stateDirectory: folder, logger: Logger.quiet)
            _ = try await storage.acquireLease(sourceID: otx, owner: "replica-a", ttl: .seconds(1))
            try await manager.updateWatermark(sourceID: otx, timestamp: t1, status: .success, leaseToken: 1)
            await storage.setAvailable(false)
            #expect(
                try await manager.updateWatermark(sourceID: otx, timestamp: t2, status: .success, leaseToken: 1)
                    .isQueued)
            await storage.setAvailable(true)
            clock.advance(.seconds(2))
            let second = try await storage.acquireLease(sourceID: otx, owner: "replica-a", ttl: .seconds(1))
            #expect(second.fencingToken == 2)
            // The storage goes away again as the queue is sent under the second lease.
            await storage.setAvailable(false)
            #expect(
                await manager.flush(sourceID: otx, leaseToken: second.fencingToken)
                    == ReplaySummary(applied: 0, dropped: 0, remaining: 1))
            #expect(await manager.pendingUpdates().map(\.options.leaseToken) == [2])
            await storage.setAvailable(true)
            clock.advance(.seconds(2))
            let third = try await storage.acquireLease(sourceID: otx, owner: "replica-a", ttl: .seconds(60))
            #expect(
                await manager.flush(sourceID: otx, leaseToken: third.fencingToken)
                    == ReplaySummary(applied: 1, dropped: 0, remaining: 0))
            #expect(try await storage.getWatermark(sourceID: otx)?.lastSuccessfulTimestamp == t2)
            #expect(await manager.deadLetters().isEmpty)
        }
    }

    @Test func aQueuedUpdateIsDeliveredUnderTheLeaseOfTheRunThatReplaysIt() async throws {
        let (otx, t1, t2) = (otx, t1, t2)
        let clock = ManualClock()
        try await withTemporaryDirectory { folder in
            let storage = InMemoryStorageClient(policy: WatermarkPolicy(), clock: { clock.now() })
            let logs = LogRecorder()
            let manager = try WatermarkManager(client: storage, stateDirectory: folder, logger: logs.logger())
            try await manager.updateWatermark(sourceID: otx, timestamp: t1, status: .success)
            // A run through an outage queues its update without a token ...
            await storage.setAvailable(false)
            #expect(try await manager.updateWatermark(sourceID: otx, timestamp: t2, status: .success).isQueued)
            await storage.setAvailable(true)
            // ... and the next run takes the lease before anything else: tokenless writes are refused now.
            let lease = try await storage.acquireLease(sourceID: otx, owner: "replica-a", ttl: .seconds(60))
            #expect(await manager.replayPending() == ReplaySummary(applied: 0, dropped: 0, remaining: 1))
            #expect(
                await manager.flush(sourceID: otx, leaseToken: lease.fencingToken)
                    == ReplaySummary(applied: 1, dropped: 0, remaining: 0))
            let stored = try await storage.getWatermark(sourceID: otx)
            #expect(stored?.lastSuccessfulTimestamp == t2 && stored?.version == 2)
            #expect(await manager.deadLetters().isEmpty)
        }
    }

    @Test func aRegressionIsRefusedAlsoWhileQueueing() async throws {
        let (otx, t1, t2) = (otx, t1, t2)
        try await withTemporaryDirectory { folder in
            let storage = InMemoryStorageClient()
            let manager = try WatermarkManager(client: storage, stateDirectory: folder, logger: Logger(label: "t"))
            try await manager.updateWatermark(sourceID: otx, timestamp: t2, status: .success)
            await storage.setAvailable(false)
            let error = await thrown(StorageClientError.self) {
                try await manager.updateWatermark(sourceID: otx, timestamp: t1, status: .success)
            }
            #expect(error?.code == "watermark_regression")
            let negative = await thrown(StorageClientError.self) {
                try await manager.updateWatermark(sourceID: otx, timestamp: t2, status: .success, recordsCollected: -1)
            }
            #expect(negative?.code == "invalid_body")
            let badKey = await thrown(StorageClientError.self) {
                try await manager.updateWatermark(
                    sourceID: otx, timestamp: t2, status: .success, options: UpdateOptions(idempotencyKey: "a b")
                )
            }
            #expect(badKey?.code == "invalid_header")
            #expect(await manager.pendingCount() == 0)
            // Forced backfill is queued as asked.
            let forced = try await manager.updateWatermark(
                sourceID: otx, timestamp: t1, status: .success, options: UpdateOptions(force: true)
            )
            #expect(forced.isQueued)
            #expect(forced.watermark.lastSuccessfulTimestamp == t1)
        }
    }

    @Test func aResetSourceIsForgottenLocally() async throws {
        let (otx, t1) = (otx, t1)
        try await withTemporaryDirectory { folder in
            let storage = InMemoryStorageClient()
            let manager = try WatermarkManager(client: storage, stateDirectory: folder, logger: Logger(label: "t"))
            try await manager.updateWatermark(sourceID: otx, timestamp: t1, status: .success)
            try await storage.deleteWatermark(sourceID: otx, precondition: nil, leaseToken: nil)
            let value3 = try await manager.getWatermark(sourceID: otx)
            #expect(value3 == nil)
            await storage.setAvailable(false)
            let value4 = try await manager.getWatermark(sourceID: otx)
            #expect(value4 == nil)
        }
    }

    @Test func corruptStateIsSetAsideNotFatal() async throws {
        try await withTemporaryDirectory { folder in
            try Data("{ not json".utf8).write(to: URL(fileURLWithPath: folder + "/watermarks.json"))
            try Data("[1, 2,".utf8).write(to: URL(fileURLWithPath: folder + "/pending.json"))
            let logs = LogRecorder()
            let storage = InMemoryStorageClient()
            let manager = try WatermarkManager(client: storage, stateDirectory: folder, logger: logs.logger())
            #expect(await manager.pendingCount() == 0)
            #expect(FileManager.default.fileExists(atPath: folder + "/watermarks.json.corrupt"))
            #expect(FileManager.default.fileExists(atPath: folder + "/pending.json.corrupt"))
            let errors = logs.all.filter { $0.message == "Local watermark state is corrupt - starting empty" }
            #expect(errors.count == 2)
            #expect(errors.allSatisfy { $0.level == .error })
            // And it works from there on.
            try await manager.updateWatermark(sourceID: otx, timestamp: t1, status: .success)
            let reopened = try WatermarkManager(client: storage, stateDirectory: folder, logger: Logger(label: "t"))
            await storage.setAvailable(false)
            #expect(try await reopened.getWatermark(sourceID: otx)?.lastSuccessfulTimestamp == t1)
        }
    }

    @Test func permanentErrorsOfADirectCallReachTheCaller() async throws {
        let (otx, t1) = (otx, t1)
        try await withTemporaryDirectory { folder in
            let storage = InMemoryStorageClient()
            let manager = try WatermarkManager(client: storage, stateDirectory: folder, logger: Logger(label: "t"))
            _ = try await storage.acquireLease(sourceID: otx, owner: "someone", ttl: .seconds(60))
            let error = await thrown(StorageClientError.self) {
                try await manager.updateWatermark(sourceID: otx, timestamp: t1, status: .success)
            }
            #expect(error?.code == "lease_required")
            #expect(await manager.pendingCount() == 0)
        }
    }

    @Test func concurrentUpdatesOfOneSourceAreSerialised() async throws {
        let otx = otx
        try await withTemporaryDirectory { folder in
            let storage = InMemoryStorageClient()
            let manager = try WatermarkManager(client: storage, stateDirectory: folder, logger: Logger(label: "t"))
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in 0..<20 {
                    group.addTask {
                        _ = try await manager.updateWatermark(
                            sourceID: otx, timestamp: nil, status: .failed, errorMessage: "run \(i)"
                        )
                    }
                }
                try await group.waitForAll()
            }
            let current = try #require(try await storage.getWatermark(sourceID: otx))
            #expect(current.version == 20)
            #expect(current.consecutiveFailures == 20)
        }
    }
}
