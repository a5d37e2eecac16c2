import Prometheus
import WatermarkCore

/// The service's Prometheus metrics, on a registry of its own (injected, so tests read exactly what
/// one app instance recorded without a global metrics system).
struct StorageMetrics: Sendable {
    let registry: PrometheusCollectorRegistry

    private static let latencyBuckets: [Duration] = [
        .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25),
        .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5),
        .seconds(5),
    ]

    init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
    }

    func recordRequest(method: String, route: String, status: Int, duration: Duration) {
        registry.makeCounter(
            descriptor: .init(metricName: "http_requests", unitName: "total", helpText: "HTTP requests answered"),
            labels: [("method", method), ("route", route), ("status", String(status))]
        ).increment()
        registry.makeDurationHistogram(
            descriptor: .init(
                metricName: "http_request_duration", unitName: "seconds", helpText: "Time to answer a request"),
            labels: [("method", method), ("route", route)],
            buckets: Self.latencyBuckets
        ).record(duration)
    }

    /// The text exposition, with the watermark counts read just now (left out if the store failed).
    func render(summary: WatermarkSummary?) -> String {
        let gauge = { (state: String) in
            registry.makeGauge(
                descriptor: .init(metricName: "watermarks", unitName: "", helpText: "Watermarks by state"),
                labels: [("state", state)]
            )
        }
        if let summary {
            gauge("total").set(Double(summary.total))
            gauge("failed").set(Double(summary.failed))
            gauge("stale").set(Double(summary.stale))
        }
        return registry.emitToString()
    }
}
