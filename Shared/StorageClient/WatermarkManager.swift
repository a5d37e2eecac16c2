import Foundation
import Logging
import Synchronization
import WatermarkCore

/// The seed's `WatermarkManager` (get, and update with `records_collected`), plus graceful degradation:
/// collection goes on while the Storage Service is unreachable, and nothing is lost.
///
/// - Every watermark read from or written to the storage is kept in `watermarks.json` under the state
///   directory. When the storage is unreachable, `getWatermark` answers from there (the last known value);
///   with no value known it throws: a run that started from its lookback instead could leave a gap before it
///   (the stored mark may be older) that no later run fills.
/// - An update that cannot reach the storage is appended to `pending.json` (durable before the call
///   returns; past `journalFrom` queued updates, as a line of `pending.journal` beside it, see
///   `persistQueued`) and the local value moves as the storage will move it once the update arrives, so the next
///   run continues from there. `replayPending()` sends the queue in order and stops at the first transient
///   failure. An update the storage refuses because of a lease (`lease_required`, `stale_lease`) or a token
///   stays queued: the source's next run replays it under its own lease (`flush(sourceID:leaseToken:)`),
///   unless another collector's lease may have come between. Only an update that can never succeed (a
///   regression, an invalid body, a failed precondition, a lease superseded by another's) leaves the queue,
///   and then it goes to `dead-letter.json` beside it, never just into a log line.
/// - Each logical update gets one idempotency key, stored with the queued entry: replaying an update that
///   did reach the storage before the connection broke (or before this process restarted) applies it once.
/// - Per source, a queued update is always sent before a newer one, so the storage sees the runs in order.
///
/// Calls for one source run one at a time; calls for different sources run concurrently.
///
/// Over 300 lines for a reason: one actor owns the last known values, the queue and the per-source exclusion,
/// and its isolated state stays private to this file; the queue's value types are in `PendingQueue.swift`.
public actor WatermarkManager {
    public let stateDirectory: String
    private let client: any StorageClient
    let logger: Logger
    /// The storage this manager talks to, for the lease calls of `withLease`.
    nonisolated var storage: any StorageClient { client }
    private let clock: @Sendable () -> Timestamp

    private var lastKnown: [SourceID: Watermark]
    /// Sources the storage said it holds no watermark for (since this process started): for them a missing last
    /// known value is known, not unknown.
    private var absentInStorage: Set<SourceID> = []
    private var queue: PendingQueue
    /// Delivered updates taken out of `queue` since `pending.json` was last written, and when that was: a replay
    /// writes the file every `replaySaveEvery` deliveries or second, and when it stops (see `flushCounting`).
    private var unsavedRemovals = 0
    private var queueSavedAt = ContinuousClock.now
    static let replaySaveEvery = 100
    /// Updates queued since `pending.json` was last written whole, each a line of `pending.journal` (none until the
    /// queue holds `journalFrom`); `journalSuspect` when the journal may end in a line cut short (by a crash, or a
    /// failed append that could not be undone): the next update is then written whole, which empties the journal.
    private var journaledUpdates = 0
    private var journalSuspect = false
    static let journalFrom = 64
    /// How often `pending.json` and `watermarks.json` were written, for the tests.
    private(set) var pendingFileWrites = 0
    private(set) var lastKnownFileWrites = 0

    /// Set at shutdown (`stopReplaying`): a replay stops between two deliveries, the rest left queued on disk for the
    /// next start. A replay of an outage's tens of thousands of updates ran to its end, past the grace period of a
    /// rolling update, until the process was killed with its lease held.
    private nonisolated let replayStopped = Atomic(false)

    private var busySources: Set<SourceID> = []
    private var waiters: [SourceID: [CheckedContinuation<Void, Never>]] = [:]

    static let watermarksFile = "watermarks.json"
    static let pendingFile = "pending.json"
    static let pendingJournalFile = "pending.journal"
    static let deadLetterFile = "dead-letter.json"

    /// Opens (or creates) the state directory and loads what an earlier process left there. A corrupt
    /// file is moved aside to `<name>.corrupt`, logged, and replaced by an empty state.
    ///
    /// - Throws: when the directory cannot be created or a file cannot be read at all.
    public init(
        client: any StorageClient, stateDirectory: String, logger: Logger,
        clock: @escaping @Sendable () -> Timestamp = Timestamp.now
    ) throws {
        try FileManager.default.createDirectory(atPath: stateDirectory, withIntermediateDirectories: true)
        self.client = client
        self.stateDirectory = stateDirectory
        self.logger = logger
        self.clock = clock
        let watermarks = try Self.load(
            [Watermark].self, from: (stateDirectory as NSString).appendingPathComponent(Self.watermarksFile),
            logger: logger
        )
        self.lastKnown = Dictionary(watermarks?.map { ($0.sourceID, $0) } ?? [], uniquingKeysWith: { $1 })
        var queue =
            try Self.load(
                PendingQueue.self, from: (stateDirectory as NSString).appendingPathComponent(Self.pendingFile),
                logger: logger
            ) ?? PendingQueue()
        let journal = try Self.readJournal(
            onto: &queue, from: (stateDirectory as NSString).appendingPathComponent(Self.pendingJournalFile),
            logger: logger)
        (journaledUpdates, journalSuspect) = journal
        self.queue = queue
        if !queue.updates.isEmpty {
            logger.notice("Queued watermark updates found", metadata: ["pending": "\(queue.updates.count)"])
        }
    }

    // MARK: Reading

    /// The source's watermark, or `nil` before its first collection.
    ///
    /// When the storage is unreachable (or this source still has queued updates it cannot deliver), the
    /// last known value is returned instead, so collection goes on from where it was.
    ///
    /// - Throws: `StorageClientError.unavailable` when the storage is unreachable and no value is known here (a
    ///   new replica, a lost state directory): `nil` would send the run back to its lookback.
    public func getWatermark(sourceID: SourceID) async throws -> Watermark? {
        try await withSourceLock(sourceID) {
            if hasPending(sourceID), await flush(sourceID, leaseToken: nil) == .stopped {
                return try useLastKnown(sourceID, because: "queued updates could not be delivered")
            }
            do {
                let watermark = try await client.getWatermark(sourceID: sourceID)
                remember(watermark, for: sourceID)
                return watermark
            } catch let error as StorageClientError where error.isTransient {
                return try useLastKnown(sourceID, because: "\(error)")
            }
        }
    }

    /// The value kept locally (last read, written or queued), without asking the storage.
    public func lastKnownWatermark(sourceID: SourceID) -> Watermark? {
        lastKnown[sourceID]
    }

    // MARK: Writing

    /// Records one run. When the storage cannot be reached the update is queued on disk and replayed later;
    /// the result says which happened.
    ///
    /// - Throws: `StorageClientError` when the storage (or, while queueing, the same rules applied to the
    ///   last known value) refuses the update, e.g. a regression or a lost lease; an I/O error when the
    ///   update could neither be sent nor queued.
    @discardableResult
    public func updateWatermark(
        sourceID: SourceID, timestamp: Timestamp?, status: RunStatus, errorMessage: String? = nil,
        recordsCollected: Int64? = nil, options: UpdateOptions = UpdateOptions()
    ) async throws -> WatermarkUpdateResult {
        var options = options
        // One key per logical update, kept with a queued entry: however often it is sent, it applies once.
        options.idempotencyKey = options.idempotencyKey ?? UUID().uuidString
        let update = WatermarkUpdate(
            timestamp: timestamp, status: status, errorMessage: errorMessage, recordsCollected: recordsCollected
        )
        return try await withSourceLock(sourceID) {
            if hasPending(sourceID), await flush(sourceID, leaseToken: options.leaseToken) == .stopped {
                // Older updates of this source are still queued: this one must wait behind them.
                return try enqueue(sourceID, update, options, because: "earlier updates are still queued")
            }
            do {
                let watermark = try await client.updateWatermark(
                    sourceID: sourceID, timestamp: timestamp, status: status, errorMessage: errorMessage,
                    recordsCollected: recordsCollected, options: options
                )
                remember(watermark, for: sourceID)
                return .applied(watermark)
            } catch let error as StorageClientError where error.isTransient {
                return try enqueue(sourceID, update, options, because: "\(error)")
            }
        }
    }

    /// The seed's call with the caller's lease: `update_watermark(source_id, timestamp, status, error_message)`
    /// plus the count and the fencing token of the lease the caller holds on the source.
    @discardableResult
    public func updateWatermark(
        sourceID: SourceID, timestamp: Timestamp?, status: RunStatus, errorMessage: String? = nil,
        recordsCollected: Int64? = nil, leaseToken: Int64?
    ) async throws -> WatermarkUpdateResult {
        try await updateWatermark(
            sourceID: sourceID, timestamp: timestamp, status: status, errorMessage: errorMessage,
            recordsCollected: recordsCollected, options: UpdateOptions(leaseToken: leaseToken)
        )
    }

    // MARK: Replaying

    /// Sends this source's queued updates, oldest first, under the lease the caller holds now: each is sent
    /// with `leaseToken` when it was queued under that lease, the one granted right before it (this same
    /// collector's, expired: tokens grow by one a grant), or none (it ran through an outage). One queued under
    /// an older lease is dead-lettered (`stale_lease`): another collector's lease may have come between, and
    /// under the new token it would overwrite that collector's work. A run calls this right after taking its
    /// lease, so what a killed or cut-off run queued is delivered in order before anything new.
    ///
    /// - Returns: how many were applied and dead-lettered, and how many are still queued.
    @discardableResult
    public func flush(sourceID: SourceID, leaseToken: Int64?) async -> ReplaySummary {
        let outcome = await withSourceLockNonThrowing(sourceID) {
            await flushCounting(sourceID, leaseToken: leaseToken)
        }
        return ReplaySummary(
            applied: outcome.applied, dropped: outcome.dropped, remaining: pendingCount(sourceID: sourceID)
        )
    }

    /// The updates the storage refused for good, oldest first, with the reason (kept for an operator).
    public func deadLetters() -> [DeadLetter] {
        let path = (stateDirectory as NSString).appendingPathComponent(Self.deadLetterFile)
        guard let data = try? DurableFile.read(path) else { return [] }
        return (try? JSONDecoder().decode([DeadLetter].self, from: data)) ?? []
    }

    /// Sends the queued updates, oldest first. Stops at the first transient failure (the storage is still
    /// away; the rest stays queued) and drops updates the storage refuses for good.
    @discardableResult
    public func replayPending() async -> ReplaySummary {
        var summary = ReplaySummary()
        var seen = Set<SourceID>()
        let sources = queue.updates.map(\.sourceID).filter { seen.insert($0).inserted }
        for sourceID in sources {
            let outcome = await withSourceLockNonThrowing(sourceID) {
                await flushCounting(sourceID, leaseToken: nil)
            }
            summary.applied += outcome.applied
            summary.dropped += outcome.dropped
            if outcome.result == .stopped, outcome.unreachable || replayStopped.load(ordering: .relaxed) { break }
        }
        summary.remaining = queue.updates.count
        if summary.applied + summary.dropped > 0 {
            logger.info(
                "Replayed queued watermark updates",
                metadata: [
                    "applied": "\(summary.applied)", "dropped": "\(summary.dropped)",
                    "remaining": "\(summary.remaining)",
                ]
            )
        }
        return summary
    }

    /// Stops every replay at its next delivery, for good: the process is shutting down.
    public nonisolated func stopReplaying() {
        replayStopped.store(true, ordering: .relaxed)
    }

    /// Updates waiting for the storage, of one source or of all.
    public func pendingCount(sourceID: SourceID? = nil) -> Int {
        guard let sourceID else { return queue.updates.count }
        return queue.updates.count { $0.sourceID == sourceID }
    }

    /// The source's runs as the storage keeps them, newest first (for status pages); empty for a source without
    /// runs. Throws when the storage cannot be asked.
    public func history(sourceID: SourceID, limit: Int) async throws -> [WatermarkRun] {
        do {
            return try await client.history(sourceID: sourceID, limit: limit)
        } catch StorageClientError.notFound {
            return []
        }
    }

    /// The queued updates, oldest first (for status pages).
    public func pendingUpdates(sourceID: SourceID? = nil) -> [PendingUpdate] {
        queue.updates.filter { sourceID == nil || $0.sourceID == sourceID }
    }

    // MARK: - Internals

    private func hasPending(_ sourceID: SourceID) -> Bool {
        queue.updates.contains { $0.sourceID == sourceID }
    }

    enum FlushResult: Equatable {
        /// The source has nothing queued any more.
        case drained
        /// Updates are still queued: the storage is unreachable, or wants a lease this call does not hold.
        case stopped
    }

    private struct FlushOutcome: Sendable {
        var result: FlushResult
        var applied = 0
        var dropped = 0
        /// Stopped because the storage did not answer (rather than because of a lease).
        var unreachable = false
        /// The storage's answer to the last update delivered.
        var lastAnswer: Watermark?
    }

    /// Sends this source's queued updates in order. The caller holds the source's lock.
    private func flush(_ sourceID: SourceID, leaseToken: Int64?) async -> FlushResult {
        await flushCounting(sourceID, leaseToken: leaseToken).result
    }

    /// Whether the storage could accept `error`'s update later: the lease or the token may change, the
    /// storage may come back. An answer that is not the service's (`http_<status>`: a proxy or a wrong route
    /// answered) never judged the update. Everything else (a regression, an invalid body, a failed precondition)
    /// is final for that update.
    static func mayStillSucceed(_ error: StorageClientError) -> Bool {
        if error.isTransient { return true }
        switch error {
        case .unauthorized: return true
        case .invalidRequest(let code, _): return code.hasPrefix("http_")
        case .conflict: return error.isLeaseRefusal
        default: return false
        }
    }

    private func flushCounting(_ sourceID: SourceID, leaseToken: Int64?) async -> FlushOutcome {
        let outcome = await deliverQueued(sourceID, leaseToken: leaseToken)
        // Remembered once a replay stops, not at each delivery (each a write of `watermarks.json` and a pass over
        // the queue): the value on disk meanwhile is the one projected when the updates were queued.
        if let answer = outcome.lastAnswer { remember(projectingQueued(onto: answer, for: sourceID), for: sourceID) }
        if unsavedRemovals > 0 {
            do {
                try saveQueue()
            } catch {
                // Sent again later, each with its idempotency key: applied once.
                logger.error(
                    "Cannot write the watermark queue", metadata: ["source_id": "\(sourceID)", "error": "\(error)"])
            }
        }
        return outcome
    }

    private func deliverQueued(_ sourceID: SourceID, leaseToken: Int64?) async -> FlushOutcome {
        var outcome = FlushOutcome(result: .drained)
        if let leaseToken, !carryQueued(sourceID, to: leaseToken) {
            outcome.result = .stopped
            return outcome
        }
        while let entry = queue.updates.first(where: { $0.sourceID == sourceID }) {
            if replayStopped.load(ordering: .relaxed) {
                outcome.result = .stopped
                return outcome
            }
            var options = entry.options
            if let leaseToken {
                if let queued = options.leaseToken, queued != leaseToken {
                    // Queued under a lease older than the one before this one: a grant to another collector may
                    // have come between, whose work this update would overwrite under a token it was not made with.
                    let error = StorageClientError.conflict(
                        code: "stale_lease",
                        message: "queued under lease token \(queued); leases were granted since (this run holds "
                            + "\(leaseToken)), possibly to another collector")
                    if drop(entry, because: error, outcome: &outcome) { continue }
                    return outcome
                }
                options.leaseToken = leaseToken
            }
            do {
                let watermark = try await client.updateWatermark(
                    sourceID: sourceID, timestamp: entry.update.timestamp, status: entry.update.status,
                    errorMessage: entry.update.errorMessage, recordsCollected: entry.update.recordsCollected,
                    options: options
                )
                removeDelivered(entry)
                outcome.lastAnswer = watermark
                outcome.applied += 1
                logger.info(
                    "Queued watermark update delivered",
                    metadata: [
                        "source_id": "\(sourceID)", "sequence": "\(entry.sequence)", "version": "\(watermark.version)",
                        "status": "\(watermark.status)",
                    ]
                )
            } catch let error as StorageClientError where !Self.mayStillSucceed(error) {
                guard drop(entry, because: error, outcome: &outcome) else { return outcome }
            } catch let error as StorageClientError where !error.isTransient {
                // A lease or token problem: it can succeed under the source's lease, so it stays queued.
                logger.notice(
                    "Queued watermark update kept - the storage wants the source's lease",
                    metadata: [
                        "source_id": "\(sourceID)", "sequence": "\(entry.sequence)", "code": "\(error.code ?? "-")",
                        "pending": "\(pendingCount(sourceID: sourceID))",
                    ]
                )
                outcome.result = .stopped
                return outcome
            } catch {
                logger.warning(
                    "Queued watermark update not delivered - storage unavailable",
                    metadata: [
                        "source_id": "\(sourceID)", "pending": "\(pendingCount(sourceID: sourceID))",
                        "error": "\(error)",
                    ]
                )
                outcome.result = .stopped
                outcome.unreachable = true
                return outcome
            }
        }
        return outcome
    }

    /// Moves `entry` to the dead-letter file for `error`; `false` (the outcome stopped) when the files cannot be
    /// written.
    private func drop(_ entry: PendingUpdate, because error: StorageClientError, outcome: inout FlushOutcome) -> Bool {
        do {
            try deadLetter(entry, because: error)
            try removeFromQueue(entry)
        } catch {
            logger.error(
                "Cannot write the watermark queue", metadata: ["source_id": "\(entry.sourceID)", "error": "\(error)"])
            outcome.result = .stopped
            return false
        }
        outcome.dropped += 1
        logger.error(
            "Queued watermark update refused by storage - moved to the dead-letter file",
            metadata: [
                "source_id": "\(entry.sourceID)", "sequence": "\(entry.sequence)", "code": "\(error.code ?? "-")",
                "error": "\(error)", "path": "\(deadLetterPath)",
            ]
        )
        // The local value assumed this update would apply; the next successful read replaces it.
        return true
    }

    /// `carryForward`, a failure to write the queue logged and answered false (the updates stay under their token:
    /// a replay stops, a renewal goes on with them dead-lettered at worst).
    @discardableResult
    func carryQueued(_ sourceID: SourceID, to token: Int64) -> Bool {
        do {
            try carryForward(sourceID, to: token)
            return true
        } catch {
            logger.error(
                "Cannot write the watermark queue", metadata: ["source_id": "\(sourceID)", "error": "\(error)"])
            return false
        }
    }

    /// Tokens grow by one with every grant: a lease `token` held now, granted right after the one this source's
    /// queued updates were made under, went to this collector with no other in between, and those updates are its
    /// own work. They are marked with the new token (on disk, before anything is sent), so that the next grant
    /// carries them on again even if the storage goes away before they are delivered.
    private func carryForward(_ sourceID: SourceID, to token: Int64) throws {
        guard queue.updates.contains(where: { $0.sourceID == sourceID && $0.options.leaseToken == token - 1 }) else {
            return
        }
        var next = queue
        next.updates = next.updates.map { entry in
            guard entry.sourceID == sourceID, entry.options.leaseToken == token - 1 else { return entry }
            var options = entry.options
            options.leaseToken = token
            return PendingUpdate(
                sequence: entry.sequence, sourceID: entry.sourceID, update: entry.update, options: options,
                queuedAt: entry.queuedAt)
        }
        try save(next, to: Self.pendingFile)
        queue = next
    }

    private var deadLetterPath: String { (stateDirectory as NSString).appendingPathComponent(Self.deadLetterFile) }

    /// Appends `entry` and the storage's refusal to the dead-letter file (durable before it returns). A file that
    /// cannot be read is moved aside first, as the other state files are: rewritten with the new letter alone,
    /// the letters it held were gone.
    private func deadLetter(_ entry: PendingUpdate, because error: StorageClientError) throws {
        var letters = try Self.load([DeadLetter].self, from: deadLetterPath, logger: logger) ?? []
        letters.append(DeadLetter(update: entry, code: error.code, reason: "\(error)", refusedAt: clock()))
        try save(letters, to: Self.deadLetterFile)
    }

    private func enqueue(
        _ sourceID: SourceID, _ update: WatermarkUpdate, _ options: UpdateOptions, because reason: String
    ) throws -> WatermarkUpdateResult {
        do {
            // What the storage checks on the wire, by the same code: the update's rules and the key's rule.
            try update.validate()
            if let key = options.idempotencyKey { try WatermarkRules.validateIdempotencyKey(key) }
        } catch let error as WatermarkError {
            throw StorageClientError(error)
        }
        // The same rules the storage will apply, run on the last known value: a refusal is reported now
        // (as the storage would), and the local value moves exactly as the storage's will.
        let projected = try Self.project(
            update, for: sourceID, force: options.force, onto: lastKnown[sourceID], now: clock()
        )
        var next = queue
        next.append(sourceID: sourceID, update: update, options: options, queuedAt: clock())
        try persistQueued(next)
        queue = next
        // Projected onto nothing known (the storage was never reached for this source), a value without a mark of
        // success is a guess ("never collected") that the next run would take for the storage's and start from its
        // lookback: it stays unknown until the storage answers. A mark of success is the caller's own claim.
        let baseKnown = lastKnown[sourceID] != nil || absentInStorage.contains(sourceID)
        if baseKnown || projected.lastSuccessfulTimestamp != nil { remember(projected, for: sourceID) }
        let pending = pendingCount(sourceID: sourceID)
        logger.warning(
            "Storage unavailable - watermark update queued",
            metadata: [
                "source_id": "\(sourceID)", "status": "\(update.status)", "pending": "\(pending)", "error": "\(reason)",
            ]
        )
        return .queued(projected, pending: pending)
    }

    private func removeFromQueue(_ entry: PendingUpdate) throws {
        var next = queue
        next.updates.removeAll { $0.sequence == entry.sequence }
        try save(next, to: Self.pendingFile)
        queue = next
    }

    /// Takes a delivered update out of the queue, writing the file every `replaySaveEvery` deliveries or second
    /// only. Rewritten whole at each delivery, a replay of n queued updates wrote n files of up to n entries (an
    /// outage of two days with a hundred sources queues tens of thousands: hours of writing, the actor held, every
    /// source waiting). An update delivered and still in the file after a crash is sent again with its idempotency
    /// key, which the storage answers with the outcome it already applied, as long as it keeps the key (a day)
    /// (a reset of the source meanwhile keeps it too); past that, such
    /// an update is applied again (a success is then refused as a regression and dead-lettered; a failure counted
    /// twice). A write that fails is tried again at the next delivery and when the replay stops.
    private func removeDelivered(_ entry: PendingUpdate) {
        queue.updates.removeAll { $0.sequence == entry.sequence }
        unsavedRemovals += 1
        guard unsavedRemovals >= Self.replaySaveEvery || ContinuousClock.now - queueSavedAt >= .seconds(1) else {
            return
        }
        do {
            try saveQueue()
        } catch {
            logger.error(
                "Cannot write the watermark queue", metadata: ["source_id": "\(entry.sourceID)", "error": "\(error)"])
        }
    }

    /// Writes the queue as it is now, with any delivered updates taken out.
    private func saveQueue() throws {
        try save(queue, to: Self.pendingFile)
    }

    private var journalPath: String {
        (stateDirectory as NSString).appendingPathComponent(Self.pendingJournalFile)
    }

    /// Makes `next`, the queue with one update appended, durable. Rewritten whole at each update, the queue of an
    /// outage cost n files of up to n entries for n updates (two days of a hundred sources, tens of thousands: the
    /// actor held for seconds per update, every source waiting, and gigabytes written). A small queue is still
    /// written whole; from `journalFrom` updates on, the new one is appended as a line of `pending.journal` and
    /// synced, and the whole file is written again only once the journal holds half the queue, so each update
    /// costs a line and, spread over them, a constant share of a rewrite.
    private func persistQueued(_ next: PendingQueue) throws {
        guard let entry = next.updates.last, next.updates.count > Self.journalFrom, !journalSuspect,
            journaledUpdates < next.updates.count / 2
        else {
            try save(next, to: Self.pendingFile)
            return
        }
        do {
            try DurableFile.appendLines(try JSONEncoder().encode(entry) + Data("\n".utf8), to: journalPath)
        } catch let error as DurableFile.IOError {
            // appendLines cut the journal back; should that have failed too, the next update is written whole.
            journalSuspect = true
            throw error
        }
        journaledUpdates += 1
    }

    /// Adds to `queue` (read from `pending.json`) the updates that `pending.journal` holds beyond it; returns how many
    /// it held and whether the next update must be written whole (the journal ends in a cut line, or has damaged
    /// ones). A line of an update the whole file already holds or has seen delivered (its sequence below the
    /// file's next one: a crash after a whole write, before the journal was emptied) is skipped.
    private static func readJournal(
        onto queue: inout PendingQueue, from path: String, logger: Logger
    ) throws -> (journaled: Int, suspect: Bool) {
        guard let journal = try DurableFile.journalLines(path) else { return (0, false) }
        let decoder = JSONDecoder()
        var (journaled, damaged) = (0, 0)
        for line in journal.lines {
            guard let entry = try? decoder.decode(PendingUpdate.self, from: line) else {
                damaged += 1
                continue
            }
            guard entry.sequence >= queue.nextSequence else { continue }
            queue.updates.append(entry)
            queue.nextSequence = entry.sequence + 1
            journaled += 1
        }
        if damaged > 0 {
            // Kept for inspection; the journal itself is emptied by the next whole write, which holds its other lines.
            let copy = path + ".damaged-\(Timestamp.now())"
            try? FileManager.default.copyItem(atPath: path, toPath: copy)
            logger.error(
                "Queued watermark updates damaged on disk - skipped",
                metadata: ["path": "\(path)", "lines": "\(damaged)", "copied_to": "\(copy)"])
        }
        return (journaled, journal.cut || damaged > 0)
    }

    private func useLastKnown(_ sourceID: SourceID, because reason: String) throws -> Watermark? {
        let watermark = lastKnown[sourceID]
        guard watermark != nil || absentInStorage.contains(sourceID) else {
            logger.warning(
                "Storage unavailable and no last known watermark - not collecting",
                metadata: ["source_id": "\(sourceID)", "error": "\(reason)"]
            )
            throw StorageClientError.unavailable(underlying: NoLastKnownWatermark(sourceID: sourceID, reason: reason))
        }
        logger.warning(
            "Storage unavailable - using last known watermark",
            metadata: [
                "source_id": "\(sourceID)",
                "last_successful_timestamp": "\(watermark?.lastSuccessfulTimestamp?.description ?? "null")",
                "error": "\(reason)",
            ]
        )
        return watermark
    }

    /// Keeps the storage's answer locally; `nil` (the storage has none: a reset source) forgets it.
    private func remember(_ watermark: Watermark?, for sourceID: SourceID) {
        if watermark == nil { absentInStorage.insert(sourceID) } else { absentInStorage.remove(sourceID) }
        guard lastKnown[sourceID] != watermark else { return }
        lastKnown[sourceID] = watermark
        persistLastKnown()
    }

    /// `watermark` (the storage's answer to a queued update) with the source's updates still queued applied to it,
    /// as the storage will apply them: remembered alone, it moved the last known mark back below updates not yet
    /// delivered, and a run during the rest of the outage started from there and queued a mark behind them, which
    /// their replay then refused as a regression.
    private func projectingQueued(onto watermark: Watermark, for sourceID: SourceID) -> Watermark {
        var projected = watermark
        for entry in queue.updates where entry.sourceID == sourceID {
            if let next = try? Self.project(
                entry.update, for: sourceID, force: entry.options.force, onto: projected, now: clock())
            {
                projected = next
            }
        }
        return projected
    }

    private func persistLastKnown() {
        let all = lastKnown.values.sorted { $0.sourceID < $1.sourceID }
        do {
            try save(all, to: Self.watermarksFile)
        } catch {
            // The cache is a fallback only; the storage (or the queue) still holds the truth.
            logger.warning("Cannot write the local watermark state", metadata: ["error": "\(error)"])
        }
    }

    private func save(_ value: some Encodable, to name: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let data = try encoder.encode(value)
        try DurableFile.write(data, to: (stateDirectory as NSString).appendingPathComponent(name))
        if name == Self.watermarksFile { lastKnownFileWrites += 1 }
        if name == Self.pendingFile {
            // Every queue written is the one in memory, changed: delivered updates taken out are now out of the file.
            pendingFileWrites += 1
            unsavedRemovals = 0
            queueSavedAt = .now
            // The journal's lines are all in the file now (a crash before this leaves them to be skipped at the next
            // start: their sequences are below the file's next one).
            guard journaledUpdates > 0 || journalSuspect else { return }
            do {
                try DurableFile.write(Data(), to: journalPath)
                (journaledUpdates, journalSuspect) = (0, false)
            } catch {
                journalSuspect = true
                logger.warning("Cannot empty the watermark queue's journal", metadata: ["error": "\(error)"])
            }
        }
    }

    private static func load<T: Decodable>(_ type: T.Type, from path: String, logger: Logger) throws -> T? {
        guard let data = try DurableFile.read(path) else { return nil }
        do {
            return try JSONDecoder().decode(T.self, from: data)
        } catch {
            let aside = path + ".corrupt"
            logger.error(
                "Local watermark state is corrupt - starting empty",
                metadata: ["path": "\(path)", "moved_to": "\(aside)", "error": "\(error)"]
            )
            try? FileManager.default.removeItem(atPath: aside)
            try DurableFile.moveAside(path, to: aside)
            return nil
        }
    }

    /// What the storage will make of `update` on top of `existing`, by the shared rules. Lease and
    /// precondition are left to the storage (the local value cannot know the live lease or version).
    static func project(
        _ update: WatermarkUpdate, for sourceID: SourceID, force: Bool, onto existing: Watermark?, now: Timestamp
    ) throws -> Watermark {
        do {
            let write = WatermarkWrite(sourceID: sourceID, update: update, force: force)
            let snapshot = WatermarkSnapshot(watermark: existing)
            return try WatermarkRules.apply(write, to: snapshot, now: now, policy: WatermarkPolicy()).outcome.watermark
        } catch let error as WatermarkError {
            throw StorageClientError(error)
        }
    }

    // MARK: Per-source exclusion

    private func withSourceLock<T: Sendable>(_ sourceID: SourceID, _ body: () async throws -> T) async throws -> T {
        await lock(sourceID)
        defer { unlock(sourceID) }
        return try await body()
    }

    private func withSourceLockNonThrowing<T: Sendable>(_ sourceID: SourceID, _ body: () async -> T) async -> T {
        await lock(sourceID)
        defer { unlock(sourceID) }
        return await body()
    }

    private func lock(_ sourceID: SourceID) async {
        if busySources.insert(sourceID).inserted { return }
        // Ownership is handed over by `unlock`, so on resumption the lock is held.
        await withCheckedContinuation { waiters[sourceID, default: []].append($0) }
    }

    private func unlock(_ sourceID: SourceID) {
        if var queued = waiters[sourceID], !queued.isEmpty {
            let next = queued.removeFirst()
            waiters[sourceID] = queued.isEmpty ? nil : queued
            next.resume()
        } else {
            busySources.remove(sourceID)
        }
    }
}

/// The storage is unreachable and this collector has no value of its own for the source: it does not collect
/// rather than start from the source's lookback.
public struct NoLastKnownWatermark: Error, CustomStringConvertible {
    public let sourceID: SourceID
    public let reason: String

    public var description: String {
        "no last known watermark of \(sourceID) while the storage is unreachable (\(reason))"
    }
}
