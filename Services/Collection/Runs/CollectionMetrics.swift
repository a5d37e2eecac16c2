import Prometheus
import WatermarkCore

/// The service's metrics, on an injected registry (never the global `MetricsSystem`), so tests read exactly
/// what one app instance recorded.
struct CollectionMetrics: Sendable {
    let registry: PrometheusCollectorRegistry

    static let durationBuckets: [Duration] = [
        .milliseconds(100), .milliseconds(500), .seconds(1), .seconds(5), .seconds(15), .seconds(30), .seconds(60),
        .seconds(300), .seconds(900),
    ]

    init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
    }

    func recordRun(_ report: RunReport) {
        registry.makeCounter(
            descriptor: MetricNameDescriptor(
                metricName: "collection_runs", unitName: "total", helpText: "Collection runs by source and outcome."
            ),
            labels: [("source_id", report.sourceID.rawValue), ("status", report.outcome.rawValue)]
        ).increment()
        registry.makeCounter(
            descriptor: MetricNameDescriptor(
                metricName: "collection_records", unitName: "total", helpText: "Records written to the sink."
            ),
            labels: [("source_id", report.sourceID.rawValue)]
        ).increment(by: report.recordsCollected)
        if report.rejectedFiles > 0 {
            registry.makeCounter(
                descriptor: MetricNameDescriptor(
                    metricName: "collection_rejected_files", unitName: "total",
                    helpText: "Drop-folder files moved to .rejected/ because they are not valid records."
                ),
                labels: [("source_id", report.sourceID.rawValue)]
            ).increment(by: Int64(report.rejectedFiles))
        }
        registry.makeDurationHistogram(
            descriptor: MetricNameDescriptor(
                metricName: "collection_run_duration", unitName: "seconds", helpText: "Duration of collection runs."
            ),
            labels: [("source_id", report.sourceID.rawValue)], buckets: Self.durationBuckets
        ).record(report.duration)
    }

    func setWatermarkAge(_ sourceID: SourceID, seconds: Double?, stale: Bool) {
        registry.makeGauge(
            descriptor: MetricNameDescriptor(
                metricName: "collection_watermark_age", unitName: "seconds",
                helpText: "Time since the source's watermark (-1 before its first success)."
            ),
            labels: [("source_id", sourceID.rawValue)]
        ).set(Double(seconds ?? -1))
        registry.makeGauge(
            descriptor: MetricNameDescriptor(
                metricName: "collection_watermark_stale", unitName: "",
                helpText: "1 when the source's watermark is older than its threshold."
            ),
            labels: [("source_id", sourceID.rawValue)]
        ).set(Double(stale ? 1 : 0))
    }

    func setPendingUpdates(_ count: Int) {
        registry.makeGauge(
            descriptor: MetricNameDescriptor(
                metricName: "collection_pending_updates", unitName: "",
                helpText: "Watermark updates queued on disk until the storage answers."
            )
        ).set(Double(count))
    }
}
