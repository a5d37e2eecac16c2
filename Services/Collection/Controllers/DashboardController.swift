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

    /// The longest the page waits for the storage's history of its sources: a storage that does not answer leaves the
    /// charts out rather than hold the page for its timeout (30 s, more with retries) at every refresh.
    var historyDeadline = Duration.seconds(2)
    /// History requests in flight at once for one page.
    static var historyRequests: Int { 8 }

    @Sendable func page(_ request: Request, context: Context) async throws -> Response {
        let status = await ServiceStatus.current(engine: engine, instanceID: instanceID)
        let now = engine.clock()
        let ids = status.sources.compactMap { try? SourceID($0.sourceID) }
        let (histories, complete) = await Self.histories(
            of: ids, manager: engine.manager, limit: chartRuns, within: historyDeadline)
        if !complete { context.logger.debug("web view: storage history incomplete") }
        let sources = status.sources.map { source in
            DashboardSource(source, runs: (try? SourceID(source.sourceID)).flatMap { histories[$0] }, now: now)
        }
        let page = DashboardPage(
            instanceID: instanceID, generatedAt: now.description, refreshSeconds: refreshSeconds,
            sourceCount: sources.count, pendingUpdates: status.pendingUpdates, storageUnavailable: !complete,
            sources: sources)
        return Response(
            status: .ok,
            headers: [.contentType: "text/html; charset=utf-8", .cacheControl: "no-store"],
            body: .init(byteBuffer: ByteBuffer(string: page.html)))
    }

    /// The histories of `ids`, asked `historyRequests` at a time, as far as they came within `deadline`; `complete` is
    /// false when one failed or the deadline passed (the rest are then not asked: one failure is enough to know).
    static func histories(
        of ids: [SourceID], manager: WatermarkManager, limit: Int, within deadline: Duration
    ) async -> (runs: [SourceID: [WatermarkRun]], complete: Bool) {
        await withTaskGroup(of: (SourceID, [WatermarkRun]?)?.self) { group in
            group.addTask {
                try? await Task.sleep(for: deadline)
                return nil
            }
            var pending = ids[...]
            func ask() {
                guard let id = pending.popFirst() else { return }
                group.addTask { (id, try? await manager.history(sourceID: id, limit: limit)) }
            }
            for _ in 0..<min(historyRequests, ids.count) { ask() }
            var runs: [SourceID: [WatermarkRun]] = [:]
            var complete = true
            while runs.count < ids.count, let answer = await group.next() {
                guard let (id, history) = answer, let history else {
                    complete = false
                    break
                }
                runs[id] = history
                ask()
            }
            group.cancelAll()
            return (runs, complete)
        }
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
