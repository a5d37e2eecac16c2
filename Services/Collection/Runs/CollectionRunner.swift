import Foundation
import Logging
import StorageClient
import WatermarkCore

/// One run of one source: lease -> watermark -> pages -> sink (fsync) -> watermark update -> release.
///
/// The order is what makes collection exactly-once. Records are appended and fsynced page by page, and the
/// watermark moves only after the last page, to the newest mark among records that are on disk. A crash
/// anywhere before the update means the next run starts from the old mark and the sink's dedup drops what
/// already arrived; a crash after it (even before this process learnt the answer) means the next run starts
/// later and drops the boundary record again.
struct CollectionRunner: Sendable {
    let storage: any StorageClient
    let manager: WatermarkManager
    let dataDirectory: String
    /// The lease owner (`INSTANCE_ID`).
    let owner: String
    let logger: Logger
    var clock: @Sendable () -> Timestamp = Timestamp.now
    /// Checked between pages: `true` once shutdown began.
    var isStopping: @Sendable () async -> Bool = { false }

    /// How far past this process's clock a mark may go (the storage refuses more than 5 minutes).
    static let futureTolerance: Duration = .seconds(60)

    /// The lease a run asks for: comfortably longer than a page can take; renewed during long runs.
    static func leaseTTL(for source: SourceConfiguration) -> Duration {
        max(source.timeout * 2, .seconds(300))
    }

    func run(_ source: SourceConfiguration, collector: any Collector) async -> RunReport {
        let startedAt = clock()
        var report = RunReport(sourceID: source.id, outcome: .failed, startedAt: startedAt, finishedAt: startedAt)
        var log = logger
        log[metadataKey: "source_id"] = "\(source.id)"
        log.info("collection run started", metadata: ["type": "\(source.typeName)"])

        // 0. Deliver updates queued during a storage outage before taking the lease: they carry no token (or
        //    an expired one), and the storage refuses tokenless writes while a live lease exists.
        if await manager.pendingCount(sourceID: source.id) > 0 {
            _ = try? await manager.getWatermark(sourceID: source.id)
        }

        // 1. The lease: one collector per source across replicas.
        let ttl = Self.leaseTTL(for: source)
        var lease: Lease?
        do {
            lease = try await storage.acquireLease(sourceID: source.id, owner: owner, ttl: ttl)
        } catch let error as StorageClientError {
            if case .conflict(let code, let message) = error, code == "lease_held" {
                report.outcome = .skipped
                report.finishedAt = clock()
                report.errorMessage = message
                log.info(
                    "collection run skipped: another collector holds the lease", metadata: ["detail": "\(message)"])
                return report
            }
            if error.isTransient {
                report.withoutLease = true
                log.warning(
                    "storage unreachable: running without a lease (single-replica degraded mode)",
                    metadata: ["error": "\(error)"]
                )
            } else {
                return await finishFailed(
                    report, source: source, lease: nil, message: "cannot take the source's lease: \(error)", log: log
                )
            }
        } catch {
            report.withoutLease = true
            log.warning("storage unreachable: running without a lease", metadata: ["error": "\(error)"])
        }
        var leaseTakenAt = clock()

        // 2. Where to start.
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

        // 3. Pages, each appended and fsynced.
        let sink = NDJSONSink(dataDirectory: dataDirectory, sourceID: source.id)
        var newest: Timestamp?
        do {
            var seen = try sink.existingKeys(since: since)
            var cursor: String?
            var pages = 0
            repeat {
                if await isStopping() || Task.isCancelled {
                    report.outcome = .abandoned
                    report.finishedAt = clock()
                    log.notice(
                        "collection run abandoned at shutdown; nothing committed",
                        metadata: ["records": "\(report.recordsCollected)", "pages": "\(pages)"]
                    )
                    await release(lease, source: source, log: log)
                    return report
                }
                if let held = lease, clock().duration(since: leaseTakenAt) > ttl / 2 {
                    lease = try await renew(held, source: source, ttl: ttl)
                    leaseTakenAt = clock()
                }
                let page = try await collector.fetchPage(since: since, cursor: cursor)
                pages += 1
                var fresh: [CollectedRecord] = []
                for record in page.records {
                    newest = max(newest ?? record.mark, record.mark)
                    if seen.insert(record.key).inserted {
                        fresh.append(record)
                    } else {
                        report.duplicatesDropped += 1
                    }
                }
                if let mark = page.highWaterMark { newest = max(newest ?? mark, mark) }
                try sink.append(fresh, collectedAt: clock())
                report.recordsCollected += Int64(fresh.count)
                log.debug(
                    "page collected",
                    metadata: ["page": "\(pages)", "records": "\(fresh.count)", "more": "\(page.next != nil)"]
                )
                cursor = page.next
            } while cursor != nil
        } catch {
            return await finishFailed(report, source: source, lease: lease, message: "\(error)", log: log)
        }

        // 4. The new mark: never backwards, never past what is on disk; with nothing new it stays put.
        var mark = max(previous ?? start, newest ?? previous ?? start)
        let now = clock()
        if mark > now.adding(Self.futureTolerance) {
            // A record (or the source's clock) is in the future. The storage would refuse the mark, and moving
            // it there would skip records stamped before it that arrive later: stop at our own clock instead;
            // the future records are read again next time and dropped as duplicates.
            log.warning(
                "newest record is in the future; watermark held at the current time",
                metadata: ["newest": "\(mark)", "now": "\(now)"]
            )
            mark = max(previous ?? start, now)
        }
        do {
            let result = try await manager.updateWatermark(
                sourceID: source.id, timestamp: mark, status: .success, recordsCollected: report.recordsCollected,
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
                "duration_ms": "\(report.duration.milliseconds)", "queued": "\(report.updateQueued)",
            ]
        )
        return report
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
    private func finishFailed(
        _ report: RunReport, source: SourceConfiguration, lease: Lease?, message: String, log: Logger,
        recordFailure: Bool = true
    ) async -> RunReport {
        var report = report
        report.outcome = .failed
        report.errorMessage = message
        if recordFailure {
            do {
                let result = try await manager.updateWatermark(
                    sourceID: source.id, timestamp: nil, status: .failed, errorMessage: String(message.prefix(4000)),
                    recordsCollected: report.recordsCollected, options: UpdateOptions(leaseToken: lease?.fencingToken)
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
