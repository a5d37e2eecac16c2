import Foundation
import NIOHTTP1
import TestSupport
import Testing

/// What operators look at, proved with the real tools: a real Prometheus (Debian's `prometheus`) scraping both
/// running services with the project's alert rules, the Grafana dashboard checked against the series the
/// services really export, and the web view rendered by headless Chromium (Debian's `chromium`).
@Suite("Operators: Prometheus, alerts, dashboard, web view", .serialized)
struct OperatorsTests {
    /// The repository (the tests read its deploy/ and demo/ files, never anything outside it).
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    /// A storage service and a serving collection service with three drop-folder sources: `fresh` (a record of
    /// now, a threshold of an hour), `quiet` (empty, a threshold of one second: stale a second after its run)
    /// and `broken` (its folder is missing: every run fails).
    static func withFleet(
        _ body: (_ storage: StorageServiceHarness, _ collectionPort: Int, _ setup: CollectionSetup) async throws -> Void
    ) async throws {
        try await withStorageService { storage in
            let setup = try CollectionSetup(sourcesJSON: "{}")
            defer { setup.remove() }
            let base = setup.directory.path
            for folder in ["fresh", "quiet"] {
                try FileManager.default.createDirectory(atPath: base + "/" + folder, withIntermediateDirectories: true)
            }
            // The demo's own data, so the page shows what `make run-all` users see.
            for file in ["otx-pulses.ndjson", "stix-indicators.json"] {
                try FileManager.default.copyItem(
                    atPath: root.appendingPathComponent("demo/feeds/" + file).path, toPath: base + "/fresh/" + file)
            }
            try """
            {"sources": [
              {"id": "fresh", "type": "directory", "path": "\(base)/fresh", "interval_seconds": 3600,
               "lookback_seconds": 315360000, "stale_after_seconds": 315360000},
              {"id": "quiet", "type": "directory", "path": "\(base)/quiet", "interval_seconds": 3600,
               "stale_after_seconds": 1},
              {"id": "broken", "type": "directory", "path": "\(base)/missing", "interval_seconds": 1}
            ]}
            """.write(toFile: setup.sourcesPath, atomically: true, encoding: .utf8)
            var environment = setup.environment(storageURL: "http://127.0.0.1:\(storage.port)")
            environment["REPLAY_INTERVAL_SECONDS"] = "1"  // staleness and the gauges refreshed every second
            let service = try ServiceProcess("collection-service", environment: environment)
            defer { service.signal(SIGTERM) }
            let port = try await service.waitForPort(marker: "Collection service listening")
            let http = TestHTTP(baseURL: "http://127.0.0.1:\(port)")
            try await waitUntil("every source's first run", timeout: .seconds(60)) {
                let sources = try await http.send(.GET, "/status").json()["sources"] as? [[String: Any]] ?? []
                return sources.count == 3 && sources.allSatisfy { $0["last_run"] is [String: Any] }
                    && sources.first { $0["source_id"] as? String == "broken" }?["consecutive_failures"] as? Int ?? 0
                        >= 2
            }
            try await body(storage, port, setup)
        }
    }

    @Test func prometheusScrapesBothServicesFiresTheStaleAlertAndKnowsEveryDashboardSeries() async throws {
        let prometheus = "/usr/bin/prometheus"
        try #require(
            FileManager.default.isExecutableFile(atPath: prometheus),
            "Debian's prometheus package is needed (make test installs it: scripts/install-deps.sh)")
        try await Self.withFleet { storage, collectionPort, setup in
            let port = try freeTCPPort()
            let config = setup.directory.path + "/prometheus.yml"
            let rules = Self.root.appendingPathComponent("deploy/prometheus/alerts.yml").path
            try """
            global: {scrape_interval: 1s, evaluation_interval: 1s}
            rule_files: ["\(rules)"]
            scrape_configs:
              - job_name: watermark-storage
                static_configs: [{targets: ["127.0.0.1:\(storage.port)"]}]
              - job_name: watermark-collection
                static_configs: [{targets: ["127.0.0.1:\(collectionPort)"]}]
            """.write(toFile: config, atomically: true, encoding: .utf8)
            let server = try ServiceProcess(
                prometheus,
                arguments: [
                    "--config.file=\(config)", "--storage.tsdb.path=\(setup.directory.path)/tsdb",
                    "--web.listen-address=127.0.0.1:\(port)", "--log.level=warn",
                ], environment: [:])
            defer { server.signal(SIGTERM) }
            let api = TestHTTP(baseURL: "http://127.0.0.1:\(port)")
            func query(_ promql: String) async throws -> [[String: Any]] {
                let encoded = promql.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? promql
                let data = try await api.send(.GET, "/api/v1/query?query=\(encoded)").json()["data"]
                return (data as? [String: Any])?["result"] as? [[String: Any]] ?? []
            }
            func sources(of result: [[String: Any]]) -> Set<String> {
                Set(result.compactMap { ($0["metric"] as? [String: String])?["source_id"] })
            }

            try await waitUntil("both targets up", timeout: .seconds(60), every: .milliseconds(500)) {
                let up = (try? await query("up == 1")) ?? []
                return Set(up.compactMap { ($0["metric"] as? [String: String])?["job"] })
                    == ["watermark-storage", "watermark-collection"]
            }
            // Our series, per source, as Prometheus stored them.
            try await waitUntil("per-source series", timeout: .seconds(30), every: .milliseconds(500)) {
                let stale = sources(of: try await query("collection_source_stale"))
                let marks = sources(of: try await query("storage_watermark_timestamp_seconds"))
                let failures = sources(of: try await query("storage_watermark_consecutive_failures"))
                return stale == ["fresh", "quiet", "broken"] && marks.contains("fresh") && failures.contains("broken")
            }
            let records = try await query("collection_records_total")
            let fresh = records.first { ($0["metric"] as? [String: String])?["source_id"] == "fresh" }
            #expect(Int(((fresh?["value"] as? [Any])?.last as? String) ?? "") ?? 0 > 0, "\(records)")

            // The alerts: `quiet` made stale on purpose (one-second threshold) and `broken` failing fire; `fresh`
            // fires nothing.
            var firing: [[String: Any]] = []
            try await waitUntil("the stale and failing alerts to fire", timeout: .seconds(60), every: .seconds(1)) {
                let data = try await api.send(.GET, "/api/v1/alerts").json()["data"] as? [String: Any]
                firing = ((data?["alerts"] as? [[String: Any]]) ?? []).filter { $0["state"] as? String == "firing" }
                let named = Set(
                    firing.compactMap { alert -> String? in
                        guard let labels = alert["labels"] as? [String: String] else { return nil }
                        return "\(labels["alertname"] ?? "")/\(labels["source_id"] ?? "")"
                    })
                return named.contains("WatermarkSourceStale/quiet") && named.contains("WatermarkSourceFailing/broken")
            }
            #expect(
                !firing.contains { ($0["labels"] as? [String: String])?["source_id"] == "fresh" }, "\(firing)")

            // Every metric the dashboard and the alert rules query is one the services export (or `up`).
            let names = try await api.send(.GET, "/api/v1/label/__name__/values").json()["data"] as? [String] ?? []
            let exported = Set(names)
            let dashboard = try Data(contentsOf: Self.root.appendingPathComponent("deploy/grafana/watermarks.json"))
            let expressions = Self.expressions(in: try JSONSerialization.jsonObject(with: dashboard))
            #expect(expressions.count >= 5, "the dashboard's queries")
            let alertRules = try String(contentsOfFile: rules, encoding: .utf8)
            for expression in expressions + [alertRules] {
                for metric in Self.metricNames(in: expression) {
                    #expect(exported.contains(metric), "'\(metric)' in \(expression.prefix(120)) is not exported")
                }
            }
        }
    }

    @Test func theWebViewRendersInHeadlessChromiumWithEverySource() async throws {
        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first {
            FileManager.default.isExecutableFile(atPath: $0)
        }
        let browser = try #require(
            chromium, "Debian's chromium package is needed (make test installs it: scripts/install-deps.sh)")
        try await Self.withFleet { _, collectionPort, setup in
            let url = "http://127.0.0.1:\(collectionPort)/"
            let flags = [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--user-data-dir=\(setup.directory.path)/chromium",
            ]
            let dom = try await Self.run(browser, flags + ["--dump-dom", url])
            #expect(dom.status == 0, "\(dom.output.suffix(2000))")
            for id in ["fresh", "quiet", "broken"] {
                #expect(dom.output.contains(#"id="source-\#(id)""#), "row of \(id)")
            }
            // Highlighted: `quiet` stale (a one-second threshold), `broken` failing; `fresh` neither.
            #expect(dom.output.contains(#"id="source-quiet" class="source stale""#), "\(dom.output.suffix(4000))")
            #expect(dom.output.contains(#"id="source-broken" class="source failing""#))
            #expect(dom.output.contains(#"id="source-fresh" class="source""#))
            #expect(dom.output.contains("<svg class=\"chart\""), "the records-per-run chart")
            #expect(dom.output.contains(#"http-equiv="refresh""#))
            // A screenshot for review, under .build/ (not committed).
            let shot = Self.root.appendingPathComponent(".build/webview.png").path
            try? FileManager.default.removeItem(atPath: shot)
            let picture = try await Self.run(browser, flags + ["--window-size=1280,720", "--screenshot=\(shot)", url])
            #expect(picture.status == 0, "\(picture.output.suffix(2000))")
            let size = (try? FileManager.default.attributesOfItem(atPath: shot)[.size] as? Int) ?? 0
            #expect(size > 10_000, "screenshot at \(shot): \(size) bytes")
        }
    }

    /// Runs a browser to its end (killed after 90 s): its exit status and everything it printed.
    static func run(_ browser: String, _ arguments: [String]) async throws -> (status: Int32, output: String) {
        let process = try ServiceProcess(browser, arguments: arguments, environment: [:])
        let status = try await process.waitForExit(timeout: .seconds(90))
        return (status, process.log)
    }

    /// Every `expr` string in a Grafana dashboard (panels, nested rows, templating queries).
    static func expressions(in object: Any) -> [String] {
        if let dictionary = object as? [String: Any] {
            return dictionary.flatMap { key, value in
                key == "expr" ? [value as? String].compactMap { $0 } : expressions(in: value)
            }
        }
        if let array = object as? [Any] { return array.flatMap(expressions(in:)) }
        return []
    }

    /// The metric names a PromQL expression (or a rules file) mentions: identifiers of our prefixes, with the
    /// histogram suffixes kept (Prometheus lists `_bucket`, `_sum` and `_count` as names of their own), plus `up`.
    static func metricNames(in text: String) -> Set<String> {
        var names = Set<String>()
        let pattern = /\b(collection_[a-z_]+|storage_[a-z_]+|up)\b/
        for match in text.matches(of: pattern) {
            let name = String(match.output.1)
            // `up` only as a selector, not inside words such as "updates" (the \b rules those out) or prose.
            if name == "up", !text[match.range.upperBound...].hasPrefix("{") { continue }
            names.insert(name)
        }
        return names
    }
}
