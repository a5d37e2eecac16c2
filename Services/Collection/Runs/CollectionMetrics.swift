import Prometheus
import WatermarkCore

/// The service's metrics, on an injected registry (never the global `MetricsSystem`), so tests read exactly
/// what one app instance recorded.
///
/// Per source, named by Prometheus conventions (a `collection_` prefix, base units, `_total` counters,
/// timestamps as Unix seconds rather than ages: an alert computes `time() - ...`). Every per-source series has
/// the one label `source_id`, whose values are the configured sources only (runs add the `status` label with
/// four values): a process's series grow with its sources file, never with its data.
struct CollectionMetrics: Sendable {
    let registry: PrometheusCollectorRegistry

    static let durationBuckets: [Duration] = [
        .milliseconds(100), .milliseconds(500), .seconds(1), .seconds(5), .seconds(15), .seconds(30), .seconds(60),
        .seconds(300), .seconds(900),
    ]

    init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
    }

    private func gauge(_ name: String, _ help: String, _ sourceID: SourceID) -> Gauge {
        registry.makeGauge(
            descriptor: MetricNameDescriptor(metricName: name, helpText: help),
            labels: [("source_id", sourceID.rawValue)])
    }

    private func counter(_ name: String, _ help: String, _ sourceID: SourceID) -> Counter {
        registry.makeCounter(
            descriptor: MetricNameDescriptor(metricName: name, unitName: "total", helpText: help),
            labels: [("source_id", sourceID.rawValue)])
    }

    private func records(_ id: SourceID) -> Counter {
        counter("collection_records", "Records written to the sink (duplicates dropped are not counted).", id)
    }

    private func rejectedFiles(_ id: SourceID) -> Counter {
        counter(
            "collection_rejected_files", "Drop-folder files moved to .rejected/ because they are not valid records.",
            id)
    }

    private func runs(_ id: SourceID, _ status: RunReport.Outcome) -> Counter {
        registry.makeCounter(
            descriptor: MetricNameDescriptor(
                metricName: "collection_runs", unitName: "total", helpText: "Collection runs by source and outcome."),
            labels: [("source_id", id.rawValue), ("status", status.rawValue)])
    }

    private func lastAttempt(_ id: SourceID) -> Gauge {
        gauge(
            "collection_last_attempt_timestamp_seconds", "When the source's last run ended, whatever its outcome.", id)
    }

    private func lastSuccess(_ id: SourceID) -> Gauge {
        gauge(
            "collection_last_success_timestamp_seconds",
            "When the source last succeeded (this process's last success, else the storage's record of it).", id)
    }

    /// Creates every series of `source` at its neutral value, so a counter's `rate()` and the alerts see a source
    /// before its first run.
    func register(_ source: SourceConfiguration) {
        let id = source.id
        records(id).increment(by: Int64(0))
        rejectedFiles(id).increment(by: Int64(0))
        for status in [RunReport.Outcome.success, .failed, .skipped, .abandoned] {
            runs(id, status).increment(by: Int64(0))
        }
        gauge("collection_stale_threshold_seconds", "Age of the last success after which the source is stale.", id)
            .set(source.staleAfter.secondsDouble)
        setLeaseHeld(id, false)
        setPendingUpdates(id, 0)
    }

    func recordRun(_ report: RunReport) {
        let id = report.sourceID
        runs(id, report.outcome).increment()
        records(id).increment(by: report.recordsCollected)
        if report.rejectedFiles > 0 { rejectedFiles(id).increment(by: Int64(report.rejectedFiles)) }
        guard report.outcome != .skipped else { return }  // another replica's run: nothing of this one to time
        lastAttempt(id).set(report.finishedAt.unixSeconds)
        registry.makeDurationHistogram(
            descriptor: MetricNameDescriptor(
                metricName: "collection_run_duration", unitName: "seconds", helpText: "Duration of collection runs."
            ),
            labels: [("source_id", id.rawValue)], buckets: Self.durationBuckets
        ).record(report.duration)
    }

    /// What the maintenance loop knows of a source: its watermark, last success, failures in a row, staleness.
    func setWatching(
        _ id: SourceID, watermark: Timestamp?, lastSuccess: Timestamp?, consecutiveFailures: Int64, stale: Bool
    ) {
        if let watermark {
            gauge("collection_watermark_timestamp_seconds", "The source's watermark: data is collected up to it.", id)
                .set(watermark.unixSeconds)
        }
        if let lastSuccess { self.lastSuccess(id).set(lastSuccess.unixSeconds) }
        gauge("collection_consecutive_failures", "Failed runs of the source since its last success.", id)
            .set(Double(consecutiveFailures))
        gauge(
            "collection_source_stale",
            "1 when the source's last success is older than its stale threshold (or it never succeeded).", id
        ).set(stale ? 1.0 : 0.0)
    }

    func setPendingUpdates(_ id: SourceID, _ count: Int) {
        gauge(
            "collection_pending_updates", "Watermark updates of the source queued on disk until the storage answers.",
            id
        ).set(Double(count))
    }

    /// 1 while this process holds the source's lease (during its runs).
    func setLeaseHeld(_ id: SourceID, _ held: Bool) {
        gauge("collection_lease_held", "1 while this process holds the source's lease (during a run).", id)
            .set(held ? 1.0 : 0.0)
    }
}
