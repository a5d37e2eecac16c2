import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import NIOFoundationCompat
import Prometheus
import StorageClient
import TestSupport
import Testing
import WatermarkCore

@testable import CollectionService

@Suite("HTTP API")
struct HTTPTests {
    func makeEngine(dir: String, sources: [SourceConfiguration], registry: PrometheusCollectorRegistry) throws
        -> CollectionEngine
    {
        let storage = InMemoryStorageClient()
        let manager = try WatermarkManager(client: storage, stateDirectory: dir + "/.state", logger: Logger.quiet)
        let board = SourceBoard(sources: sources)
        let runner = CollectionRunner(
            manager: manager, sink: NDJSONFileSink(dataDirectory: dir), owner: "t", logger: Logger.quiet)
        return CollectionEngine(
            board: board, runner: runner, manager: manager, metrics: CollectionMetrics(registry: registry),
            makeCollector: { source in
                guard case .directory(let settings) = source.kind else { fatalError("directory only") }
                return DirectoryCollector(
                    settings: settings, ledger: FileLedger(stateDirectory: dir + "/.state", sourceID: source.id))
            },
            logger: Logger.quiet, startedAt: Timestamp.now()
        )
    }

    @Test func healthStatusMetricsAndManualRuns() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir) }
        try FileManager.default.createDirectory(atPath: dir + "/in", withIntermediateDirectories: true)
        let now = Timestamp.now()
        try "{\"id\":\"r1\",\"modified\":\"\(now.adding(.seconds(-60)))\"}\n".write(
            toFile: dir + "/in/a.ndjson", atomically: true, encoding: .utf8)
        try "{broken".write(toFile: dir + "/in/b.json", atomically: true, encoding: .utf8)
        let source = SourceConfiguration(
            id: try SourceID("drop"), kind: .directory(DirectorySettings(path: dir + "/in")), interval: .seconds(3600)
        )
        let registry = PrometheusCollectorRegistry()
        let engine = try makeEngine(dir: dir, sources: [source], registry: registry)
        let router = buildRouter(engine: engine, registry: registry, instanceID: "t")
        let app = Application(router: router, logger: Logger.quiet)
        try await app.test(.router) { client in
            let health = try await client.execute(uri: "/health", method: .get)
            #expect(health.status == .ok)
            #expect(String(buffer: health.body) == #"{"status":"healthy"}"#)

            let unknown = try await client.execute(uri: "/api/v1/sources/nope/run", method: .post)
            #expect(unknown.status == .notFound)
            #expect(String(buffer: unknown.body).contains(#""code":"source_not_found""#))
            let invalid = try await client.execute(uri: "/api/v1/sources/bad%20id/run", method: .post)
            #expect(invalid.status == .badRequest)
            let noRoute = try await client.execute(uri: "/nothing", method: .get)
            #expect(noRoute.status == .notFound && String(buffer: noRoute.body).contains(#""error""#))

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
            #expect(metrics.contains(#"collection_watermark_age_seconds{source_id="drop"}"#))
            #expect(metrics.contains("collection_pending_updates 0"))
            #expect(metrics.contains(#"collection_rejected_files_total{source_id="drop"} 1"#))
        }
    }

    @Test func aSourceWithoutSuccessBeyondItsThresholdIsStaleAndWarnedOnce() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir) }
        let capture = LogRecorder()
        let source = SourceConfiguration(
            id: try SourceID("quiet"), kind: .directory(DirectorySettings(path: dir)), staleAfter: .seconds(60)
        )
        let registry = PrometheusCollectorRegistry()
        var engine = try makeEngine(dir: dir, sources: [source], registry: registry)
        engine = CollectionEngine(
            board: engine.board, runner: engine.runner, manager: engine.manager, metrics: engine.metrics,
            makeCollector: engine.makeCollector, logger: capture.logger(),
            startedAt: Timestamp.now().adding(.seconds(-120))
        )
        await engine.refreshWatching()
        await engine.refreshWatching()
        #expect(capture.messages(at: .warning) == ["watermark is stale"])
        #expect(await engine.board.entry(source.id)?.stale == true)
        #expect(registry.emitToString().contains(#"collection_watermark_stale{source_id="quiet"} 1"#))
    }
}
