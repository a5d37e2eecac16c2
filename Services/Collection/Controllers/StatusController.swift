import Foundation
import Hummingbird
import NIOCore
import Prometheus
import StorageClient
import WatermarkCore

/// `/health`, `/status` and `/metrics`.
struct StatusController<Context: RequestContext>: Sendable {
    let engine: CollectionEngine
    let registry: PrometheusCollectorRegistry
    let instanceID: String

    var endpoints: RouteCollection<Context> {
        let routes = RouteCollection(context: Context.self)
        routes.get("health", use: health)
        routes.get("status", use: status)
        routes.get("metrics", use: metrics)
        return routes
    }

    /// Alive and scheduling. Storage being away is not unhealthy: collection goes on (degraded) and updates
    /// are queued, which `/status` shows.
    @Sendable func health(_ request: Request, context: Context) async throws -> Response {
        let stopping = await engine.board.isStopping()
        let body: [String: Any] = ["status": stopping ? "stopping" : "healthy"]
        return Self.json(body, status: stopping ? .serviceUnavailable : .ok)
    }

    @Sendable func status(_ request: Request, context: Context) async throws -> Response {
        await engine.refreshWatching()
        let now = engine.clock()
        var sources: [[String: Any]] = []
        for entry in await engine.board.allEntries() {
            let id = entry.source.id
            let known = await engine.manager.lastKnownWatermark(sourceID: id)
            let pending = await engine.manager.pendingCount(sourceID: id)
            var item: [String: Any] = [
                "source_id": id.rawValue, "type": entry.source.typeName, "enabled": entry.source.enabled,
                "running": entry.running, "stale": entry.stale, "pending_updates": pending,
                "interval_seconds": entry.source.interval.components.seconds,
                "stale_after_seconds": entry.source.staleAfter.components.seconds,
                "rejected_files": entry.rejectedFiles,
            ]
            item["watermark"] = entry.watermark.map { $0.description } ?? NSNull()
            item["watermark_age_seconds"] = entry.watermark.map { now.duration(since: $0).secondsDouble } ?? NSNull()
            let lastSuccess = CollectionEngine.lastSuccess(entry: entry, known: known)
            item["last_success_at"] = lastSuccess.map { $0.description } ?? NSNull()
            item["next_run_at"] = entry.running ? NSNull() : (entry.nextRunAt.map { $0.description } ?? "now")
            item["last_error"] =
                entry.lastError ?? known.flatMap { $0.status == .failed ? $0.errorMessage : nil } ?? NSNull()
            if let run = entry.lastRun {
                item["last_run"] =
                    [
                        "status": run.outcome.rawValue, "started_at": run.startedAt.description,
                        "finished_at": run.finishedAt.description, "records_collected": run.recordsCollected,
                        "duplicates_dropped": run.duplicatesDropped, "duration_seconds": run.duration.secondsDouble,
                        "error_message": run.errorMessage ?? NSNull(), "update_queued": run.updateQueued,
                        "without_lease": run.withoutLease, "checkpoints": run.checkpoints,
                        "rejected_files": run.rejectedFiles,
                    ] as [String: Any]
            } else {
                item["last_run"] = NSNull()
            }
            sources.append(item)
        }
        let body: [String: Any] = [
            "status": "running", "instance_id": instanceID, "now": now.description,
            "uptime_seconds": now.duration(since: engine.startedAt).secondsDouble,
            "pending_updates": await engine.manager.pendingCount(), "sources": sources,
        ]
        return Self.json(body)
    }

    @Sendable func metrics(_ request: Request, context: Context) async throws -> Response {
        await engine.refreshWatching()
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return Response(
            status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: buffer))
        )
    }

    static func json(_ object: [String: Any], status: HTTPResponse.Status = .ok) -> Response {
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
        return Response(
            status: status, headers: [.contentType: "application/json"],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: data))
        )
    }
}
