import Foundation
import GRDB
import GRDBSQLite
import Logging
import NIOConcurrencyHelpers
import WatermarkCore
import WatermarkStores

/// The watermark store on SQLite: one `DatabasePool` in WAL mode with `synchronous=FULL`, so a write
/// is on disk before the caller is answered, and readers never wait for the writer.
///
/// Every write runs `WatermarkRules` inside its own savepoint of a group-committed transaction
/// (`GroupCommitWriter`): concurrent writes share one commit and one fsync, each is answered after that commit,
/// and a refusal thrown by the rules rolls back its savepoint only, so a refused request changes nothing.
final class SQLiteWatermarkStore: WatermarkStore {
    let writer: any DatabaseWriter
    /// The writer connection's `PRAGMA synchronous` (2: FULL), what a commit waits for, read once the store is open
    /// and shown in `/status`. Asked at every `/status`, it waited for the writer's queue, which the group-commit
    /// writer holds for as long as writes keep arriving: `/status` hung under a steady load of writes.
    let writerSynchronous: Int
    let batcher: GroupCommitWriter
    private let path: String?
    private let policy: WatermarkPolicy
    private let clock: @Sendable () -> Timestamp
    private let logger: Logger
    /// The last write failure that may be lasting (disk full, read-only, I/O error), until a write
    /// succeeds again; `checkHealth` then probes with a real write.
    private let lastWriteFailure = NIOLockedValueBox<String?>(nil)
    /// Watermarks by source, so a GET of an unchanged watermark reads no database. This process is the only
    /// writer of the file (`ProcessLock`), and every write forgets its source before it is answered.
    let cache: ReadCache<SourceID, Watermark>
    /// The one-statement reads of the request path (nil for an in-memory database: they use `writer`).
    private let readers: SQLiteReaders?
    /// The connection that copies the WAL into the database file (nil for an in-memory database).
    private let checkpointer: DatabaseQueue?
    /// No checkpoint starts while a commit may start the WAL over (SQLite's WAL-reset bug).
    let walGuard: WALResetGuard
    /// The WAL's length in frames when the background checkpoint last looked; the writer checkpoints past a bound.
    private let walFrames: NIOLockedValueBox<Int>
    /// The WAL's length as the last `checkpoint()` saw it (tests).
    var walFrameCount: Int { walFrames.withLockedValue { $0 } }
    /// When the writer may checkpoint again: the writer's checkpoints set it, the background pass reads it.
    private let pacing: NIOLockedValueBox<CheckpointPacing>
    /// Background passes that synced the database file ahead of the writer's checkpoint (tests).
    private let databaseSyncs = NIOLockedValueBox(0)
    var backgroundDatabaseSyncs: Int { databaseSyncs.withLockedValue { $0 } }

    /// The connections' settings. Readers keep a 512 KiB page cache, not SQLite's 2 MiB: reads of a large database
    /// are random (the read cache answers the recurring ones) and the OS already caches the file, while each
    /// reader's full cache was part of the peak RSS of a million-source run. The writer keeps the default.
    static var configuration: Configuration {
        var configuration = Configuration()
        configuration.busyMode = .timeout(10)
        configuration.prepareDatabase { db in
            if db.configuration.readonly { try db.execute(sql: "PRAGMA cache_size = -512") }
        }
        return configuration
    }

    /// Opens (creating if needed) the database file at `path` and migrates it; its folder must exist
    /// (`SQLiteDatabaseService` creates it).
    convenience init(
        path: String, policy: WatermarkPolicy, logger: Logger,
        clock: @escaping @Sendable () -> Timestamp = Timestamp.now, cacheCapacity: Int = 5000
    ) throws {
        // Each commit's WAL frames in one write (`WALWriteCoalescing`): the default VFS of the process from now on.
        _ = WALWriteCoalescing.installed
        let pool = try DatabasePool(path: path, configuration: Self.configuration)
        // FULL: the WAL is synced at every commit, so an acknowledged write survives power loss, not only the
        // death of the process. Set on the writer once the pool is open: `DatabasePool` switches its writer
        // to WAL with `synchronous = NORMAL` after `prepareDatabase` ran, so a pragma set there is undone
        // (NORMAL syncs only at checkpoints: 16 fdatasyncs for some 9,000 commits in a 4 s load).
        // The WAL is copied into the database file by a connection of its own (`checkpoint()`), the writer
        // checkpointing only past `writerCheckpointFrames` (see there).
        try pool.writeWithoutTransaction { db in
            try db.execute(sql: "PRAGMA synchronous = FULL")
            try db.execute(sql: "PRAGMA wal_autocheckpoint = 0")
        }
        try self.init(
            writer: pool, path: path, policy: policy, logger: logger, clock: clock, cacheCapacity: cacheCapacity)
    }

    /// Uses an open database; `DatabaseQueue()` gives an in-memory one for tests.
    init(
        writer: any DatabaseWriter, path: String? = nil, policy: WatermarkPolicy, logger: Logger,
        clock: @escaping @Sendable () -> Timestamp = Timestamp.now, cacheCapacity: Int = 5000
    ) throws {
        self.writer = writer
        self.cache = ReadCache(capacity: cacheCapacity)
        let walFrames = NIOLockedValueBox(0)
        self.walFrames = walFrames
        let pacing = NIOLockedValueBox(CheckpointPacing())
        self.pacing = pacing
        let walGuard = WALResetGuard()
        self.walGuard = walGuard
        self.batcher = GroupCommitWriter(writer: writer, walGuard: walGuard) { db in
            // The WAL grew past `writerCheckpointFrames` (as the last background checkpoint saw it): copy what arrived
            // since and let the next commit start the WAL over, unless the writer's last checkpoint was too recent.
            let frames = walFrames.withLockedValue { frames in
                defer { frames = 0 }
                return frames
            }
            guard Self.writerCheckpointDue(frames: frames, pacing) else { return }
            // Not when the background pass runs now (it is doing the copying); a failing disk fails the writes too.
            let start = ContinuousClock.now
            guard (try? walGuard.checkpoint(db, wait: false)) != nil else { return }
            pacing.withLockedValue { $0.checkpointed(from: start, to: .now) }
        }
        self.path = path
        self.policy = policy
        self.logger = logger
        self.clock = clock
        try WatermarkDatabase.migrator.migrate(writer)
        self.writerSynchronous = try writer.writeWithoutTransaction { db in
            walGuard.watch(writer: db)
            return try Int.fetchOne(db, sql: "PRAGMA synchronous") ?? -1
        }
        self.readers = try path.map { path in
            try SQLiteReaders(path: path, count: 4, configuration: Self.configuration, pool: writer)
        }
        self.checkpointer = try path.map { path in try DatabaseQueue(path: path, configuration: Self.configuration) }
    }

    /// WAL frames (4 KiB pages) after which the writer checkpoints too.
    ///
    /// SQLite's automatic checkpoint (at 1,000 frames, by the commit that crossed them) copied the WAL into the
    /// database file and fsynced it while every other write waited: with a million sources written at random,
    /// whose batches touch hundreds of scattered pages, PUT p99 was 0.6 s. So it is off, and `checkpoint()` copies
    /// in the background (every `SQLiteDatabaseService.checkpointInterval`) without waiting for anyone. Only a
    /// checkpoint by the writer itself can start the WAL over, though: another connection never finds the WAL fully
    /// copied while commits keep coming, and the file grew without end (177 MB in 10 s of PUTs at 64 connections).
    /// So once the background saw more than this, the writer checkpoints after its next commit, and finds only what
    /// arrived since the background pass.
    ///
    /// That checkpoint holds every write while it copies and syncs: a millisecond or two on a small database, whose
    /// batches rewrite the same few pages, some 45 ms at a million sources, whose PUTs at 64 connections append
    /// about 40,000 scattered frames a second. There it came three times a second, 14 % of the writer's time (PUT
    /// to 1,000 of the million 6.8-7.5k req/s), so `CheckpointPacing` spaces the writer's checkpoints by 19 times
    /// the last one's length (8.3-9.0k in alternating runs against 8.5-9.8k for a fixed bound of 32,768 frames).
    /// A large bound alone would not do: a WAL grows to its bound before it is reused, and a commit that extends
    /// the file also waits for its size to be journaled (an fdatasync of 22 KiB appended 0.16-0.23 ms, overwritten
    /// 0.10 ms), so one-connection PUT p50 was 650-690 us in the 4 s a fresh 128 MiB WAL took to grow (493-505 us
    /// paced).
    ///
    /// Most of that checkpoint was the sync of the database file, which held every page the background passes had
    /// copied since the writer's checkpoint before: at a million sources written in turn, 200 ms (250 at most) with
    /// passes every 500 ms. So the pass that finds the writer's checkpoint due syncs the file itself first, off the
    /// writer's path, and the writer's checkpoint then syncs only what it copied: 13-16 ms (24 at most), and 33 ms
    /// against 61 for writes to 1,000 of the million sources, over alternating runs of the same throughput.
    static let writerCheckpointFrames = 4096

    /// The writer checkpoints after its next commit: the WAL is past the bound and the pacing allows it now. The
    /// writer asks after each commit, the background pass to sync the database file ahead of it.
    private static func writerCheckpointDue(frames: Int, _ pacing: NIOLockedValueBox<CheckpointPacing>) -> Bool {
        frames >= writerCheckpointFrames && pacing.withLockedValue { $0.allows(at: .now) }
    }

    /// When the writer may checkpoint again: its own checkpoints take at most a twentieth of its time.
    struct CheckpointPacing: Sendable {
        /// The pause after a checkpoint, in multiples of how long it took.
        static let pauseFactor = 19
        private var nextAllowed: ContinuousClock.Instant?

        func allows(at now: ContinuousClock.Instant) -> Bool { nextAllowed.map { now >= $0 } ?? true }

        mutating func checkpointed(from start: ContinuousClock.Instant, to end: ContinuousClock.Instant) {
            nextAllowed = end + (end - start) * Self.pauseFactor
        }
    }

    /// Copies what the WAL holds into the database file without waiting for the writer or any reader (a passive
    /// checkpoint), on the checkpointer's own thread; `SQLiteDatabaseService` calls it every `checkpointInterval`.
    func checkpoint() async {
        guard let checkpointer else { return }
        do {
            let pacing = self.pacing
            let (frames, synced) = try await checkpointer.writeWithoutTransaction { [walGuard] db in
                // Skipped while the WAL is copied whole: nothing to copy, and the WAL-reset race to avoid.
                guard let frames = try walGuard.checkpoint(db, wait: true)?.walFrameCount else { return (0, false) }
                // The writer checkpoints after its next commit: what the passes copied goes to disk now, not then.
                guard Self.writerCheckpointDue(frames: frames, pacing) else { return (frames, false) }
                try Self.syncDatabaseFile(db)
                return (frames, true)
            }
            if synced { databaseSyncs.withLockedValue { $0 += 1 } }
            walFrames.withLockedValue { $0 = frames }
        } catch let error as DatabaseError where error.resultCode == .SQLITE_BUSY {
            // The writer's own checkpoint is running: this one's work is being done.
        } catch {
            logger.warning("WAL checkpoint failed", metadata: ["error": "\(error)"])
        }
    }

    /// Syncs the database file of `db` with SQLite's own file object (its VFS's `xSync`, which a checkpoint calls).
    private static func syncDatabaseFile(_ db: Database) throws {
        var file: UnsafeMutablePointer<sqlite3_file>?
        var code = sqlite3_file_control(db.sqliteConnection, "main", SQLITE_FCNTL_FILE_POINTER, &file)
        if code == SQLITE_OK, let file, let sync = file.pointee.pMethods?.pointee.xSync {
            code = sync(file, SQLITE_SYNC_NORMAL)
        }
        guard code == SQLITE_OK else {
            throw DatabaseError(resultCode: ResultCode(rawValue: code), message: "syncing the database file")
        }
    }

    /// Write transactions committed and the writes they carried (more writes than batches: group commit), in
    /// `/status`.
    func writeBatches() async -> (batches: Int, writes: Int) {
        (batcher.batches, batcher.jobs)
    }

    /// Closes the database: used on shutdown, after the last request was answered.
    func close() throws {
        try checkpointer?.close()
        try readers?.close()
        try writer.close()
    }

    // MARK: WatermarkStore

    func watermark(for sourceID: SourceID) async throws -> Watermark? {
        let (cached, generation) = cache.lookup(sourceID)
        if let cached { return cached }
        // A miss reads on the calling thread: in WAL mode a reader never waits for the writer, so this blocks only
        // for the lookup itself (tens of microseconds), where the asynchronous read hopped to GRDB's reader queue
        // and back.
        let watermark = try readHere { db in try SQLiteTransaction(db: db).watermark(sourceID) }
        if let watermark { cache.store(watermark, for: sourceID, ifGeneration: generation) }
        return watermark
    }

    /// One statement's read on the calling thread (`SQLiteReaders`); GRDB's synchronous read without them (from a
    /// synchronous function, so the asynchronous overload is not chosen).
    private func readHere<T>(_ body: (Database) throws -> T) throws -> T {
        do {
            if let readers { return try readers.read(body) }
            return try writer.read(body)
        } catch {
            throw mapped(error, writing: false)
        }
    }

    func write(_ write: WatermarkWrite) async throws -> WriteOutcome {
        try await transact(forgetting: write.sourceID) { tx, now in
            let snapshot = try tx.snapshot(write.sourceID, idempotencyKey: write.idempotencyKey)
            let plan = try WatermarkRules.apply(write, to: snapshot, now: now, policy: self.policy)
            try tx.persist(plan, replacing: snapshot.watermark)
            return plan.outcome
        }
    }

    func delete(
        _ sourceID: SourceID, precondition: WritePrecondition?, leaseToken: Int64?, attribution: Attribution
    ) async throws {
        try await transact(forgetting: sourceID) { tx, now in
            let snapshot = try tx.snapshot(sourceID, idempotencyKey: nil)
            try tx.persist(
                try WatermarkRules.delete(
                    sourceID, precondition: precondition, leaseToken: leaseToken, attribution: attribution,
                    to: snapshot, now: now, policy: self.policy))
        }
    }

    func list(_ query: WatermarkQuery) async throws -> WatermarkPage {
        let cutoff = query.staleAfter.map { WatermarkRules.staleCutoff(now: clock(), staleAfter: $0) }
        let rows = try await read { db in
            var request = Watermark.order(Watermark.Columns.sourceID)
            if let after = query.after { request = request.filter(Watermark.Columns.sourceID > after) }
            if let status = query.status { request = request.filter(Watermark.Columns.status == status) }
            if let cutoff {
                request = request.filter(
                    Watermark.Columns.lastSuccessfulTimestamp == nil
                        || Watermark.Columns.lastSuccessfulTimestamp < cutoff
                )
            }
            return try request.limit(query.limit + 1).fetchAll(db)
        }
        return WatermarkPage(rows: rows, limit: query.limit)
    }

    /// The source's runs, newest first; a reset source answers them too (the newest is the reset).
    func history(for sourceID: SourceID, limit: Int) async throws -> [WatermarkRun] {
        let runs = try await read { db -> [WatermarkRun] in
            try WatermarkRun.filter(WatermarkRun.Columns.sourceID == sourceID)
                .order(WatermarkRun.Columns.version.desc)
                .limit(limit)
                .fetchAll(db)
        }
        if runs.isEmpty { throw WatermarkError.watermarkNotFound(sourceID) }
        return runs
    }

    func lease(for sourceID: SourceID) async throws -> Lease? {
        let now = clock()
        return try await read { db in try SQLiteTransaction(db: db).lease(sourceID) }.flatMap {
            $0.isLive(at: now) ? $0 : nil
        }
    }

    func acquireLease(for sourceID: SourceID, owner: String, ttl: Duration) async throws -> Lease {
        try await transact { tx, now in
            let snapshot = try tx.snapshot(sourceID, idempotencyKey: nil)
            let lease = try WatermarkRules.acquireLease(
                sourceID, owner: owner, ttl: ttl, to: snapshot, now: now, policy: self.policy)
            try tx.save(lease)
            return lease
        }
    }

    func releaseLease(for sourceID: SourceID, token: Int64?) async throws {
        try await transact { tx, now in
            let snapshot = try tx.snapshot(sourceID, idempotencyKey: nil)
            if let ended = try WatermarkRules.releaseLease(sourceID, token: token, to: snapshot, now: now) {
                try tx.save(ended)
            }
        }
    }

    func summary() async throws -> WatermarkSummary {
        let cutoff = WatermarkRules.staleCutoff(now: clock(), staleAfter: policy.staleAfter)
        return try readHere { db in
            // The totals are kept by triggers; the stale ones are hour buckets kept by triggers plus an index
            // range within one hour (never a scan of the table, nor of every stale source).
            let row = try Row.fetchOne(db.cachedStatement(sql: WatermarkDatabase.summarySQL), arguments: [cutoff])
            return WatermarkSummary(total: row?["total"] ?? 0, failed: row?["failed"] ?? 0, stale: row?["stale"] ?? 0)
        }
    }

    func checkHealth() async throws {
        // O(1): reads the table's first page, whatever the number of watermarks (a COUNT(*) scanned them all).
        try readHere { db in _ = try Int.fetchOne(db.cachedStatement(sql: "SELECT 1 FROM watermark LIMIT 1")) }
        guard let failure = lastWriteFailure.withLockedValue({ $0 }) else { return }
        // The last write failed for a reason that may last (disk full, read-only file): prove that
        // writes work again before calling the service healthy.
        try await transact { tx, now in
            try tx.db.execute(
                sql: "INSERT INTO health_probe (id, checked_at) VALUES (1, ?) "
                    + "ON CONFLICT(id) DO UPDATE SET checked_at = excluded.checked_at",
                arguments: [now]
            )
        }
        logger.notice("Database writable again", metadata: ["previous_error": "\(failure)"])
    }

    func info() async throws -> StoreInfo {
        let journalMode = try await read { db in try String.fetchOne(db, sql: "PRAGMA journal_mode") ?? "unknown" }
        let synchronous = writerSynchronous
        let (batches, writes) = await writeBatches()
        // What durability and group commit look like from outside: FULL means a 2xx write is on disk.
        let details = [
            "journal_mode": journalMode,
            "synchronous": ["off", "normal", "full", "extra"].indices.contains(synchronous)
                ? ["off", "normal", "full", "extra"][synchronous] : "\(synchronous)",
            "write_batches": "\(batches)", "batched_writes": "\(writes)",
        ]
        guard let path else { return StoreInfo(backend: "sqlite", path: ":memory:", sizeBytes: 0, details: details) }
        let absolute = URL(fileURLWithPath: path).standardizedFileURL.path
        let size = ["", "-wal"].reduce(Int64(0)) { total, suffix in
            let attributes = try? FileManager.default.attributesOfItem(atPath: absolute + suffix)
            return total + ((attributes?[.size] as? NSNumber)?.int64Value ?? 0)
        }
        return StoreInfo(backend: "sqlite", path: absolute, sizeBytes: size, details: details)
    }

    // MARK: Plumbing

    private func read<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        do {
            return try await writer.read(body)
        } catch {
            throw mapped(error, writing: false)
        }
    }

    /// Runs `body` in the group-commit writer's next transaction with the clock read inside it, so the order of `now`
    /// values follows the order of commits. As soon as that transaction ended, on the writer's thread and in commit
    /// order: the read cache forgets `forgetting` (a read between the commit and the answer is not served the value
    /// from before it), and the store notes whether writes fail (`lastWriteFailure`).
    private func transact<T: Sendable>(
        forgetting key: SourceID? = nil, _ body: @escaping @Sendable (inout SQLiteTransaction, Timestamp) throws -> T
    ) async throws -> T {
        do {
            let clock = self.clock
            let ended: @Sendable (GroupCommitWriter.Outcome) -> Void = { [cache, lastWriteFailure] outcome in
                if let key { cache.forget(key) }
                switch outcome {
                case .success(let value):
                    // Only a commit that wrote proves the disk takes writes again: one with nothing to write (an
                    // idempotent replay, releasing a lapsed lease) commits on a full disk too, and cleared the failure,
                    // so /health skipped its probe and answered healthy while every real write still failed.
                    // (The cast only while a failure is noted: this runs on the writer's thread for every write.)
                    if lastWriteFailure.withLockedValue({ $0 }) != nil, (value as? (T, Bool))?.1 == true {
                        lastWriteFailure.withLockedValue { $0 = nil }
                    }
                case .failure(let error as DatabaseError):
                    // Noted here, not once the caller resumed: the caller of an earlier commit that wrote, resumed
                    // later, cleared the failure of this one, and /health answered healthy on a full disk.
                    lastWriteFailure.withLockedValue { $0 = Self.detail(of: error) }
                case .failure:
                    break
                }
            }
            let (result, _) = try await batcher.write(ended: ended) { db in
                let before = db.totalChangesCount
                var tx = SQLiteTransaction(db: db)
                let result = try body(&tx, clock())
                return (result, db.totalChangesCount != before)
            }
            return result
        } catch {
            throw mapped(error)
        }
    }

    /// What an operator should check, for the result codes that mean the disk or the file is at fault.
    static func explain(_ code: ResultCode) -> String {
        switch code.primaryResultCode {
        case .SQLITE_FULL: "the disk is full"
        case .SQLITE_READONLY: "the database file or its folder is read-only"
        case .SQLITE_IOERR: "disk I/O error (disk full, file size limit or failing disk)"
        case .SQLITE_CANTOPEN: "the database file cannot be opened (missing folder or permissions)"
        case .SQLITE_CORRUPT, .SQLITE_NOTADB: "the database file is damaged"
        case .SQLITE_BUSY, .SQLITE_LOCKED: "the database is locked by another process"
        default: "SQLite error \(code.rawValue)"
        }
    }

    private static func detail(of error: DatabaseError) -> String {
        "\(explain(error.resultCode))\(error.message.map { " (\($0))" } ?? "")"
    }

    /// Rule refusals pass through; database failures become 503 with a log line.
    private func mapped(_ error: any Error, writing: Bool = true) -> any Error {
        if error is WatermarkError { return error }
        let detail = (error as? DatabaseError).map(Self.detail(of:)) ?? "\(error)"
        logger.error("Database operation failed", metadata: ["error": "\(detail)", "writing": "\(writing)"])
        return WatermarkError.unavailable(detail)
    }
}
