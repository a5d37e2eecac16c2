import NIOConcurrencyHelpers
import NIOCore
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
    /// The per-source series, apart: they are emitted only to a request allowed to read data (they name
    /// sources), so they must never be in the registry every scrape emits.
    private let sourceRegistry = PrometheusCollectorRegistry()
    /// The sources whose series are in `sourceRegistry`, so a source that leaves the page loses them.
    private let exported = NIOLockedValueBox<Set<SourceID>>([])
    private let sources = NIOLockedValueBox(SourcesText())

    /// The per-source series as last rendered, and when they were last loaded (or failed to load).
    private struct SourcesText {
        var text: ByteBuffer?
        var refreshedAt: ContinuousClock.Instant?
        var failedAt: ContinuousClock.Instant?
    }

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

    /// The text exposition, with the watermark counts read just now (left out if the store failed).
    func render(summary: WatermarkSummary?) -> String {
        let gauge = { (state: String) in
            registry.makeGauge(
                descriptor: .init(metricName: "storage_watermarks", unitName: "", helpText: "Watermarks by state"),
                labels: [("state", state)]
            )
        }
        if let summary {
            gauge("total").set(Double(summary.total))
            gauge("failed").set(Double(summary.failed))
            gauge("stale").set(Double(summary.stale))
        } else {
            // Left in the registry, the counts of the last scrape that could read them were shown as current.
            for state in ["total", "failed", "stale"] { registry.unregisterGauge(gauge(state)) }
        }
        return registry.emitToString()
    }

    /// The per-source series as text, refreshed by `load` at most once a second and rendered once per refresh:
    /// Prometheus scrapes every few seconds, and a benchmark's thousands of scrapes a second must neither each
    /// read and re-register 1,000 sources nor each hold its own copy of their 200 KB of text (the answers
    /// share this buffer). Until a first rendering exists every scrape loads its own (one arriving while the
    /// first load ran was answered without the series), unless a load failed within the second: a failing store
    /// is asked once a second, not by every scrape.
    func renderSources(_ load: () async -> [Watermark]?) async -> ByteBuffer {
        let now = ContinuousClock.now
        let loads = sources.withLockedValue { state in
            if state.refreshedAt.map({ now - $0 >= .seconds(1) }) ?? true {
                state.refreshedAt = now
                return true
            }
            return state.text == nil && (state.failedAt.map { now - $0 >= .seconds(1) } ?? true)
        }
        if loads {
            if let loaded = await load() {
                export(loaded)
                let text = ByteBuffer(string: sourceRegistry.emitToString())
                sources.withLockedValue { $0.text = text }
            } else {
                sources.withLockedValue { $0.failedAt = now }
            }
        }
        return sources.withLockedValue { $0.text } ?? ByteBuffer()
    }

    private static let perSource: [(name: String, help: String)] = [
        ("storage_watermark_timestamp_seconds", "The source's last successful timestamp: data is collected up to it."),
        ("storage_watermark_last_run_timestamp_seconds", "When the source's last update (any status) was accepted."),
        ("storage_watermark_consecutive_failures", "Failed runs of the source since its last success."),
    ]

    private func sourceGauge(_ index: Int, _ id: SourceID) -> Gauge {
        sourceRegistry.makeGauge(
            descriptor: .init(
                metricName: Self.perSource[index].name, unitName: "", helpText: Self.perSource[index].help),
            labels: [("source_id", id.rawValue)])
    }

    private func export(_ sources: [Watermark]) {
        exported.withLockedValue { exported in
            let now = Set(sources.map(\.sourceID))
            for gone in exported.subtracting(now) {
                for index in Self.perSource.indices { sourceRegistry.unregisterGauge(sourceGauge(index, gone)) }
            }
            for watermark in sources {
                let id = watermark.sourceID
                if let mark = watermark.lastSuccessfulTimestamp {
                    sourceGauge(0, id).set(mark.unixSeconds)
                } else if exported.contains(id) {
                    sourceRegistry.unregisterGauge(sourceGauge(0, id))  // reset, then recreated by a failure
                }
                sourceGauge(1, id).set(watermark.lastRunTimestamp.unixSeconds)
                sourceGauge(2, id).set(Double(watermark.consecutiveFailures))
            }
            exported = now
        }
    }
}
