import Foundation
import Logging
import StorageClient
import WatermarkCore

/// One run of one source: lease -> queued updates -> watermark -> pages -> sink (fsync) -> watermark update ->
/// release.
///
/// The order is what makes collection exactly-once. Records are appended and fsynced page by page, and the
/// watermark moves only to a mark whose records are all on disk: at a checkpoint (a page boundary where the
/// source says no record of that instant is left to come), and after the last page. A crash anywhere before an
/// update means the next run starts from the previous mark and the sink's dedup drops what already arrived; a
/// crash after it (even before this process learnt the answer) means the next run starts later and drops the
/// boundary record again. The mark is the newest mark the source's data has passed that is not in the future:
/// a record stamped ahead of this process's clock never holds the mark above records that are still to come.
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

    /// The lease a run of `source` asks for: `leaseTTL`, but never shorter than two of the source's request
    /// timeouts, so a page in flight cannot outlive it.
    func ttl(for source: SourceConfiguration) -> Duration {
        max(source.timeout * 2, leaseTTL)
    }

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
            log.info("collection run skipped: another collector holds the lease", metadata: ["detail": "\(message)"])
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
        var sinceCheckpoint = (records: Int64(0), pages: 0, at: clock())
        do {
            var pages = 0
            // The next page is fetched (and parsed) while the current one is written and fsynced: only pages
            // whose records are on disk ever move the mark, so reading ahead changes nothing of what is promised.
            var upcoming: CollectorPage?
            repeat {
                if await isStopping() || Task.isCancelled {
                    report.outcome = .abandoned
                    report.finishedAt = clock()
                    log.notice(
                        "collection run abandoned at shutdown; the watermark stays at its last checkpoint",
                        metadata: ["records": "\(report.recordsCollected)", "pages": "\(pages)"]
                    )
                    await finish(writer, log: log)
                    return report
                }
                try await session.renewIfDue()
                let page: CollectorPage
                if let upcoming {
                    page = upcoming
                } else {
                    page = try await collector.fetchPage(since: since, cursor: nil)
                }
                async let following = Self.fetch(after: page, since: since, from: collector)
                pages += 1
                for warning in page.warnings { log.warning("source answer is off", metadata: ["detail": "\(warning)"]) }
                for file in page.rejected {
                    report.rejectedFiles += 1
                    log.error(
                        "file rejected: moved to the rejected folder",
                        metadata: ["file": "\(file.name)", "moved_to": "\(file.movedTo)", "reason": "\(file.reason)"]
                    )
                }
                let collectedAt = clock()
                let fresh = try await writer.write(page.records, collectedAt: collectedAt)
                report.duplicatesDropped += Int64(page.records.count - fresh.count)
                try collector.pageCommitted(page)
                report.recordsCollected += Int64(fresh.count)
                sinceCheckpoint.records += Int64(fresh.count)
                sinceCheckpoint.pages += 1
                marks.add(page, now: clock())
                log.debug(
                    "page collected",
                    metadata: ["page": "\(pages)", "records": "\(fresh.count)", "more": "\(page.next != nil)"]
                )
                if page.next != nil, let checkpoint = marks.checkpoint, checkpoint > marks.committed,
                    Self.checkpointDue(
                        source, pages: sinceCheckpoint.pages, elapsed: clock().duration(since: sinceCheckpoint.at))
                {
                    let result = try await session.commit(checkpoint, recordsCollected: sinceCheckpoint.records)
                    marks.committed = checkpoint
                    report.checkpoints += 1
                    report.watermark = checkpoint
                    sinceCheckpoint = (0, 0, clock())
                    log.info(
                        "checkpoint: watermark moved mid-run",
                        metadata: ["watermark": "\(checkpoint)", "pages": "\(pages)", "queued": "\(result.isQueued)"]
                    )
                }
                upcoming = try await following
            } while upcoming != nil
            await finish(writer, log: log)
        } catch {
            await finish(writer, log: log)
            return await finishFailed(
                report, session: session, message: "\(error)", log: log, recordsSinceCheckpoint: sinceCheckpoint.records
            )
        }

        // 4. The new mark: never backwards, never past what is on disk, never in the future.
        let mark = max(marks.committed, marks.newest ?? marks.committed)
        if let future = marks.newestInFuture {
            log.warning(
                "records stamped in the future: the watermark stays at the newest mark not in the future",
                metadata: ["future_mark": "\(future)", "watermark": "\(mark)", "now": "\(clock())"]
            )
        }
        do {
            let result = try await session.commit(mark, recordsCollected: sinceCheckpoint.records)
            report.updateQueued = result.isQueued
        } catch {
            return await finishFailed(
                report, session: session, message: "watermark update refused: \(error)", log: log, recordFailure: false
            )
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

    /// The page after `page`, `nil` when `page` was the last.
    private static func fetch(
        after page: CollectorPage, since: Timestamp, from collector: any Collector
    ) async throws -> CollectorPage? {
        guard let cursor = page.next else { return nil }
        return try await collector.fetchPage(since: since, cursor: cursor)
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
        do {
            try await writer.finish()
        } catch {
            log.warning(
                "sink not finished cleanly: the next run redoes the work from what the sink holds",
                metadata: ["error": "\(error)"])
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
                let text = String(message.prefix(4000))
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
        log.error(
            "collection run failed",
            metadata: [
                "status": "failed", "error": "\(message)", "records": "\(report.recordsCollected)",
                "duration_ms": "\(report.duration.milliseconds)",
            ]
        )
        return report
    }
}

extension Duration {
    var secondsDouble: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}
