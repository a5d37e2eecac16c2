import Foundation
import Logging
import StorageClient
import WatermarkCore

/// One run of one source: lease -> queued updates -> watermark -> pages -> sink (fsync) -> watermark update ->
/// release.
///
/// The order is what makes collection exactly-once. Records are appended and fsynced page by page (pages that
/// waited for the writer together), and the watermark moves only to a mark whose records are all on disk: at a
/// checkpoint (a page boundary where the source says no record of that instant is left to come), and after the
/// last page. A crash anywhere before an update means the next run starts from the previous mark and the sink's
/// dedup drops what already arrived; a crash after it (even before this process learnt the answer) means the
/// next run starts later and drops the boundary record again. The mark is the newest mark the source's data has
/// passed that is not in the future: a record stamped ahead of this process's clock never holds the mark above
/// records that are still to come.
struct CollectionRunner: Sendable {
    /// The one dependency on the storage: watermarks, the queue of unsent updates, and leases (`withLease`).
    let manager: WatermarkManager
    /// Where the records go (`NDJSONFileSink` by default).
    let sink: any Sink
    /// The lease owner (`INSTANCE_ID`, by default the host name: a restarted process is the same owner).
    let owner: String
    let logger: Logger
    /// `REQUIRE_LEASE`: never collect a source without its lease (several replicas); when the storage cannot
    /// be asked, the run is skipped and retried soon. Off, a single replica collects through an outage.
    var requireLease = false
    /// `LEASE_TTL_SECONDS`: how long a replica's lease on a source lasts without renewal, so how soon another
    /// replica takes over the sources of one that died.
    var leaseTTL = Duration.seconds(60)
    /// `LEASE_RENEW_SECONDS`: how long after taking or renewing it a run renews its lease (at a page boundary).
    var leaseRenewal = Duration.seconds(20)
    var clock: @Sendable () -> Timestamp = Timestamp.now
    /// Checked between pages: `true` once shutdown began.
    var isStopping: @Sendable () async -> Bool = { false }
    /// Told when a run takes its source's lease (`true`) and when the run ends with it held (`false`).
    var leaseHeld: @Sendable (SourceID, Bool) -> Void = { _, _ in }
    /// Returns once shutdown began (`SourceBoard.stopping`): a run waiting for a page is woken to stop. Woken only by
    /// its lease's ticker, it noticed a SIGTERM up to half a renewal period later (10 s by default), or never without
    /// a lease, and a slow source outlasted the grace period.
    var untilStopping: (@Sendable () async -> Void)?

    /// The lease a run of `source` asks for: `leaseTTL`, but never shorter than two of the source's request
    /// timeouts, so a page in flight cannot outlive it.
    func ttl(for source: SourceConfiguration) -> Duration {
        max(source.timeout * 2, leaseTTL)
    }

    /// The longest `Retry-After` a source's refusal schedules its next run by (a day): past it, a clock or header
    /// gone wrong would stop the source for good.
    static let longestRetryAfter: Int64 = 86_400

    /// How far the storage's clock is behind this host's, when it is: read from the run's lease (granted at
    /// `session.grant.storageTime` on the storage's clock) and `clock`, this host's, at the start of the run. The storage
    /// refuses a mark more than its tolerance (5 minutes by default, configurable down to none) ahead of its own clock:
    /// with a storage clock 6 minutes behind, every run's update was refused, the watermark never moved and each run
    /// read a longer window again. The time since the answer arrived is taken off (read before this host's clock, so
    /// that nothing in between counts), so the lag is over-estimated by what came after the storage read its clock (its
    /// write, the answer's way back) and a mark below `now - lag` is never ahead of the storage's clock. Capped by any
    /// lag, a run holds back only marks that recent, read again and dropped as duplicates by the next run.
    static func storageClockLag(_ session: LeaseSession, clock: () -> Timestamp) -> Duration? {
        guard let grant = session.grant else { return nil }
        let sinceAnswer = ContinuousClock.now - grant.answeredAt
        let lag = clock().duration(since: grant.storageTime) - sinceAnswer
        return lag > .zero ? lag : nil
    }

    /// A lag worth a warning: more than a slow answer to the lease request explains.
    static let storageLagWarned = Duration.seconds(5)

    /// How soon a run skipped for want of a lease (storage away, `REQUIRE_LEASE=true`) is tried again.
    static func leaseRetry(for source: SourceConfiguration) -> Duration {
        min(source.interval, .seconds(15))
    }

    func run(_ source: SourceConfiguration, collector: any Collector) async -> RunReport {
        let startedAt = clock()
        var report = RunReport(sourceID: source.id, outcome: .failed, startedAt: startedAt, finishedAt: startedAt)
        var log = logger
        log[metadataKey: "source_id"] = "\(source.id)"
        log.info("collection run started", metadata: ["type": "\(source.typeName)"])

        // 0. The sink as a crash left it: torn writes are undone, so what is read is what is durable.
        let writer: any SinkWriter
        do {
            writer = try await sink.open(source.id)
        } catch {
            return await finishFailed(report, session: nil, message: "\(error)", log: log)
        }

        // 1. The lease (one collector per source across replicas), and under it what an earlier run (killed, or
        //    cut off from the storage) queued, before anything new; released when the run ends, however it ends.
        let ttl = ttl(for: source)
        var held = false
        defer { if held { leaseHeld(source.id, false) } }
        do {
            return try await manager.withLease(
                source.id, owner: owner, ttl: ttl, renewEvery: min(leaseRenewal, ttl / 2), requireLease: requireLease
            ) {
                session in
                if session.lease != nil {
                    held = true
                    leaseHeld(source.id, true)
                }
                if session.withoutLease {
                    report.withoutLease = true
                    log.warning(
                        "storage unreachable: running without a lease (single-replica degraded mode)",
                        metadata: ["error": "\(session.unreachable ?? "unknown")"])
                }
                if let replay = session.replay {
                    log.info(
                        "queued watermark updates replayed",
                        metadata: [
                            "applied": "\(replay.applied)", "dead_lettered": "\(replay.dropped)",
                            "remaining": "\(replay.remaining)",
                            "lease_token": "\(session.lease.map { "\($0.fencingToken)" } ?? "none")",
                        ]
                    )
                }
                return await collect(
                    source, collector: collector, session: &session, writer: writer,
                    report: report, log: log)
            }
        } catch LeaseRefusal.held(let message) {
            report.outcome = .skipped
            report.finishedAt = clock()
            report.errorMessage = message
            report.leaseHeldElsewhere = true
            // Asked again once a lease could have lapsed, not a whole interval later: a lease left by this
            // collector's own previous process under another owner name (a container re-created with a new host
            // name and no INSTANCE_ID) cost an hourly source its hour.
            report.retryAfter = min(source.interval, ttl)
            log.info(
                "collection run skipped: another collector holds the lease",
                metadata: ["detail": "\(message)", "retry_in_s": "\(report.retryAfter!.components.seconds)"])
            return report
        } catch LeaseRefusal.storageUnreachable(let error) {
            report.outcome = .skipped
            report.finishedAt = clock()
            report.errorMessage = "storage unreachable: REQUIRE_LEASE=true, not collecting without the lease"
            report.retryAfter = Self.leaseRetry(for: source)
            log.warning(
                "collection run skipped: no lease while the storage is unreachable (REQUIRE_LEASE=true)",
                metadata: ["error": "\(error)", "retry_in_s": "\(report.retryAfter!.components.seconds)"]
            )
            return report
        } catch {
            return await finishFailed(report, session: nil, message: "\(error)", log: log)
        }
    }

    /// Steps 2 to 5 of a run, under its lease session.
    private func collect(
        _ source: SourceConfiguration, collector: any Collector, session: inout LeaseSession,
        writer: any SinkWriter, report: RunReport, log: Logger
    ) async -> RunReport {
        var report = report
        let startedAt = report.startedAt
        // 2. Where to start.
        let previous: Timestamp?
        do {
            previous = try await session.getWatermark()?.lastSuccessfulTimestamp
        } catch {
            return await finishFailed(
                report, session: session, message: "cannot read the watermark: \(error)", log: log)
        }
        report.watermark = previous
        let start = previous ?? startedAt.adding(.zero - source.lookback)
        let since = start.adding(.zero - source.overlap)

        // 3. Pages, each appended and fsynced, with checkpoints on the way.
        var marks = MarkTracker(committed: previous ?? start)
        let storageLag = Self.storageClockLag(session, clock: clock)
        if let storageLag, storageLag > Self.storageLagWarned {
            log.warning(
                "the storage's clock is behind this host's: the watermark stays below the storage's clock; fix the clocks",
                metadata: ["behind_seconds": "\(storageLag.components.seconds)"])
        }
        // The instant no mark may pass: this host's clock, or the storage's when that is behind.
        let markCeiling: @Sendable () -> Timestamp = { [clock] in
            let now = clock()
            return storageLag.map { now.adding(.zero - $0) } ?? now
        }
        var sinceCheckpoint = (records: Int64(0), pages: 0, at: clock())
        do {
            var pages = 0
            // Pages are fetched (and parsed) by a child task while earlier ones are written and fsynced, up to
            // `pagesAhead` waiting; the pages waiting when the writer is free are written together (one append,
            // one fsync). Only pages whose records are on disk ever move the mark, so reading ahead changes
            // nothing of what is promised.
            let queue = PageQueue(limit: Self.pagesAhead(source))
            let abandoned: Bool
            if await isStopping() || Task.isCancelled {
                abandoned = true  // stopping before the first page fetches nothing
            } else {
                abandoned = try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask { await Self.fetchAll(from: collector, since: since, into: queue) }
                    // A page can take longer than the lease lasts (a source retrying for minutes): the wait for it is
                    // woken twice per renewal period, to renew. Renewed only between pages, the lease ran out meanwhile,
                    // another replica took the source, and on a slow source two replicas could take it from each
                    // other for ever, every run failing.
                    if !session.withoutLease {
                        let period = min(leaseRenewal, ttl(for: source) / 2) / 2
                        group.addTask {
                            while (try? await Task.sleep(for: max(period, .milliseconds(10)))) != nil { queue.tick() }
                        }
                    }
                    if let untilStopping {
                        group.addTask {
                            await untilStopping()
                            queue.tick()
                        }
                    }
                    defer {
                        queue.close()
                        group.cancelAll()
                    }
                    while true {
                        if await isStopping() || Task.isCancelled { return true }
                        try await session.renewIfDue()
                        guard let batch = try await queue.takeAll() else { return false }
                        // Renewed (or found taken by another replica, which fails the run) before anything of the
                        // page is written.
                        try await session.renewIfDue()
                        if batch.isEmpty { continue }
                        for page in batch {
                            for warning in page.warnings {
                                log.warning("source answer is off", metadata: ["detail": "\(warning)"])
                            }
                        }
                        let records = batch.count == 1 ? batch[0].records : batch.flatMap(\.records)
                        let fresh = try await writer.write(records, collectedAt: clock())
                        report.duplicatesDropped += Int64(records.count - fresh.count)
                        // Every page of the batch is on disk now: each is committed, counted and may checkpoint in
                        // turn, as if written alone. `fresh` keeps the order of `records`, so each page's share of it
                        // is the run of fresh keys found among its own records.
                        var next = 0
                        for page in batch {
                            var freshInPage = 0
                            for record in page.records where next < fresh.count && fresh[next].key == record.key {
                                next += 1
                                freshInPage += 1
                            }
                            for file in try collector.pageCommitted(page) {
                                report.rejectedFiles += 1
                                var metadata: Logger.Metadata = ["file": "\(file.name)", "reason": "\(file.reason)"]
                                metadata[file.movedTo == nil ? "detail" : "moved_to"] =
                                    "\(file.movedTo ?? file.leftInPlace ?? "")"
                                log.error(
                                    file.movedTo == nil
                                        ? "file rejected: left in the drop folder"
                                        : "file rejected: moved to the rejected folder", metadata: metadata)
                            }
                            pages += 1
                            report.recordsCollected += Int64(freshInPage)
                            sinceCheckpoint.records += Int64(freshInPage)
                            sinceCheckpoint.pages += 1
                            marks.add(page, now: markCeiling())
                            log.debug(
                                "page collected",
                                metadata: [
                                    "page": "\(pages)", "records": "\(freshInPage)", "more": "\(page.next != nil)",
                                    "written_with": "\(batch.count - 1)",
                                ]
                            )
                            if page.next != nil, let checkpoint = marks.checkpoint, checkpoint > marks.committed,
                                Self.checkpointDue(
                                    source, pages: sinceCheckpoint.pages,
                                    elapsed: clock().duration(since: sinceCheckpoint.at))
                            {
                                await Self.costsTimeOnly(
                                    "checkpoint: the sink's index not committed, its keys are indexed again from the files",
                                    log: log
                                ) { try await writer.checkpoint() }
                                let result = try await session.commit(
                                    checkpoint, recordsCollected: sinceCheckpoint.records)
                                marks.committed = checkpoint
                                report.checkpoints += 1
                                report.watermark = checkpoint
                                sinceCheckpoint = (0, 0, clock())
                                log.info(
                                    "checkpoint: watermark moved mid-run",
                                    metadata: [
                                        "watermark": "\(checkpoint)", "pages": "\(pages)",
                                        "queued": "\(result.isQueued)",
                                    ]
                                )
                            }
                        }
                    }
                }
            }
            await finish(writer, log: log)
            if abandoned {
                report.outcome = .abandoned
                report.finishedAt = clock()
                log.notice(
                    "collection run abandoned at shutdown; the watermark stays at its last checkpoint",
                    metadata: ["records": "\(report.recordsCollected)", "pages": "\(pages)"]
                )
                return report
            }
        } catch {
            await finish(writer, log: log)
            if case .rateLimited(_, let seconds)? = error as? CollectorError, seconds > 0 {
                // The source said when to come back (longer than a run waits): then, not a whole interval later
                // (a daily source told to wait ten minutes), nor sooner (every run another refusal).
                report.retryAfter = .seconds(min(seconds, Self.longestRetryAfter))
            }
            return await finishFailed(
                report, session: session, message: "\(error)", log: log, recordsSinceCheckpoint: sinceCheckpoint.records
            )
        }

        // 4. The new mark: never backwards, never past what is on disk, never in the future.
        let mark = max(marks.committed, marks.newest ?? marks.committed)
        if let future = marks.newestInFuture {
            log.warning(
                "records stamped in the future: the watermark stays at the newest mark not in the future",
                metadata: ["future_mark": "\(future)", "watermark": "\(mark)", "now": "\(markCeiling())"]
            )
        }
        do {
            let result = try await session.commit(mark, recordsCollected: sinceCheckpoint.records)
            report.updateQueued = result.isQueued
        } catch {
            // Refused for the lease (another replica took the source over): the failure would be refused too, and
            // the source is no longer this run's to mark. Refused for anything else (a regression after an operator
            // moved the watermark on, a rule), the run failed, and the storage says so rather than the last success.
            return await finishFailed(
                report, session: session, message: "watermark update refused: \(error)", log: log,
                recordFailure: (error as? StorageClientError)?.isLeaseRefusal != true)
        }
        // 5. The lease is released by the session when this returns.
        report.outcome = .success
        report.watermark = mark
        report.finishedAt = clock()
        log.info(
            "collection run finished",
            metadata: [
                "status": "success", "records": "\(report.recordsCollected)",
                "duplicates": "\(report.duplicatesDropped)", "watermark": "\(mark)",
                "checkpoints": "\(report.checkpoints)", "rejected_files": "\(report.rejectedFiles)",
                "duration_ms": "\(report.duration.milliseconds)", "queued": "\(report.updateQueued)",
            ]
        )
        return report
    }

    /// How many fetched pages may wait for the writer, so the pages of one write at most: two, but never more than
    /// the source's `checkpoint_pages`, since a crash between a write and its checkpoints makes the next run read
    /// the pages of that write again (a source that checkpoints every page is written page by page).
    static func pagesAhead(_ source: SourceConfiguration) -> Int {
        source.checkpointPages > 0 ? min(2, source.checkpointPages) : 2
    }

    /// Fetches the pages of a run one after the other into `queue`, until the last one, an error, or the run
    /// closing the queue.
    private static func fetchAll(from collector: any Collector, since: Timestamp, into queue: PageQueue) async {
        var cursor: String?
        var previous: (next: String?, count: Int, first: RecordKey?, last: RecordKey?)?
        // Each page of the run (its size, first and last record): how often it came, and the cursors it led to. A
        // page comes again when it answers a request asked again after a failure (`retried`), or leads where it led
        // before (a source whose cursors go round in a circle). A failure that repeats at the same place, asked again
        // from where the source can only go back to (a TAXII server without date headers: the run's start; a whole
        // page of one date_added: that page), or a circle, brought the same pages again and again, the run never
        // ending: a page that comes a third time fails the run. Pages alike that lead elsewhere (two drop files with
        // the same records) are fine.
        var pagesSeen: [PageSignature: (times: Int, nexts: Set<String?>)] = [:]
        do {
            repeat {
                let page = try await collector.fetchPage(since: since, cursor: cursor)
                // Nor does a page send the run back to the cursor it was asked with: the check below leaves empty
                // pages out, and a source answering `more` with no objects and the same `next` looped the run for
                // good (its lease renewed at every page).
                if page.records.isEmpty, let next = page.next, next == cursor {
                    throw CollectorError.malformed(
                        "the source answered an empty page that says more follows at the same place: it does not page "
                            + "as it says it does")
                }
                // No two pages of a run hold the same records: a source that answers its page again for the next
                // one (a TAXII server that ignores `next` yet keeps saying `more`) would be asked forever, each
                // page dropped as duplicates, the run never ending and never failing.
                let seen = (page.next, page.records.count, page.records.first?.key, page.records.last?.key)
                if let previous, !page.records.isEmpty, previous == seen {
                    throw CollectorError.malformed(
                        "the source answered the same \(page.records.count) records again for the next page: it does "
                            + "not page as it says it does")
                }
                previous = seen
                if let first = page.records.first?.key, let last = page.records.last?.key {
                    let signature = PageSignature(count: page.records.count, first: first, last: last)
                    var history = pagesSeen[signature] ?? (0, [])
                    if history.times == 0 || page.retried || history.nexts.contains(page.next) { history.times += 1 }
                    history.nexts.insert(page.next)
                    pagesSeen[signature] = history
                    if history.times > 2 {
                        throw CollectorError.malformed(
                            "the source answered the same \(page.records.count) records a third time in this run (a "
                                + "request that keeps failing at the same place, or cursors that go round in a "
                                + "circle): the run does not get past them"
                        )
                    }
                }
                cursor = page.next
                try await queue.put(page)
            } while cursor != nil
            queue.finish()
        } catch {
            queue.fail(error)
        }
    }

    /// A checkpoint is due after `checkpointPages` pages or `checkpointInterval`, whichever comes first.
    static func checkpointDue(_ source: SourceConfiguration, pages: Int, elapsed: Duration) -> Bool {
        (source.checkpointPages > 0 && pages >= source.checkpointPages)
            || (source.checkpointInterval > .zero && elapsed >= source.checkpointInterval)
    }

    /// Records a failed run (the watermark stays) and releases the lease.
    /// Ends the run's use of the sink. A failure costs time only (the NDJSON sink's dedup index is rebuilt from
    /// its files by the next run).
    private func finish(_ writer: any SinkWriter, log: Logger) async {
        await Self.costsTimeOnly(
            "sink not finished cleanly: the next run redoes the work from what the sink holds", log: log
        ) { try await writer.finish() }
    }

    /// Runs a step of the sink whose failure costs time only, never a record: logged as `warning`, not thrown.
    private static func costsTimeOnly(
        _ warning: Logger.Message, log: Logger, _ step: () async throws -> Void
    ) async {
        do {
            try await step()
        } catch {
            log.warning(warning, metadata: ["error": "\(error)"])
        }
    }

    /// Records a failed run (the watermark stays), fenced with the session's lease when there is one.
    private func finishFailed(
        _ report: RunReport, session: LeaseSession?, message: String, log: Logger, recordFailure: Bool = true,
        recordsSinceCheckpoint: Int64? = nil
    ) async -> RunReport {
        var report = report
        report.outcome = .failed
        report.errorMessage = message
        if recordFailure {
            do {
                // What went wrong may quote a feed's bytes: a NUL in it would have the failure refused, not recorded.
                let text = WatermarkUpdate.errorMessage(message, limit: 4000)
                let records = recordsSinceCheckpoint ?? report.recordsCollected
                let result: WatermarkUpdateResult
                if let session {
                    result = try await session.recordFailure(text, recordsCollected: records)
                } else {
                    result = try await manager.updateWatermark(
                        sourceID: report.sourceID, timestamp: nil, status: .failed, errorMessage: text,
                        recordsCollected: records)
                }
                report.updateQueued = result.isQueued
            } catch {
                log.error("cannot record the failed run", metadata: ["error": "\(error)"])
            }
        }
        report.finishedAt = clock()
        var metadata: Logger.Metadata = [
            "status": "failed", "error": "\(message)", "records": "\(report.recordsCollected)",
            "duration_ms": "\(report.duration.milliseconds)",
        ]
        if let retry = report.retryAfter { metadata["retry_in_s"] = "\(retry.components.seconds)" }
        log.error("collection run failed", metadata: metadata)
        return report
    }
}

extension Duration {
    var secondsDouble: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}

/// A page as `fetchAll` tells it from another: how many records, the first and the last.
private struct PageSignature: Hashable {
    var count: Int
    var first: RecordKey
    var last: RecordKey
}
