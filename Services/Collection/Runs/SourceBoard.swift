import Synchronization
import WatermarkCore

/// The live state of every source: what runs, what is due, how the last run went. The scheduler claims runs
/// here (so a source never runs twice at once in this process), the HTTP API triggers and reads it.
actor SourceBoard {
    struct Entry: Sendable {
        var source: SourceConfiguration
        var running = false
        /// A run was requested (API or start-up) and waits for a free slot.
        var triggered = false
        var nextRunAt: Timestamp?
        var lastRun: RunReport?
        var lastError: String?
        var lastSuccessAt: Timestamp?
        /// The source's watermark as last known (storage, or the local state when storage is away).
        var watermark: Timestamp?
        var stale = false
        /// Drop-folder files moved to `.rejected/` since this process started.
        var rejectedFiles = 0
        /// Failed runs since the last success in this process.
        var consecutiveFailures = 0
    }

    enum TriggerResult: Sendable, Equatable {
        case accepted
        case alreadyRunning
        case unknownSource
        /// The source's configuration lacks what a run needs (`SourceConfiguration.cannotRun`).
        case cannotRun(String)
    }

    private(set) var entries: [SourceID: Entry] = [:]
    let order: [SourceID]
    /// Open once shutdown began; a lock rather than actor state, so graceful shutdown (a synchronous callback)
    /// can open it without starting a task, and the running runs wait on it while they wait for a page.
    nonisolated let stopping = Latch()
    /// Signalled whenever the scheduler has something new to do: a trigger, a finished run, shutdown.
    nonisolated let wakeup = Wakeup()
    /// Signalled at shutdown only, for the scheduler's maintenance loop (each `Wakeup` has one sleeper).
    nonisolated let stopped = Wakeup()

    init(sources: [SourceConfiguration]) {
        order = sources.map(\.id)
        for source in sources { entries[source.id] = Entry(source: source) }
    }

    nonisolated func isStopping() -> Bool { stopping.isOpen }
    nonisolated func stop() {
        stopping.open()
        wakeup.signal()
        stopped.signal()
    }

    func entry(_ id: SourceID) -> Entry? { entries[id] }
    func allEntries() -> [Entry] { order.compactMap { entries[$0] } }
    var runningCount: Int { entries.values.count { $0.running } }

    /// Asks for a run now. A source that is running answers `alreadyRunning`; a pending request is coalesced.
    func trigger(_ id: SourceID) -> TriggerResult {
        guard var entry = entries[id] else { return .unknownSource }
        if let reason = entry.source.cannotRun { return .cannotRun(reason) }
        guard !entry.running else { return .alreadyRunning }
        entry.triggered = true
        entries[id] = entry
        wakeup.signal()
        return .accepted
    }

    /// Marks up to `limit` due sources as running and returns them: triggered ones first, then the longest due
    /// (never run first), then in the configuration's order. By order alone, sources early in the file that fall
    /// due again while the slots are busy took every freed slot and one further down never ran.
    func claimDue(now: Timestamp, limit: Int) -> [SourceConfiguration] {
        guard !isStopping(), limit > 0 else { return [] }
        let due = order.enumerated().compactMap { position, id in entries[id].map { (position, $0) } }.filter {
            let entry = $0.1
            return !entry.running
                && (entry.triggered || (entry.source.enabled && (entry.nextRunAt.map { $0 <= now } ?? true)))
        }.sorted { lhs, rhs in
            if lhs.1.triggered != rhs.1.triggered { return lhs.1.triggered }
            if lhs.1.nextRunAt != rhs.1.nextRunAt {
                guard let left = lhs.1.nextRunAt else { return true }
                guard let right = rhs.1.nextRunAt else { return false }
                return left < right
            }
            return lhs.0 < rhs.0
        }.map(\.1)
        let claimed = Array(due.prefix(limit))
        for entry in claimed {
            entries[entry.source.id]?.running = true
            entries[entry.source.id]?.triggered = false
        }
        return claimed.map(\.source)
    }

    /// When the next claim can find something: the earliest next run of an enabled source that is not running
    /// (`nil` when there is none; a trigger or a finished run signals `wakeup`).
    func nextDue() -> Timestamp? {
        entries.values.filter { !$0.running && $0.source.enabled }.compactMap(\.nextRunAt).min()
    }

    func finish(_ report: RunReport, nextRunAt: Timestamp) {
        guard var entry = entries[report.sourceID] else { return }
        entry.running = false
        entry.lastRun = report
        entry.nextRunAt = nextRunAt
        entry.rejectedFiles += report.rejectedFiles
        switch report.outcome {
        case .success:
            entry.lastError = nil
            entry.consecutiveFailures = 0
            entry.lastSuccessAt = report.finishedAt
            entry.watermark = report.watermark
        case .failed:
            entry.lastError = report.errorMessage
            entry.consecutiveFailures += 1
        case .skipped, .abandoned:
            break
        }
        entries[report.sourceID] = entry
        wakeup.signal()
    }

    func setWatermark(_ id: SourceID, _ timestamp: Timestamp?) {
        entries[id]?.watermark = timestamp
    }

    /// Updates the stale flag; returns `true` when the source just became stale (worth one warning).
    func setStale(_ id: SourceID, _ stale: Bool) -> Bool {
        guard let was = entries[id]?.stale else { return false }
        entries[id]?.stale = stale
        return stale && !was
    }
}
