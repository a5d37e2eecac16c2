import Foundation
import Logging
import StorageClient
import TestSupport
import Testing
import WatermarkCore

@testable import CollectionService

/// A source whose pages carry the source's marks, as TAXII gives them: the first and last `date_added` of each
/// page, ascending across pages. Fails at `failAtPage` (a crash or an outage in the middle of a long run).
struct MarkedPagesCollector: Collector {
    struct Page: Sendable {
        var records: [CollectedRecord]
        var first: Timestamp
        var last: Timestamp
    }

    let pages: [Page]
    var failAtPage: Int?

    func fetchPage(since: Timestamp, cursor: String?) async throws(CollectorError) -> CollectorPage {
        let index = cursor.flatMap(Int.init) ?? 0
        if index == failAtPage { throw .transport(url: "http://source/taxii", detail: "connection reset") }
        let page = pages[index]
        return CollectorPage(
            records: page.records.filter { $0.mark > since }, highWaterMark: page.last, firstMark: page.first,
            next: index + 1 < pages.count ? String(index + 1) : nil
        )
    }
}

@Suite("Exactly once: crashes, clocks, outages, restarts")
struct ExactlyOnceTests {
    /// Every complete JSON line of the sink's files, a last line without its newline included (what a reader of
    /// the files, not the service, would count).
    static func linesOnDisk(_ dir: String, source: String = "feed") throws -> [String] {
        let folder = dir + "/" + source
        var ids: [String] = []
        for name in try FileManager.default.contentsOfDirectory(atPath: folder).sorted() where name.hasSuffix(".ndjson")
        {
            let data = try Data(contentsOf: URL(fileURLWithPath: folder + "/" + name))
            for line in data.split(separator: UInt8(ascii: "\n")) {
                if let object = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any],
                    let id = object["id"] as? String
                {
                    ids.append(id)
                }
            }
        }
        return ids
    }

    /// A crash can cut the sink file at any byte. Whatever byte the last two lines were cut at, a new run
    /// (the watermark never moved: it moves only after the fsync) leaves each record exactly once.
    @Test func aSinkCutAtEveryByteOfItsLastTwoLinesEndsWithEachRecordOnce() async throws {
        let pages = [
            [record("a", "2026-11-25T00:00:00Z"), record("b", "2026-11-25T01:00:00Z")],
            [record("c", "2026-11-25T02:00:00Z"), record("d", "2026-11-25T03:00:00Z")],
        ]
        let original = try RunnerFixture()
        defer { removeTemporary(original.dir) }
        _ = await original.runner.run(original.source, collector: ScriptedCollector(pages: pages))
        let file = try #require(original.sink.files().first)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: original.dir + "/feed/" + file))
        let newlines = bytes.indices.filter { bytes[$0] == UInt8(ascii: "\n") }
        try #require(newlines.count == 4)
        let lastTwoStart = newlines[1] + 1
        var cuts = 0
        for cut in lastTwoStart...bytes.count {
            let f = try RunnerFixture()
            defer { removeTemporary(f.dir) }
            try FileManager.default.createDirectory(atPath: f.dir + "/feed", withIntermediateDirectories: true)
            try bytes.prefix(cut).write(to: URL(fileURLWithPath: f.dir + "/feed/" + file))
            let report = await f.runner.run(f.source, collector: ScriptedCollector(pages: pages))
            #expect(report.outcome == .success, "cut at \(cut): \(report.errorMessage ?? "")")
            #expect(try Self.linesOnDisk(f.dir) == ["a", "b", "c", "d"], "cut at byte \(cut) of \(bytes.count)")
            #expect(f.ids() == ["a", "b", "c", "d"], "cut at byte \(cut)")
            cuts += 1
        }
        #expect(cuts == bytes.count - lastTwoStart + 1)
    }

    /// A record stamped in the future must not cost a later record: records stamped before the run's end that
    /// arrive after it are still collected, and the future one is read again and dropped by dedup.
    @Test func aFutureDatedRecordNeverHidesALaterRecord() async throws {
        let clock = ManualClock(ts("2026-11-27T12:00:00Z"))
        let f = try RunnerFixture(clock: { clock.now() })
        defer { removeTemporary(f.dir) }
        var feed = [record("a", "2026-11-27T10:00:00Z"), record("future", "2026-11-29T00:00:00Z")]
        let first = await f.runner.run(f.source, collector: ScriptedCollector(pages: [feed]))
        #expect(first.outcome == .success && first.recordsCollected == 2)
        let mark = try #require(try await f.storage.getWatermark(sourceID: f.source.id)?.lastSuccessfulTimestamp)
        #expect(mark == ts("2026-11-27T10:00:00Z"), "the newest mark that is not in the future")

        // Stamped before the first run ended, published after it.
        feed.append(record("late", "2026-11-27T11:30:00Z"))
        clock.advance(.seconds(3600))
        let second = await f.runner.run(f.source, collector: ScriptedCollector(pages: [feed]))
        #expect(second.recordsCollected == 1 && second.duplicatesDropped == 2)
        #expect(f.ids() == ["a", "future", "late"])
        #expect(
            try await f.storage.getWatermark(sourceID: f.source.id)?.lastSuccessfulTimestamp
                == ts("2026-11-27T11:30:00Z"))

        // Once the clock passes the future record, the mark follows it.
        clock.advance(.seconds(2 * 86_400))
        _ = await f.runner.run(f.source, collector: ScriptedCollector(pages: [feed]))
        #expect(
            try await f.storage.getWatermark(sourceID: f.source.id)?.lastSuccessfulTimestamp
                == ts("2026-11-29T00:00:00Z"))
        #expect(f.ids() == ["a", "future", "late"])
    }

    /// A storage whose clock is behind the collector's by more than its tolerance of marks ahead of it (5 minutes)
    /// refused every run's update: the watermark never moved, each run failed and read a longer window again. The mark
    /// now stays below the storage's clock (read from the run's lease): runs succeed, and nothing is lost or repeated.
    @Test func aStorageClockBehindTheCollectorsStillTakesTheMark() async throws {
        let clock = ManualClock(ts("2026-11-27T12:00:00Z"))
        // No tolerance at all: a mark even half a second past the storage's clock is refused.
        let storage = InMemoryStorageClient(
            policy: WatermarkPolicy(futureTolerance: .zero), clock: { clock.now().adding(.seconds(-600)) })
        let f = try RunnerFixture(clock: { clock.now() }, storage: storage)
        defer { removeTemporary(f.dir) }
        var feed = [
            record("a", "2026-11-27T11:40:00Z"), record("b", "2026-11-27T11:59:00Z"),
            record("edge", "2026-11-27T11:50:00.5Z"),
        ]
        let first = await f.runner.run(f.source, collector: ScriptedCollector(pages: [feed]))
        #expect(first.outcome == .success && first.recordsCollected == 3, "\(first.errorMessage ?? "")")
        // The storage's clock reads 11:50: "b" and "edge" are past it and will be read again.
        #expect(
            try await storage.getWatermark(sourceID: f.source.id)?.lastSuccessfulTimestamp == ts("2026-11-27T11:40:00Z")
        )

        feed.append(record("c", "2026-11-27T12:30:00Z"))
        clock.advance(.seconds(3600))
        let second = await f.runner.run(f.source, collector: ScriptedCollector(pages: [feed]))
        #expect(second.outcome == .success && second.recordsCollected == 1, "\(second.errorMessage ?? "")")
        #expect(
            try await storage.getWatermark(sourceID: f.source.id)?.lastSuccessfulTimestamp == ts("2026-11-27T12:30:00Z")
        )
        #expect(f.ids() == ["a", "b", "edge", "c"])
    }

    /// A lag under a minute matters too where the tolerance is shorter: 45 s behind with 30 s of tolerance.
    @Test func aStorageClockLessThanAMinuteBehindAShortToleranceStillTakesTheMark() async throws {
        let clock = ManualClock(ts("2026-11-27T12:00:00Z"))
        let storage = InMemoryStorageClient(
            policy: WatermarkPolicy(futureTolerance: .seconds(30)), clock: { clock.now().adding(.seconds(-45)) })
        let f = try RunnerFixture(clock: { clock.now() }, storage: storage)
        defer { removeTemporary(f.dir) }
        let feed = [record("a", "2026-11-27T11:59:00Z"), record("b", "2026-11-27T11:59:50Z")]
        let run = await f.runner.run(f.source, collector: ScriptedCollector(pages: [feed]))
        #expect(run.outcome == .success && run.recordsCollected == 2, "\(run.errorMessage ?? "")")
        #expect(
            try await storage.getWatermark(sourceID: f.source.id)?.lastSuccessfulTimestamp == ts("2026-11-27T11:59:00Z")
        )
    }

    /// Dedup must not assume that newer day files hold newer marks: a future-dated record written on one day and
    /// a late, older record written the next day must not let the future record be written again.
    @Test func dedupDoesNotDependOnTheOrderOfDayFiles() async throws {
        let f = try RunnerFixture(now: ts("2026-11-27T12:00:00Z"))
        defer { removeTemporary(f.dir) }
        try f.sink.append([record("future", "2026-11-28T00:00:00Z")], collectedAt: ts("2026-11-26T23:59:00Z"))
        try f.sink.append([record("old", "2026-11-01T00:00:00Z")], collectedAt: ts("2026-11-27T00:01:00Z"))
        let index = try DedupIndex(path: f.dir + "/.state/dedup/feed.sqlite")
        try index.catchUp(with: f.sink)
        #expect(try index.known([RecordKey(id: "future", version: "2026-11-28T00:00:00Z")]).count == 1)
        _ = try await f.storage.updateWatermark(
            sourceID: f.source.id, timestamp: ts("2026-11-26T00:00:00Z"), status: .success, errorMessage: nil,
            recordsCollected: nil, options: UpdateOptions())
        let report = await f.runner.run(
            f.source, collector: ScriptedCollector(pages: [[record("future", "2026-11-28T00:00:00Z")]]))
        #expect(report.recordsCollected == 0 && report.duplicatesDropped == 1)
        #expect(f.ids().filter { $0 == "future" }.count == 1)
    }

    /// A killed run leaves its live lease and a queued update behind. The restarted collector (the same owner)
    /// takes the lease at once and delivers the queued update under it, in order: no record count or history
    /// entry is lost.
    @Test func aRestartedCollectorResumesItsLeaseAndDeliversWhatItQueued() async throws {
        let logs = LogRecorder()
        let f = try RunnerFixture(owner: "collector-host", logger: logs.logger())
        defer { removeTemporary(f.dir) }
        // The run that was killed: it held the lease and, the storage being away, queued its update.
        _ = try await f.storage.acquireLease(sourceID: f.source.id, owner: "collector-host", ttl: .seconds(300))
        await f.storage.setAvailable(false)
        let queued = try await f.manager.updateWatermark(
            sourceID: f.source.id, timestamp: ts("2026-11-25T00:00:00Z"), status: .success, recordsCollected: 7)
        #expect(queued.isQueued)
        await f.storage.setAvailable(true)

        let report = await f.runner.run(
            f.source, collector: ScriptedCollector(pages: [[record("b", "2026-11-26T00:00:00Z")]]))
        #expect(report.outcome == .success, "\(report.errorMessage ?? "")")
        let (pending, letters) = (await f.manager.pendingCount(), await f.manager.deadLetters())
        #expect(pending == 0 && letters.isEmpty)
        let history = try await f.storage.history(sourceID: f.source.id, limit: 10)
        #expect(history.map(\.recordsCollected) == [1, 7])
        #expect(history.map(\.lastSuccessfulTimestamp) == [ts("2026-11-26T00:00:00Z"), ts("2026-11-25T00:00:00Z")])
        #expect(!logs.all.contains { $0.message.contains("dropped") })

        // Another replica (another owner) is still kept out while the lease lives.
        let other = CollectionRunner(
            manager: f.manager, sink: NDJSONFileSink(dataDirectory: f.dir), owner: "other-host", logger: Logger.quiet)
        _ = try await f.storage.acquireLease(sourceID: f.source.id, owner: "collector-host", ttl: .seconds(300))
        let skipped = await other.run(f.source, collector: ScriptedCollector(pages: []))
        #expect(skipped.outcome == .skipped && !skipped.notCollected, "collected by the lease's holder")
    }

    /// With REQUIRE_LEASE=true a source is never collected without its lease: storage away means skip and retry.
    @Test func requireLeaseSkipsASourceWhileTheStorageCannotGrantALease() async throws {
        let f = try RunnerFixture(clock: { ts("2026-11-27T00:00:00Z") }, requireLease: true)
        defer { removeTemporary(f.dir) }
        await f.storage.setAvailable(false)
        let report = await f.runner.run(
            f.source, collector: ScriptedCollector(pages: [[record("a", "2026-11-26T00:00:00Z")]]))
        #expect(report.outcome == .skipped && !report.withoutLease)
        #expect(report.notCollected, "--once exits non-zero: nobody collected the source")
        #expect(report.retryAfter == .seconds(15))
        #expect(report.errorMessage?.contains("REQUIRE_LEASE") == true)
        #expect(!FileManager.default.fileExists(atPath: f.dir + "/feed"), "nothing collected")
        #expect(await f.manager.pendingCount() == 0)

        await f.storage.setAvailable(true)
        let retry = await f.runner.run(
            f.source, collector: ScriptedCollector(pages: [[record("a", "2026-11-26T00:00:00Z")]]))
        #expect(retry.outcome == .success && retry.recordsCollected == 1)
    }

    /// A long run moves the watermark at page boundaries where no record of the boundary instant is left to
    /// come, so a crash costs one checkpoint interval of re-reading, never a record.
    @Test func checkpointsMoveTheMarkOnlyPastCompleteInstantsAndACrashResumesThere() async throws {
        let f = try RunnerFixture()
        defer { removeTemporary(f.dir) }
        var source = f.source
        source.checkpointPages = 1
        let pages: [MarkedPagesCollector.Page] = [
            .init(
                records: [record("a", "2026-11-26T01:00:00Z"), record("b", "2026-11-26T02:00:00Z")],
                first: ts("2026-11-26T01:00:00Z"), last: ts("2026-11-26T02:00:00Z")),
            .init(
                records: [record("c", "2026-11-26T03:00:00Z"), record("d", "2026-11-26T03:00:00Z")],
                first: ts("2026-11-26T03:00:00Z"), last: ts("2026-11-26T03:00:00Z")),
            // The instant 03:00 goes on over the page boundary: no checkpoint at 03:00.
            .init(
                records: [record("e", "2026-11-26T03:00:00Z"), record("f", "2026-11-26T04:00:00Z")],
                first: ts("2026-11-26T03:00:00Z"), last: ts("2026-11-26T04:00:00Z")),
            .init(
                records: [record("g", "2026-11-26T05:00:00Z")],
                first: ts("2026-11-26T05:00:00Z"), last: ts("2026-11-26T05:00:00Z")),
        ]
        let crashed = await f.runner.run(source, collector: MarkedPagesCollector(pages: pages, failAtPage: 3))
        #expect(crashed.outcome == .failed && crashed.checkpoints == 1)
        let stored = try #require(try await f.storage.getWatermark(sourceID: f.source.id))
        #expect(stored.lastSuccessfulTimestamp == ts("2026-11-26T02:00:00Z"))
        let history = try await f.storage.history(sourceID: f.source.id, limit: 10)
        #expect(history.map(\.status) == [.failed, .success])
        #expect(history.map(\.recordsCollected) == [2, 4])

        let resumed = await f.runner.run(source, collector: MarkedPagesCollector(pages: pages))
        #expect(resumed.outcome == .success)
        // Only what came after the checkpoint was asked for again, and dropped as already written.
        #expect(resumed.duplicatesDropped == 4 && resumed.recordsCollected == 1)
        #expect(f.ids() == ["a", "b", "c", "d", "e", "f", "g"])
        #expect(
            try await f.storage.getWatermark(sourceID: f.source.id)?.lastSuccessfulTimestamp
                == ts("2026-11-26T05:00:00Z"))
    }

    /// Pages written together (the writer busy while the next pages were fetched) still count each page's own
    /// new records: every page repeats one record of the page before, which the run drops.
    @Test func pagesWrittenTogetherCountOnlyTheirNewRecords() async throws {
        let pages: [MarkedPagesCollector.Page] = (0..<8).map { index in
            let time = ts("2026-11-26T0\(index):00:00Z")
            let repeated =
                index == 0 ? [] : [record("r\(index - 1)", ts("2026-11-26T0\(index - 1):00:00Z").description)]
            return .init(records: repeated + [record("r\(index)", time.description)], first: time, last: time)
        }
        for everyPages in [0, 3] {
            try await run(pages, checkpointingEvery: everyPages) { report, runs, f in
                #expect(report.outcome == .success)
                #expect(report.recordsCollected == 8 && report.duplicatesDropped == 7, "every \(everyPages) pages")
                #expect(runs.compactMap(\.recordsCollected).reduce(0, +) == 8)
                #expect(f.ids() == (0..<8).map { "r\($0)" })
            }
        }
    }

    /// One run of `pages` that checkpoints every `everyPages` pages (no timer), then `check` of its report and
    /// of the runs the storage recorded.
    private func run(
        _ pages: [MarkedPagesCollector.Page], checkpointingEvery everyPages: Int,
        check: (RunReport, [WatermarkRun], RunnerFixture) throws -> Void
    ) async throws {
        let f = try RunnerFixture()
        defer { removeTemporary(f.dir) }
        var source = f.source
        source.checkpointPages = everyPages
        source.checkpointInterval = .zero
        let report = await f.runner.run(source, collector: MarkedPagesCollector(pages: pages))
        try check(report, try await f.storage.history(sourceID: f.source.id, limit: 50), f)
    }

    @Test func checkpointsAreRateLimitedAndCanBeTurnedOff() async throws {
        let pages: [MarkedPagesCollector.Page] = (0..<6).map { index in
            let time = ts("2026-11-26T0\(index):00:00Z")
            return .init(records: [record("r\(index)", time.description)], first: time, last: time)
        }
        for (everyPages, expected) in [(0, 0), (1, 4), (2, 2)] {
            try await run(pages, checkpointingEvery: everyPages) { report, runs, _ in
                #expect(report.outcome == .success && report.checkpoints == expected, "every \(everyPages) pages")
                #expect(runs.count == expected + 1)
                #expect(runs.compactMap(\.recordsCollected).reduce(0, +) == 6)
            }
        }
    }

    /// A run that collected a file and died before moving the mark: the file is in the ledger and is not read
    /// again, yet the next run's mark still reaches the file's newest record.
    @Test func theMarkReachesFilesCollectedByARunThatDiedBeforeItsUpdate() async throws {
        let f = try RunnerFixture()
        defer { removeTemporary(f.dir) }
        let (inbox, collector) = try f.inbox()
        try "{\"id\":\"a\",\"modified\":\"2026-11-26T05:00:00Z\"}\n".write(
            toFile: inbox + "/a.ndjson", atomically: true, encoding: .utf8)
        // The dead run: page fetched, written, fsynced, recorded in the ledger; no watermark update.
        let page = try await collector.fetchPage(since: ts("2026-11-20T00:00:00Z"), cursor: nil)
        try f.sink.append(page.records, collectedAt: ts("2026-11-26T06:00:00Z"))
        _ = try collector.pageCommitted(page)

        let report = await f.runner.run(f.source, collector: collector)
        #expect(report.outcome == .success && report.recordsCollected == 0 && report.duplicatesDropped == 0)
        #expect(
            try await f.storage.getWatermark(sourceID: f.source.id)?.lastSuccessfulTimestamp
                == ts("2026-11-26T05:00:00Z"))
    }

    /// A drop folder is an inbox: a file dropped after the watermark passed its records' times is collected,
    /// an unreadable one is moved aside and counted, and nothing is collected twice.
    @Test func aLateFileWithOlderRecordsIsCollectedAndABadFileDoesNotStopTheFolder() async throws {
        let f = try RunnerFixture()
        defer { removeTemporary(f.dir) }
        let (inbox, collector) = try f.inbox()
        try "{\"id\":\"new\",\"modified\":\"2026-11-26T00:00:00Z\"}\n".write(
            toFile: inbox + "/b.ndjson", atomically: true, encoding: .utf8)
        #expect(await f.runner.run(f.source, collector: collector).recordsCollected == 1)
        #expect(
            try await f.storage.getWatermark(sourceID: f.source.id)?.lastSuccessfulTimestamp
                == ts("2026-11-26T00:00:00Z"))

        try "{\"id\":\"old\",\"modified\":\"2026-10-01T00:00:00Z\"}\n".write(
            toFile: inbox + "/a-late.ndjson", atomically: true, encoding: .utf8)
        try "[{\"id\":\"no-time\"}]".write(toFile: inbox + "/c-bad.json", atomically: true, encoding: .utf8)
        let second = await f.runner.run(f.source, collector: collector)
        #expect(second.outcome == .success && second.recordsCollected == 1 && second.rejectedFiles == 1)
        #expect(f.ids() == ["new", "old"])
        #expect(FileManager.default.fileExists(atPath: inbox + "/.rejected/c-bad.json.reason"))
        let third = await f.runner.run(f.source, collector: collector)
        #expect(third.recordsCollected == 0 && third.duplicatesDropped == 0 && third.rejectedFiles == 0)
        #expect(
            try await f.storage.getWatermark(sourceID: f.source.id)?.lastSuccessfulTimestamp
                == ts("2026-11-26T00:00:00Z"))
    }
}
