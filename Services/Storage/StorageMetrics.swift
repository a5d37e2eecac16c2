import NIOConcurrencyHelpers
import Prometheus
import WatermarkCore
import WatermarkStores

/// The service's Prometheus metrics, on a registry of its own (injected, so tests read exactly what
/// one app instance recorded without a global metrics system).
///
/// Named by Prometheus conventions: a `storage_` prefix, base units, `_total` counters, instants as Unix seconds.
/// Per source (label `source_id` only) it exports the watermark, the last run and the failures in a row of at
/// most `METRICS_SOURCE_LIMIT` sources (the first by source id, default 1,000): a scrape costs the same at a
/// million sources. A larger fleet sets 0 and scrapes its collection services, each of which exports its own
/// sources.
struct StorageMetrics: Sendable {
    let registry: PrometheusCollectorRegistry
    /// The sources whose per-source series are in the registry, so a source that leaves the page loses them.
    private let exported = NIOLockedValueBox<Set<SourceID>>([])

    private static let latencyBuckets: [Duration] = [
        .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25),
        .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5),
        .seconds(5),
    ]

    private struct RequestKey: Hashable {
        var method: String
        var route: String
        var status: Int
    }

    /// The counter and histogram of each (method, route, status) met so far: the registry builds a metric's
    /// name and labels on every `make...` call, which cost a GET more than its database read.
    private let requestMetrics = NIOLockedValueBox<[RequestKey: (Counter, DurationHistogram)]>([:])

    init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
    }

    func recordRequest(method: String, route: String, status: Int, duration: Duration) {
        let key = RequestKey(method: method, route: route, status: status)
        let (counter, histogram) = requestMetrics.withLockedValue { known in
            if let metrics = known[key] { return metrics }
            let metrics = (
                registry.makeCounter(
                    descriptor: .init(
                        metricName: "storage_http_requests", unitName: "total", helpText: "HTTP requests answered"),
                    labels: [("method", method), ("route", route), ("status", String(status))]
                ),
                registry.makeDurationHistogram(
                    descriptor: .init(
                        metricName: "storage_http_request_duration", unitName: "seconds",
                        helpText: "Time to answer a request"),
                    labels: [("method", method), ("route", route)],
                    buckets: Self.latencyBuckets
                )
            )
            if known.count < 1_000 { known[key] = metrics }  // bounded whatever methods clients invent
            return metrics
        }
        counter.increment()
        histogram.record(duration)
    }

    /// The text exposition, with the watermark counts read just now (left out if the store failed) and the
    /// per-source series of `sources` (`nil`: the store failed, the last ones stay).
    func render(summary: WatermarkSummary?, sources: [Watermark]?) -> String {
        let gauge = { (state: String) in
            registry.makeGauge(
                descriptor: .init(metricName: "storage_watermarks", helpText: "Watermarks by state"),
                labels: [("state", state)]
            )
        }
        if let summary {
            gauge("total").set(Double(summary.total))
            gauge("failed").set(Double(summary.failed))
            gauge("stale").set(Double(summary.stale))
        }
        if let sources { export(sources) }
        return registry.emitToString()
    }

    private static let perSource: [(name: String, help: String)] = [
        ("storage_watermark_timestamp_seconds", "The source's last successful timestamp: data is collected up to it."),
        ("storage_watermark_last_run_timestamp_seconds", "When the source's last update (any status) was accepted."),
        ("storage_watermark_consecutive_failures", "Failed runs of the source since its last success."),
    ]

    private func sourceGauge(_ index: Int, _ id: SourceID) -> Gauge {
        registry.makeGauge(
            descriptor: .init(metricName: Self.perSource[index].name, helpText: Self.perSource[index].help),
            labels: [("source_id", id.rawValue)])
    }

    private func export(_ sources: [Watermark]) {
        exported.withLockedValue { exported in
            let now = Set(sources.map(\.sourceID))
            for gone in exported.subtracting(now) {
                for index in Self.perSource.indices { registry.unregisterGauge(sourceGauge(index, gone)) }
            }
            for watermark in sources {
                let id = watermark.sourceID
                if let mark = watermark.lastSuccessfulTimestamp {
                    sourceGauge(0, id).set(mark.unixSeconds)
                } else if exported.contains(id) {
                    registry.unregisterGauge(sourceGauge(0, id))  // backfilled to never? (a reset and a failure)
                }
                sourceGauge(1, id).set(watermark.lastRunTimestamp.unixSeconds)
                sourceGauge(2, id).set(Double(watermark.consecutiveFailures))
            }
            exported = now
        }
    }
}
