import AsyncHTTPClient
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import NIOFoundationCompat
import Prometheus
import ServiceSupport
import StorageClient
import TestSupport
import Testing
import UnixSignals
import WatermarkCore

@testable import CollectionService

@Suite("HTTP API")
struct HTTPTests {
    /// The engine as the service builds it, on an in-memory storage, with `dir` as its data directory.
    func makeEngine(dir: String, sources: [SourceConfiguration], registry: PrometheusCollectorRegistry) throws
        -> CollectionEngine
    {
        let configuration = try CollectionConfiguration(environment: ["DATA_DIR": dir])
        return try buildEngine(
            configuration: configuration, sources: sources, storage: InMemoryStorageClient(),
            httpClient: HTTPClient.shared, registry: registry, logger: Logger.quiet)
    }

    /// A drop folder `dir/in` with one record stamped a minute before the returned instant.
    static func dropOneRecord(in dir: String) throws -> Timestamp {
        try FileManager.default.createDirectory(atPath: dir + "/in", withIntermediateDirectories: true)
        let now = Timestamp.now()
        try "{\"id\":\"r1\",\"modified\":\"\(now.adding(.seconds(-60)))\"}\n".write(
            toFile: dir + "/in/a.ndjson", atomically: true, encoding: .utf8)
        return now
    }

    @Test func healthStatusMetricsAndManualRuns() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir) }
        let now = try Self.dropOneRecord(in: dir)
        try "{broken".write(toFile: dir + "/in/b.json", atomically: true, encoding: .utf8)
        let source = SourceConfiguration(
            id: try SourceID("drop"), kind: .directory(DirectorySettings(path: dir + "/in")), interval: .seconds(3600)
        )
        // Disabled, and its key's variable not set: loaded, never run.
        var keyless = SourceConfiguration(id: try SourceID("keyless"), kind: .otx(OTXSettings(apiKey: Secret(""))))
        keyless.enabled = false
        keyless.cannotRun = #"source "keyless" field "api_key_env": environment variable OTX_KEY is not set"#
        let registry = PrometheusCollectorRegistry()
        let engine = try makeEngine(dir: dir, sources: [source, keyless], registry: registry)
        let router = buildRouter(engine: engine, registry: registry, instanceID: "t")
        let app = Application(router: router, logger: Logger.quiet)
        try await app.test(.router) { client in
            let health = try await client.execute(uri: "/health", method: .get)
            #expect(health.status == .ok)
            #expect(String(buffer: health.body) == #"{"status":"healthy"}"#)

            let unrunnable = try await client.execute(uri: "/api/v1/sources/keyless/run", method: .post)
            #expect(unrunnable.status == .conflict)
            #expect(String(buffer: unrunnable.body).contains(#""code":"source_not_runnable""#))
            #expect(String(buffer: unrunnable.body).contains("OTX_KEY is not set"))
            let unknown = try await client.execute(uri: "/api/v1/sources/nope/run", method: .post)
            #expect(unknown.status == .notFound)
            #expect(String(buffer: unknown.body).contains(#""code":"source_not_found""#))
            let invalid = try await client.execute(uri: "/api/v1/sources/bad%20id/run", method: .post)
            #expect(invalid.status == .badRequest)
            let noRoute = try await client.execute(uri: "/nothing", method: .get)
            #expect(noRoute.status == .notFound && String(buffer: noRoute.body).contains(#""error""#))
            // A known path with a method it does not answer: 405 with Allow, as the storage answers; HEAD where GET is.
            for (path, method, allow) in [
                ("/api/v1/sources/drop/run", HTTPRequest.Method.get, "POST"), ("/status", .delete, "GET, HEAD"),
                ("/health", .post, "GET, HEAD"),
            ] {
                let wrong = try await client.execute(uri: path, method: method)
                #expect(wrong.status == .methodNotAllowed && wrong.headers[.allow] == allow, "\(method) \(path)")
                #expect(String(buffer: wrong.body).contains(#""code":"method_not_allowed""#), "\(method) \(path)")
            }
            #expect(try await client.execute(uri: "/health", method: .head).status == .ok)

            let accepted = try await client.execute(uri: "/api/v1/sources/drop/run", method: .post)
            #expect(accepted.status == .accepted)
            // The scheduler claims it: a second request while it runs is a conflict.
            let claimed = await engine.board.claimDue(now: Timestamp.now(), limit: 1)
            #expect(claimed.map(\.id) == [source.id])
            let busy = try await client.execute(uri: "/api/v1/sources/drop/run", method: .post)
            #expect(busy.status == .conflict && String(buffer: busy.body).contains("already_running"))
            let report = await engine.execute(source)
            await engine.board.finish(report, nextRunAt: Timestamp.now().adding(.seconds(3600)))
            await engine.refreshWatching()  // as the scheduler does after each run: /status and /metrics only read

            let status = try await client.execute(uri: "/status", method: .get)
            let body = try #require(try JSONSerialization.jsonObject(with: Data(buffer: status.body)) as? [String: Any])
            let item = try #require((body["sources"] as? [[String: Any]])?.first)
            #expect(item["source_id"] as? String == "drop")
            #expect((item["last_run"] as? [String: Any])?["status"] as? String == "success")
            #expect((item["last_run"] as? [String: Any])?["records_collected"] as? Int == 1)
            #expect(item["watermark"] as? String == now.adding(.seconds(-60)).description)
            #expect(item["stale"] as? Bool == false && item["pending_updates"] as? Int == 0)
            #expect(item["next_run_at"] is String && item["last_error"] is NSNull)
            #expect(item["rejected_files"] as? Int == 1)
            #expect((item["last_run"] as? [String: Any])?["rejected_files"] as? Int == 1)

            let metrics = String(buffer: try await client.execute(uri: "/metrics", method: .get).body)
            #expect(metrics.contains(#"collection_runs_total{source_id="drop",status="success"} 1"#))
            #expect(metrics.contains(#"collection_records_total{source_id="drop"} 1"#))
            #expect(metrics.contains("collection_run_duration_seconds_bucket"))
            let mark = now.adding(.seconds(-60)).unixSeconds
            #expect(
                metrics.contains(#"collection_watermark_timestamp_seconds{source_id="drop"} \#(mark)"#), "\(metrics)")
            #expect(metrics.contains(#"collection_last_success_timestamp_seconds{source_id="drop"}"#))
            #expect(metrics.contains(#"collection_last_attempt_timestamp_seconds{source_id="drop"}"#))
            #expect(metrics.contains(#"collection_consecutive_failures{source_id="drop"} 0.0"#))
            #expect(metrics.contains(#"collection_source_stale{source_id="drop"} 0.0"#))
            #expect(metrics.contains(#"collection_stale_threshold_seconds{source_id="drop"}"#))
            #expect(metrics.contains(#"collection_pending_updates{source_id="drop"} 0.0"#))
            #expect(metrics.contains(#"collection_lease_held{source_id="drop"} 0.0"#))
            #expect(metrics.contains(#"collection_runs_total{source_id="drop",status="failed"} 0"#))
            #expect(metrics.contains(#"collection_rejected_files_total{source_id="drop"} 1"#))
        }
    }

    /// With `COLLECTION_API_TOKEN` a run is asked for with one of its tokens only: 401 without or with a wrong one,
    /// nothing triggered; the read-only routes stay open.
    @Test func askingForARunNeedsATokenWhenTheServiceHasOne() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir) }
        let source = SourceConfiguration(id: try SourceID("drop"), kind: .directory(DirectorySettings(path: dir)))
        let registry = PrometheusCollectorRegistry()
        let engine = try makeEngine(dir: dir, sources: [source], registry: registry)
        let tokens = try APITokens(parsing: "ops:s3cret,ci:other", key: "COLLECTION_API_TOKEN")
        let router = buildRouter(engine: engine, registry: registry, instanceID: "t", apiTokens: tokens)
        let app = Application(router: router, logger: Logger.quiet)
        try await app.test(.router) { client in
            for headers: HTTPFields in [[:], [.authorization: "Bearer nope"], [.authorization: "Basic s3cret"]] {
                let refused = try await client.execute(uri: "/api/v1/sources/drop/run", method: .post, headers: headers)
                #expect(refused.status == .unauthorized)
                #expect(String(buffer: refused.body).contains(#""code":"unauthorized""#))
                #expect(!String(buffer: refused.body).contains("s3cret"))
            }
            #expect(await engine.board.entry(source.id)?.triggered == false)
            let accepted = try await client.execute(
                uri: "/api/v1/sources/drop/run", method: .post, headers: [.authorization: "Bearer s3cret"])
            #expect(accepted.status == .accepted)
            #expect(await engine.board.entry(source.id)?.triggered == true)
            #expect(try await client.execute(uri: "/status", method: .get).status == .ok)
        }
    }

    /// Only Ctrl-C again ends `--once` at once: a second SIGTERM is what `timeout` sends (to the process, then to its
    /// group), and ending at once left the leases held; orchestrators follow with SIGKILL anyway.
    @Test func onlyASecondInterruptEndsOnceAtOnce() {
        #expect(endsAtOnce(.sigint, stopping: true))
        #expect(!endsAtOnce(.sigterm, stopping: true))
        #expect(!endsAtOnce(.sigint, stopping: false) && !endsAtOnce(.sigterm, stopping: false))
    }

    /// `--once` once shutdown began starts no source: each would still take and release its lease (calls to a storage
    /// that may be slow to answer) only to stop at once. They are reported abandoned, in order.
    @Test func onceStartsNoSourceAfterShutdownBegan() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir) }
        let sources = try ["a", "b", "c"].map {
            SourceConfiguration(id: try SourceID($0), kind: .directory(DirectorySettings(path: dir)))
        }
        let storage = InMemoryStorageClient()
        let engine = try buildEngine(
            configuration: try CollectionConfiguration(environment: ["DATA_DIR": dir]), sources: sources,
            storage: storage, httpClient: HTTPClient.shared, registry: PrometheusCollectorRegistry(),
            logger: Logger.quiet)
        engine.board.stop()
        let reports = await runOnce(engine: engine, sources: sources, limit: 1)
        #expect(reports.map(\.sourceID) == sources.map(\.id))
        #expect(reports.allSatisfy { $0.outcome == .abandoned })
        // No lease was ever taken of any: the first grant is token 1.
        for source in sources {
            let lease = try await storage.acquireLease(sourceID: source.id, owner: "x", ttl: .seconds(5))
            #expect(lease.fencingToken == 1, "\(source.id) was started")
        }
    }

    @Test func aSourceWithoutSuccessBeyondItsThresholdIsStaleAndWarnedOnce() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir) }
        let capture = LogRecorder()
        let source = SourceConfiguration(
            id: try SourceID("quiet"), kind: .directory(DirectorySettings(path: dir)), staleAfter: .seconds(60)
        )
        // Disabled on purpose: never stale, no next run (its flag and alert stayed up for good, "next run: now").
        let disabled = SourceConfiguration(
            id: try SourceID("off"), kind: .directory(DirectorySettings(path: dir)), enabled: false,
            staleAfter: .seconds(60))
        let registry = PrometheusCollectorRegistry()
        var engine = try makeEngine(dir: dir, sources: [source, disabled], registry: registry)
        engine = CollectionEngine(
            board: engine.board, runner: engine.runner, manager: engine.manager, metrics: engine.metrics,
            makeCollector: engine.makeCollector, logger: capture.logger(),
            startedAt: Timestamp.now().adding(.seconds(-120))
        )
        await engine.refreshWatching()
        await engine.refreshWatching()
        #expect(capture.messages(at: .warning) == ["watermark is stale"])
        #expect(await engine.board.entry(source.id)?.stale == true)
        let text = registry.emitToString()
        #expect(text.contains(#"collection_source_stale{source_id="quiet"} 1.0"#), "\(text)")
        #expect(text.contains(#"collection_stale_threshold_seconds{source_id="quiet"} 60.0"#))
        #expect(!text.contains("collection_watermark_timestamp_seconds"))  // no watermark yet: no series
        #expect(await engine.board.entry(disabled.id)?.stale == false)
        #expect(text.contains(#"collection_source_stale{source_id="off"} 0.0"#), "\(text)")
        let status = await ServiceStatus.current(engine: engine, instanceID: "t")
        #expect(status.sources.map(\.nextRunAt) == ["now", nil])
    }

    /// The web view asks the storage for every source's history, a few at a time, and waits for it two seconds at
    /// most: one request per source in turn waited up to the storage's timeout (30 s, more with retries) at every
    /// refresh of a page anyone may open.
    @Test func theWebViewWaitsForTheStoragesHistoryBrieflyAndAsksAFewAtATime() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir) }
        let ids = try (0..<20).map { try SourceID("s\($0)") }
        let storage = InMemoryStorageClient()
        for id in ids {
            _ = try await storage.updateWatermark(
                sourceID: id, timestamp: ts("2026-11-01T00:00:00Z"), status: .success, errorMessage: nil,
                recordsCollected: 3, options: UpdateOptions())
        }
        let answering = try WatermarkManager(
            client: CountingLeases(storage), stateDirectory: dir + "/a", logger: .quiet)
        let all = await DashboardController<BasicRequestContext>.histories(
            of: ids, manager: answering, limit: 5, within: .seconds(30))
        #expect(all.complete && all.runs.count == 20 && all.runs.values.allSatisfy { $0.count == 1 })

        let hanging = CountingLeases(storage, historyHangs: true)
        let silent = try WatermarkManager(client: hanging, stateDirectory: dir + "/b", logger: .quiet)
        let started = ContinuousClock.now
        let none = await DashboardController<BasicRequestContext>.histories(
            of: ids, manager: silent, limit: 5, within: .milliseconds(200))
        #expect(!none.complete && none.runs.isEmpty)
        #expect(ContinuousClock.now - started < .seconds(30), "the page waited for the storage's silence")
        #expect(await hanging.historyRequests == DashboardController<BasicRequestContext>.historyRequests)
    }

    @Test func theWebViewShowsEverySourceHighlightsTroubleAndEscapesWhatItShows() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir) }
        let now = try Self.dropOneRecord(in: dir)
        let good = SourceConfiguration(id: try SourceID("good"), kind: .directory(DirectorySettings(path: dir + "/in")))
        // A folder that is not there fails its runs; its error carries markup that must show as text.
        let bad = SourceConfiguration(
            id: try SourceID("bad"), kind: .directory(DirectorySettings(path: dir + "/<script>alert(1)</script>")),
            staleAfter: .seconds(1))
        let registry = PrometheusCollectorRegistry()
        var engine = try makeEngine(dir: dir, sources: [good, bad], registry: registry)
        engine = CollectionEngine(
            board: engine.board, runner: engine.runner, manager: engine.manager, metrics: engine.metrics,
            makeCollector: engine.makeCollector, logger: Logger.quiet, startedAt: now.adding(.seconds(-120)))
        for source in [good, bad, bad] {
            _ = await engine.board.claimDue(now: Timestamp.now(), limit: 2)
            let report = await engine.execute(source)
            await engine.board.finish(report, nextRunAt: Timestamp.now().adding(.seconds(600)))
        }
        await engine.refreshWatching()
        let app = Application(
            router: buildRouter(engine: engine, registry: registry, instanceID: "web-1"), logger: .quiet)
        try await app.test(.router) { client in
            let page = try await client.execute(uri: "/", method: .get)
            #expect(page.status == .ok && page.headers[.contentType] == "text/html; charset=utf-8")
            let html = String(buffer: page.body)
            #expect(html.contains(#"<meta http-equiv="refresh" content="10">"#))
            #expect(html.contains(#"<tr id="source-good" class="source" data-source-id="good""#), "\(html)")
            #expect(html.contains(#"<tr id="source-bad" class="source stale failing""#))
            #expect(html.contains("×2 in a row"))
            #expect(!html.contains("<script>") && html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"))
            #expect(!html.contains("src=") && !html.contains("href="))  // no external assets
            // The chart of the good source: one run of one record, as a bar with its label.
            #expect(html.contains(#"<svg class="chart""#) && html.contains("success, 1 records"))
        }
    }
}
