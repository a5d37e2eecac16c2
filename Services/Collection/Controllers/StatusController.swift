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
    @Sendable func health(_ request: Request, context: Context) async throws -> EditedResponse<HealthBody> {
        let stopping = engine.board.isStopping()
        return EditedResponse(
            status: stopping ? .serviceUnavailable : .ok,
            response: HealthBody(status: stopping ? "stopping" : "healthy"))
    }

    /// What the engine knows now; it changes nothing and logs nothing (the scheduler refreshes staleness).
    @Sendable func status(_ request: Request, context: Context) async throws -> ServiceStatus {
        await ServiceStatus.current(engine: engine, instanceID: instanceID)
    }

    /// The registry as it is; the scheduler keeps the watermark gauges current.
    @Sendable func metrics(_ request: Request, context: Context) async throws -> Response {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return Response(
            status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: buffer))
        )
    }
}

extension ServiceStatus {
    /// What the engine knows now, for `/status` and the web view.
    static func current(engine: CollectionEngine, instanceID: String) async -> ServiceStatus {
        let now = engine.clock()
        var sources: [SourceStatus] = []
        for entry in await engine.board.allEntries() {
            let id = entry.source.id
            let known = await engine.manager.lastKnownWatermark(sourceID: id)
            sources.append(
                SourceStatus(
                    sourceID: id.rawValue, type: entry.source.typeName, enabled: entry.source.enabled,
                    running: entry.running, stale: entry.stale,
                    pendingUpdates: await engine.manager.pendingCount(sourceID: id),
                    intervalSeconds: entry.source.interval.components.seconds,
                    staleAfterSeconds: entry.source.staleAfter.components.seconds, rejectedFiles: entry.rejectedFiles,
                    watermark: entry.watermark?.description,
                    watermarkAgeSeconds: entry.watermark.map { now.duration(since: $0).secondsDouble },
                    lastSuccessAt: CollectionEngine.lastSuccess(entry: entry, known: known)?.description,
                    // None while running, and none for a disabled source (it runs only when triggered).
                    nextRunAt: entry.running || !entry.source.enabled
                        ? nil : (entry.nextRunAt?.description ?? "now"),
                    lastError: entry.lastError ?? known.flatMap { $0.status == .failed ? $0.errorMessage : nil },
                    consecutiveFailures: CollectionEngine.consecutiveFailures(entry: entry, known: known),
                    lastRun: entry.lastRun.map(RunStatusBody.init)
                ))
        }
        return ServiceStatus(
            instanceID: instanceID, now: now.description,
            uptimeSeconds: now.duration(since: engine.startedAt).secondsDouble,
            pendingUpdates: await engine.manager.pendingCount(), sources: sources)
    }
}

/// The body of `/health`.
struct HealthBody: ResponseEncodable, Sendable {
    let status: String
}

/// The body of `/status`. Absent values are `null`, never left out (`NullWhenAbsent`), so readers see every field.
struct ServiceStatus: ResponseEncodable, Sendable {
    let status = "running"
    let instanceID: String
    let now: String
    let uptimeSeconds: Double
    let pendingUpdates: Int
    let sources: [SourceStatus]

    enum CodingKeys: String, CodingKey {
        case status, now, sources
        case instanceID = "instance_id"
        case uptimeSeconds = "uptime_seconds"
        case pendingUpdates = "pending_updates"
    }
}

/// One source in `/status`.
struct SourceStatus: Encodable, Sendable {
    let sourceID: String
    let type: String
    let enabled: Bool
    let running: Bool
    let stale: Bool
    let pendingUpdates: Int
    let intervalSeconds: Int64
    let staleAfterSeconds: Int64
    let rejectedFiles: Int
    @NullWhenAbsent var watermark: String?
    @NullWhenAbsent var watermarkAgeSeconds: Double?
    @NullWhenAbsent var lastSuccessAt: String?
    /// A timestamp, "now" when due, `null` while running.
    @NullWhenAbsent var nextRunAt: String?
    @NullWhenAbsent var lastError: String?
    /// Failed runs since the last success.
    let consecutiveFailures: Int64
    @NullWhenAbsent var lastRun: RunStatusBody?

    enum CodingKeys: String, CodingKey {
        case type, enabled, running, stale, watermark
        case sourceID = "source_id"
        case pendingUpdates = "pending_updates"
        case intervalSeconds = "interval_seconds"
        case staleAfterSeconds = "stale_after_seconds"
        case rejectedFiles = "rejected_files"
        case watermarkAgeSeconds = "watermark_age_seconds"
        case lastSuccessAt = "last_success_at"
        case nextRunAt = "next_run_at"
        case lastError = "last_error"
        case consecutiveFailures = "consecutive_failures"
        case lastRun = "last_run"
    }
}

/// A source's last run in `/status`.
struct RunStatusBody: Encodable, Sendable {
    let status: String
    let startedAt: String
    let finishedAt: String
    let recordsCollected: Int64
    let duplicatesDropped: Int64
    let durationSeconds: Double
    @NullWhenAbsent var errorMessage: String?
    let updateQueued: Bool
    let withoutLease: Bool
    let checkpoints: Int
    let rejectedFiles: Int

    init(_ run: RunReport) {
        status = run.outcome.rawValue
        startedAt = run.startedAt.description
        finishedAt = run.finishedAt.description
        recordsCollected = run.recordsCollected
        duplicatesDropped = run.duplicatesDropped
        durationSeconds = run.duration.secondsDouble
        errorMessage = run.errorMessage
        updateQueued = run.updateQueued
        withoutLease = run.withoutLease
        checkpoints = run.checkpoints
        rejectedFiles = run.rejectedFiles
    }

    enum CodingKeys: String, CodingKey {
        case status, checkpoints
        case startedAt = "started_at"
        case finishedAt = "finished_at"
        case recordsCollected = "records_collected"
        case duplicatesDropped = "duplicates_dropped"
        case durationSeconds = "duration_seconds"
        case errorMessage = "error_message"
        case updateQueued = "update_queued"
        case withoutLease = "without_lease"
        case rejectedFiles = "rejected_files"
    }
}

/// Encodes an absent value as `null` where the synthesized code would leave the key out.
@propertyWrapper
struct NullWhenAbsent<Value: Encodable & Sendable>: Encodable, Sendable {
    var wrappedValue: Value?

    init(wrappedValue: Value?) { self.wrappedValue = wrappedValue }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        if let wrappedValue { try container.encode(wrappedValue) } else { try container.encodeNil() }
    }
}
