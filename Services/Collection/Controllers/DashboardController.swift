import Hummingbird
import Logging
import Mustache
import StorageClient
import WatermarkCore

/// `GET /`: the web view of the sources, one server-rendered HTML page (no script, no external asset) that
/// refreshes itself: per source its type, watermark and age, last run, next run, queued updates and a small
/// inline SVG chart of records per run from the storage's history; stale and failing sources highlighted.
struct DashboardController<Context: RequestContext>: Sendable {
    let engine: CollectionEngine
    let instanceID: String
    var refreshSeconds = 10
    /// Runs shown in each chart.
    var chartRuns = 30

    var endpoints: RouteCollection<Context> {
        let routes = RouteCollection(context: Context.self)
        routes.get("/", use: page)
        return routes
    }

    @Sendable func page(_ request: Request, context: Context) async throws -> Response {
        let status = await ServiceStatus.current(engine: engine, instanceID: instanceID)
        let now = engine.clock()
        var storageUnavailable = false
        var sources: [DashboardSource] = []
        for source in status.sources {
            var runs: [WatermarkRun]?
            if !storageUnavailable, let id = try? SourceID(source.sourceID) {
                do {
                    runs = try await engine.manager.history(sourceID: id, limit: chartRuns)
                } catch {
                    storageUnavailable = true  // one failure is enough: the page must not wait per source
                    context.logger.debug("web view: no history", metadata: ["error": "\(error)"])
                }
            }
            sources.append(DashboardSource(source, runs: runs, now: now))
        }
        let page = DashboardPage(
            instanceID: instanceID, generatedAt: now.description, refreshSeconds: refreshSeconds,
            sourceCount: sources.count, pendingUpdates: status.pendingUpdates, storageUnavailable: storageUnavailable,
            sources: sources)
        return Response(
            status: .ok,
            headers: [.contentType: "text/html; charset=utf-8", .cacheControl: "no-store"],
            body: .init(byteBuffer: ByteBuffer(string: page.html)))
    }
}

/// What the template renders (read by Mustache through reflection: property names are the template's keys).
struct DashboardPage {
    let instanceID: String
    let generatedAt: String
    let refreshSeconds: Int
    let sourceCount: Int
    let pendingUpdates: Int
    let storageUnavailable: Bool
    let sources: [DashboardSource]

    static let template: MustacheTemplate = {
        do {
            return try MustacheTemplate(string: String(decoding: PackageResources.dashboard_mustache, as: UTF8.self))
        } catch {
            // The template is built in, and the web view's tests render it: this is a build defect.
            fatalError("Resources/dashboard.mustache does not parse: \(error)")
        }
    }()

    /// The page: every value HTML-escaped by the template (`{{...}}`).
    var html: String { Self.template.render(self) }
}

struct DashboardSource {
    let id: String
    let type: String
    let enabled: Bool
    let running: Bool
    let stale: Bool
    let failing: Bool
    let watermark: String
    let watermarkAge: String
    let lastStatus: String
    let failuresNote: String?
    let lastError: String?
    let lastRecords: String
    let lastDuration: String
    let nextRun: String
    let pending: Int
    let chart: RecordsChart?
    let chartNote: String

    init(_ source: SourceStatus, runs: [WatermarkRun]?, now: Timestamp) {
        id = source.sourceID
        type = source.type
        enabled = source.enabled
        running = source.running
        stale = source.stale
        failing = source.consecutiveFailures > 0
        watermark = source.watermark ?? "none yet"
        watermarkAge = source.watermarkAgeSeconds.map { Self.age(seconds: $0) } ?? "–"
        lastStatus = source.lastRun?.status ?? "never"
        failuresNote = source.consecutiveFailures > 1 ? "×\(source.consecutiveFailures) in a row" : nil
        lastError = source.lastError
        lastRecords = source.lastRun.map { String($0.recordsCollected) } ?? "–"
        lastDuration = source.lastRun.map { Self.duration(seconds: $0.durationSeconds) } ?? "–"
        nextRun =
            source.running
            ? "running"
            : !source.enabled
                ? "disabled" : source.nextRunAt.map { $0 == "now" ? "now" : Self.until($0, now: now) } ?? "–"
        pending = source.pendingUpdates
        chart = runs.flatMap { RecordsChart(runs: $0) }
        chartNote = runs == nil ? "history unavailable" : "no runs yet"
    }

    /// "3h12m", "45s", "2d4h".
    static func age(seconds: Double) -> String {
        let total = Int64(max(0, seconds))
        let (days, hours, minutes) = (total / 86_400, total % 86_400 / 3600, total % 3600 / 60)
        return days > 0
            ? "\(days)d\(hours)h" : hours > 0 ? "\(hours)h\(minutes)m" : minutes > 0 ? "\(minutes)m" : "\(total)s"
    }

    static func duration(seconds: Double) -> String {
        seconds < 1 ? "\(Int((seconds * 1000).rounded())) ms" : "\(Int(seconds.rounded())) s"
    }

    static func until(_ text: String, now: Timestamp) -> String {
        guard let at = try? Timestamp(rfc3339: text) else { return text }
        let seconds = at.duration(since: now).secondsDouble
        return seconds < 1 ? "now" : "in \(age(seconds: seconds))"
    }
}

/// Bars of records per run, oldest on the left, scaled to the largest run.
struct RecordsChart {
    struct Bar {
        let x: Int
        let y: Int
        let barWidth: Int
        let barHeight: Int
        let status: String
        let label: String
    }

    static let height = 28
    static let barWidth = 5
    static let gap = 1

    let width: Int
    let height = RecordsChart.height
    let baseline = RecordsChart.height - 1
    let bars: [Bar]

    /// `nil` for a history without runs.
    init?(runs: [WatermarkRun]) {
        guard !runs.isEmpty else { return nil }
        let oldestFirst = Array(runs.reversed())
        let most = max(1, oldestFirst.map(\.recordsCollected).max() ?? 1)
        let usable = Double(Self.height - 2)
        bars = oldestFirst.enumerated().map { index, run in
            let scaled = Int((Double(run.recordsCollected) / Double(most) * usable).rounded())
            let barHeight = max(run.recordsCollected > 0 ? 1 : 0, scaled)
            return Bar(
                x: index * (Self.barWidth + Self.gap), y: Self.height - 1 - barHeight, barWidth: Self.barWidth,
                barHeight: barHeight, status: run.status.rawValue,
                label: "\(run.recordedAt): \(run.status.rawValue), \(run.recordsCollected) records")
        }
        width = max(1, oldestFirst.count * (Self.barWidth + Self.gap))
    }
}
