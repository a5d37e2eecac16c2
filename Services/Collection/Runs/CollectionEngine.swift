import AsyncHTTPClient
import Logging
import StorageClient
import WatermarkCore

/// Everything a run needs, shared by the scheduler, the HTTP API and `--once`: the board, the runner, the
/// collectors, the metrics and the watermark manager.
struct CollectionEngine: Sendable {
    let board: SourceBoard
    let runner: CollectionRunner
    let manager: WatermarkManager
    let metrics: CollectionMetrics
    let makeCollector: @Sendable (SourceConfiguration) -> any Collector
    let logger: Logger
    var clock: @Sendable () -> Timestamp = Timestamp.now
    /// When this process started: a source that never succeeded counts as stale once this is older than its
    /// threshold.
    let startedAt: Timestamp

    /// Runs one source (the caller has claimed it on the board) and records metrics and watermark age.
    func execute(_ source: SourceConfiguration) async -> RunReport {
        let report = await runner.run(source, collector: makeCollector(source))
        metrics.recordRun(report)
        return report
    }

    /// The collector for a source type.
    static func collector(
        for source: SourceConfiguration, httpClient: HTTPClient, stateDirectory: String, logger: Logger,
        retry: RetryPolicy = .source
    ) -> any Collector {
        var log = logger
        log[metadataKey: "source_id"] = "\(source.id)"
        let http = SourceHTTPClient(httpClient: httpClient, timeout: source.timeout, retry: retry, logger: log)
        switch source.kind {
        case .taxii21(let settings): return TAXII21Collector(settings: settings, pageSize: source.pageSize, http: http)
        case .otx(let settings): return OTXCollector(settings: settings, pageSize: source.pageSize, http: http)
        case .directory(let settings):
            return DirectoryCollector(
                settings: settings, ledger: FileLedger(stateDirectory: stateDirectory, sourceID: source.id),
                pageSize: source.pageSize)
        }
    }

    /// Replays queued updates, then refreshes watermark ages, stale flags and the pending gauge.
    func maintain() async {
        let summary = await manager.replayPending()
        if summary.applied > 0 || summary.dropped > 0 {
            logger.info(
                "queued watermark updates replayed",
                metadata: [
                    "applied": "\(summary.applied)", "dropped": "\(summary.dropped)",
                    "remaining": "\(summary.remaining)",
                ]
            )
        }
        await refreshWatching()
    }

    /// Watermark age per source against its threshold; a source turning stale is logged once as a warning. A disabled
    /// source is never stale: it is not meant to run, and its stale flag and alert would stay up for good.
    func refreshWatching() async {
        let now = clock()
        for entry in await board.allEntries() {
            let id = entry.source.id
            metrics.setPendingUpdates(id, await manager.pendingCount(sourceID: id))
            let known = await manager.lastKnownWatermark(sourceID: id)
            let mark = known?.lastSuccessfulTimestamp ?? entry.watermark
            await board.setWatermark(id, mark)
            let lastSuccess = Self.lastSuccess(entry: entry, known: known)
            let stale: Bool
            if !entry.source.enabled {
                stale = false
            } else if let lastSuccess {
                stale = now.duration(since: lastSuccess) > entry.source.staleAfter
            } else {
                stale = now.duration(since: startedAt) > entry.source.staleAfter
            }
            metrics.setWatching(
                id, watermark: mark, lastSuccess: lastSuccess,
                consecutiveFailures: Self.consecutiveFailures(entry: entry, known: known),
                stale: stale)
            if await board.setStale(id, stale) {
                logger.warning(
                    "watermark is stale",
                    metadata: [
                        "source_id": "\(id)", "last_success": "\(lastSuccess.map { "\($0)" } ?? "never")",
                        "watermark": "\(mark.map { "\($0)" } ?? "none")",
                        "threshold_s": "\(entry.source.staleAfter.components.seconds)",
                    ]
                )
            }
        }
    }

    /// Failed runs in a row: the storage's count (its answer to the last update, or the queued updates applied to
    /// it), else this process's. This process's alone started again from 0 at each restart and after a run skipped
    /// for a lease held elsewhere, and counted only its own runs where replicas take turns: the alert on three in a
    /// row resolved while the source kept failing.
    static func consecutiveFailures(entry: SourceBoard.Entry, known: Watermark?) -> Int64 {
        known?.consecutiveFailures ?? Int64(entry.consecutiveFailures)
    }

    /// When the source last succeeded: this process's last success, else the storage's record of it.
    static func lastSuccess(entry: SourceBoard.Entry, known: Watermark?) -> Timestamp? {
        if let local = entry.lastSuccessAt { return local }
        guard let known else { return nil }
        // A success's `last_run_timestamp` is when it happened; after failures only the mark is left, which is
        // never later than the last success (so the source errs on the side of "stale").
        return known.status == .success ? known.lastRunTimestamp : known.lastSuccessfulTimestamp
    }
}
