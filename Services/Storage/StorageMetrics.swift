import NIOConcurrencyHelpers
import Prometheus
import WatermarkCore
import WatermarkStores

/// The service's Prometheus metrics, on a registry of its own (injected, so tests read exactly what
/// one app instance recorded without a global metrics system).
struct StorageMetrics: Sendable {
    let registry: PrometheusCollectorRegistry

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
                        metricName: "http_requests", unitName: "total", helpText: "HTTP requests answered"),
                    labels: [("method", method), ("route", route), ("status", String(status))]
                ),
                registry.makeDurationHistogram(
                    descriptor: .init(
                        metricName: "http_request_duration", unitName: "seconds",
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
