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
    let storage: any StorageClient
    let manager: WatermarkManager
    let dataDirectory: String
    /// The lease owner (`INSTANCE_ID`, by default the host name: a restarted process is the same owner).
    let owner: String
    let logger: Logger
    /// `REQUIRE_LEASE`: never collect a source without its lease (several replicas); when the storage cannot
    /// be asked, the run is skipped and retried soon. Off, a single replica collects through an outage.
    var requireLease = false
    var clock: @Sendable () -> Timestamp = Timestamp.now
    /// Checked between pages: `true` once shutdown began.
    var isStopping: @Sendable () async -> Bool = { false }

    /// The lease a run asks for: comfortably longer than a page can take; renewed during long runs.
    static func leaseTTL(for source: SourceConfiguration) -> Duration {
        max(source.timeout * 2, .seconds(300))
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

        // 0. The sink as a crash left it: torn last lines are cut, so what is read is what is on disk.
        let sink = NDJSONSink(dataDirectory: dataDirectory, sourceID: source.id)
        let index: DedupIndex
        do {
            try sink.recover()
            index = try DedupIndex(
                path: CollectionConfiguration.stateDirectory(of: dataDirectory) + "/dedup/\(source.id).sqlite")
            try index.catchUp(with: sink)
        } catch {
            return await finishFailed(report, source: source, lease: nil, message: "\(error)", log: log)
        }

        // 1. The lease: one collector per source across replicas.
        let ttl = Self.leaseTTL(for: source)
        var lease: Lease?
        do {
            lease = try await storage.acquireLease(sourceID: source.id, owner: owner, ttl: ttl)
        } catch let error as StorageClientError where !error.isTransient {
            if case .conflict(let code, let message) = error, code == "lease_held" {
                report.outcome = .skipped
                report.finishedAt = clock()
                report.errorMessage = message
                log.info(
                    "collection run skipped: another collector holds the lease", metadata: ["detail": "\(message)"])
                return report
            }
            return await finishFailed(
                report, source: source, lease: nil, message: "cannot take the source's lease: \(error)", log: log
            )
        } catch {
            if requireLease {
                report.outcome = .skipped
                report.finishedAt = clock()
                report.errorMessage = "storage unreachable: REQUIRE_LEASE=true, not collecting without the lease"
                report.retryAfter = Self.leaseRetry(for: source)
                log.warning(
                    "collection run skipped: no lease while the storage is unreachable (REQUIRE_LEASE=true)",
                    metadata: ["error": "\(error)", "retry_in_s": "\(report.retryAfter!.components.seconds)"]
                )
                return report
            }
            report.withoutLease = true
            log.warning(
                "storage unreachable: running without a lease (single-replica degraded mode)",
                metadata: ["error": "\(error)"]
            )
        }
        var leaseTakenAt = clock()

        // 2. What an earlier run (killed, or cut off from the storage) queued goes first, under this lease.
        if await manager.pendingCount(sourceID: source.id) > 0 {
            let replay = await manager.flush(sourceID: source.id, leaseToken: lease?.fencingToken)
            log.info(
                "queued watermark updates replayed",
                metadata: [
                    "applied": "\(replay.applied)", "dead_lettered": "\(replay.dropped)",
                    "remaining": "\(replay.remaining)",
                    "lease_token": "\(lease.map { "\($0.fencingToken)" } ?? "none")",
                ]
            )
        }

        // 3. Where to start.
        let previous: Timestamp?
        do {
            previous = try await manager.getWatermark(sourceID: source.id)?.lastSuccessfulTimestamp
        } catch {
            return await finishFailed(
                report, source: source, lease: lease, message: "cannot read the watermark: \(error)", log: log
            )
        }
        report.watermark = previous
        let start = previous ?? startedAt.adding(.zero - source.lookback)
        let since = start.adding(.zero - source.overlap)

        // 4. Pages, each appended and fsynced, with checkpoints on the way.
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
                    await flush(index, log: log)
                    await release(lease, source: source, log: log)
                    return report
                }
                if let held = lease, clock().duration(since: leaseTakenAt) > ttl / 2 {
                    lease = try await renew(held, source: source, ttl: ttl)
                    leaseTakenAt = clock()
                }
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
                let fresh = try await index.admit(page.records) { records throws(SinkError) in
                    try sink.append(records, collectedAt: collectedAt)
                }
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
                    let result = try await manager.updateWatermark(
                        sourceID: source.id, timestamp: checkpoint, status: .success,
                        recordsCollected: sinceCheckpoint.records,
                        options: UpdateOptions(leaseToken: lease?.fencingToken)
                    )
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
            await flush(index, log: log)
        } catch {
            await flush(index, log: log)
            return await finishFailed(
                report, source: source, lease: lease, message: "\(error)", log: log,
                recordsSinceCheckpoint: sinceCheckpoint.records
            )
        }

        // 5. The new mark: never backwards, never past what is on disk, never in the future.
        let mark = max(marks.committed, marks.newest ?? marks.committed)
        if let future = marks.newestInFuture {
            log.warning(
                "records stamped in the future: the watermark stays at the newest mark not in the future",
                metadata: ["future_mark": "\(future)", "watermark": "\(mark)", "now": "\(clock())"]
            )
        }
        do {
            let result = try await manager.updateWatermark(
                sourceID: source.id, timestamp: mark, status: .success, recordsCollected: sinceCheckpoint.records,
                options: UpdateOptions(leaseToken: lease?.fencingToken)
            )
            report.updateQueued = result.isQueued
        } catch {
            return await finishFailed(
                report, source: source, lease: lease, message: "watermark update refused: \(error)", log: log,
                recordFailure: false
            )
        }
        report.outcome = .success
        report.watermark = mark
        report.finishedAt = clock()
        await release(lease, source: source, log: log)
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

    private func renew(_ lease: Lease, source: SourceConfiguration, ttl: Duration) async throws -> Lease {
        do {
            return try await storage.acquireLease(sourceID: source.id, owner: owner, ttl: ttl)
        } catch let error as StorageClientError where error.isTransient {
            // Storage away: keep going; the update carries the token and is refused if the lease was lost.
            return lease
        }
    }

    /// Records a failed run (the watermark stays) and releases the lease.
    /// Commits the dedup index's last pages. A failure costs time only: the next run's `catchUp` indexes
    /// those records again from the sink, which holds them.
    private func flush(_ index: DedupIndex, log: Logger) async {
        do {
            try await index.flush()
        } catch {
            log.warning(
                "dedup index not committed: the next run indexes these records again from the sink",
                metadata: ["error": "\(error)"])
        }
    }

    private func finishFailed(
        _ report: RunReport, source: SourceConfiguration, lease: Lease?, message: String, log: Logger,
        recordFailure: Bool = true, recordsSinceCheckpoint: Int64? = nil
    ) async -> RunReport {
        var report = report
        report.outcome = .failed
        report.errorMessage = message
        if recordFailure {
            do {
                let result = try await manager.updateWatermark(
                    sourceID: source.id, timestamp: nil, status: .failed, errorMessage: String(message.prefix(4000)),
                    recordsCollected: recordsSinceCheckpoint ?? report.recordsCollected,
                    options: UpdateOptions(leaseToken: lease?.fencingToken)
                )
                report.updateQueued = result.isQueued
            } catch {
                log.error("cannot record the failed run", metadata: ["error": "\(error)"])
            }
        }
        report.finishedAt = clock()
        await release(lease, source: source, log: log)
        log.error(
            "collection run failed",
            metadata: [
                "status": "failed", "error": "\(message)", "records": "\(report.recordsCollected)",
                "duration_ms": "\(report.duration.milliseconds)",
            ]
        )
        return report
    }

    private func release(_ lease: Lease?, source: SourceConfiguration, log: Logger) async {
        guard let lease else { return }
        do {
            try await storage.releaseLease(sourceID: source.id, token: lease.fencingToken)
        } catch {
            // An unreleased lease expires by itself; the next run only waits for its TTL.
            log.warning("cannot release the lease", metadata: ["error": "\(error)"])
        }
    }
}

extension Duration {
    var secondsDouble: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}
