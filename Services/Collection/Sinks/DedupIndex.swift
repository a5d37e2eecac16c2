import Foundation
import GRDB
import GRDBSQLite
import NIOConcurrencyHelpers

/// The keys (id, version) of every record in one source's NDJSON sink, in SQLite, so a run checks each record
/// it fetches against everything ever written without re-reading the sink or holding its keys in memory.
///
/// The sink is the truth and the index follows it: keys are added only after their lines are fsynced, together
/// with how far each sink file is indexed (`indexed_file.size`, always the end of a complete line). Opening
/// the index catches up with whatever the sink holds past those sizes (a crash between the sink's fsync and
/// the index's commit), so an index that lags, or is lost, or was never there (an existing sink, an upgrade)
/// is rebuilt from the sink and can never let a written record through as new. For the same reason the
/// index may commit lazily (WAL, `synchronous=NORMAL`). A sink file that shrank (truncated by a rotation, edited
/// by hand) is indexed again from its start. Keys of sink files that were deleted (shipped elsewhere), or of lines
/// gone from a file that shrank, stay, so their records are still recognised when a source sends them again.
///
/// Pages are admitted in one transaction that stays open across pages (each page in its own savepoint) and
/// commits every `commitPages` pages (128), every `commitInterval` (4 s), and at `flush()`: committing every page
/// wrote each B-tree page it touched to the WAL again (about 190 page writes for 1,000 keys), most of the time
/// of a run; committing every 32 pages still spent 1.6 s of a million-record TAXII run in commits and the WAL
/// checkpoints they trigger, 0.7 s at 128. What a crash takes from the open transaction (up to 128 pages) is
/// re-indexed from the sink at the next open. A commit that fails rolls them back while their lines stay on disk: the
/// index is then behind its sink (`isBehind`) and admits nothing until it has caught up again, since the next page's
/// savepoint would record its file's end past the lost lines, and no later open would index them again.
struct DedupIndex: Sendable {
    static let commitPages = 128
    static let commitInterval = Duration.seconds(4)

    let path: String
    private let queue: DatabaseQueue
    private let commitPages: Int
    private let commitInterval: Duration
    /// Pages admitted since the last commit, and when that commit was.
    private let uncommitted = NIOLockedValueBox((pages: 0, since: ContinuousClock.now))
    /// A commit failed and rolled back keys whose lines are on disk: `catchUp` first.
    private let behind = NIOLockedValueBox(false)

    /// A commit failed since the last `catchUp`: the keys it held are not in the index, though their records are in
    /// the sink.
    var isBehind: Bool { behind.withLockedValue { $0 } }

    /// Opens (or creates) the index at `path`; a damaged one is removed and rebuilt.
    init(
        path: String, commitPages: Int = Self.commitPages, commitInterval: Duration = Self.commitInterval
    ) throws(SinkError) {
        self.path = path
        self.commitPages = commitPages
        self.commitInterval = commitInterval
        do {
            try FileManager.default.createDirectory(
                atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        } catch {
            throw SinkError(path: path, operation: "create folder", detail: error.localizedDescription)
        }
        do {
            queue = try Self.open(path)
        } catch let error as DatabaseError where [.SQLITE_CORRUPT, .SQLITE_NOTADB].contains(error.resultCode) {
            // Damaged: start again from the sink (the keys of files removed since are lost with it). Any other
            // failure (a full disk, too many open files, a permission) fails the run and leaves the index be.
            for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) }
            do {
                queue = try Self.open(path)
            } catch {
                throw SinkError(path: path, operation: "open index", detail: "\(error)")
            }
        } catch {
            throw SinkError(path: path, operation: "open index", detail: "\(error)")
        }
    }

    private static func open(_ path: String) throws -> DatabaseQueue {
        var configuration = Configuration()
        // `admit` leaves its transaction open from one page to the next on purpose (see above).
        configuration.allowsUnsafeTransactions = true
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = NORMAL")
            // Keys are random (STIX ids): a bigger page cache keeps a large index's inner pages in memory.
            try db.execute(sql: "PRAGMA cache_size = -16384")
        }
        let queue = try DatabaseQueue(path: path, configuration: configuration)
        _ = try queue.writeWithoutTransaction { db in try String.fetchOne(db, sql: "PRAGMA journal_mode = WAL") }
        try migrator.migrate(queue)
        return queue
    }

    /// Append-only: a shipped migration is never edited.
    private static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.create(table: "record_key", options: [.withoutRowID]) { t in
                t.column("id", .text).notNull()
                t.column("version", .text).notNull()
                t.primaryKey(["id", "version"])
            }
            try db.create(table: "indexed_file") { t in
                t.primaryKey("name", .text)
                t.column("size", .integer).notNull()
            }
        }
        return migrator
    }

    /// Indexes what the sink holds beyond the indexed sizes (all of it for a new index).
    func catchUp(with sink: NDJSONSink) throws(SinkError) {
        do {
            let indexed = try queue.read { db in
                try Dictionary(
                    Row.fetchAll(db, sql: "SELECT name, size FROM indexed_file").map {
                        ($0["name"] as String, $0["size"] as Int)
                    },
                    uniquingKeysWith: { $1 })
            }
            var sizes: [String: Int] = [:]
            for name in sink.files() {
                if let size = try sink.size(of: name) { sizes[name] = size }
            }
            // A file shorter than indexed (truncated after a copy by a rotation, edited by hand): what it held went
            // elsewhere, as a removed file's did, and its keys stay; it is indexed again from its start. Starting the
            // whole index over lost the keys of every file shipped and removed before.
            let shrunk = sizes.filter { name, size in (indexed[name] ?? 0) > size }.map(\.key)
            if !shrunk.isEmpty {
                try queue.write { db in
                    for name in shrunk {
                        try db.execute(sql: "UPDATE indexed_file SET size = 0 WHERE name = ?", arguments: [name])
                    }
                }
                return try catchUp(with: sink)
            }
            // A chunk at a time, each committed with how far it reached: a crash meanwhile resumes from there.
            for (name, size) in sizes where size > (indexed[name] ?? 0) {
                try sink.forEachKeys(in: name, from: indexed[name] ?? 0) { keys, end throws(SinkError) in
                    try add(keys, file: name, end: end)
                }
            }
            behind.withLockedValue { $0 = false }
        } catch let error as SinkError {
            throw error
        } catch {
            throw SinkError(path: path, operation: "index", detail: "\(error)")
        }
    }

    /// Keeps the records of a page the sink does not hold yet (nor holds twice within the page), has `write`
    /// make them durable, and records their keys with `write`'s file and end, in one transaction: one index
    /// lookup per record. Should `write` fail, or the process die before the commit, the index is as before
    /// (and `catchUp` indexes whatever `write` managed to put on disk).
    ///
    /// The work, fsyncs included, runs on the index's own queue while the caller is suspended: run on the
    /// caller's thread it held one of the two threads of the concurrency pool through every fsync, and the next
    /// page's parsing waited for it (a million records: 1.27 of 2 cores busy). The access is not cancellable
    /// once started, so a page is admitted whole or not at all, as before.
    func admit(
        _ records: [CollectedRecord],
        write: @escaping @Sendable ([CollectedRecord]) throws(SinkError) -> (file: String, end: Int)?
    ) async throws(SinkError) -> [CollectedRecord] {
        let (path, uncommitted, behind) = (self.path, self.uncommitted, self.behind)
        let (pages, interval) = (commitPages, commitInterval)
        let outcome: Result<[CollectedRecord], SinkError> = await withCheckedContinuation { continuation in
            queue.asyncWriteWithoutTransaction { db in
                guard !behind.withLockedValue({ $0 }) else {
                    let detail = "an earlier commit failed; its keys are indexed again from the sink first"
                    return continuation.resume(
                        returning: .failure(SinkError(path: path, operation: "index write", detail: detail)))
                }
                var outcome = Self.admit(records, in: db, path: path, write: write)
                let due = uncommitted.withLockedValue { state in
                    state.pages += 1
                    return state.pages >= pages || ContinuousClock.now - state.since >= interval
                }
                if due, case .failure(let error) = Self.commit(db, path: path, uncommitted: uncommitted, behind: behind)
                {
                    outcome = .failure(error)
                }
                continuation.resume(returning: outcome)
            }
        }
        return try outcome.get()
    }

    /// Commits what was admitted since the last commit. Runs end with it; should it fail, or never run (the
    /// process died), the next open re-indexes those records from the sink.
    func flush() async throws(SinkError) {
        let (path, uncommitted, behind) = (self.path, self.uncommitted, self.behind)
        let outcome: Result<Void, SinkError> = await withCheckedContinuation { continuation in
            queue.asyncWriteWithoutTransaction { db in
                continuation.resume(returning: Self.commit(db, path: path, uncommitted: uncommitted, behind: behind))
            }
        }
        try outcome.get()
    }

    private static func commit(
        _ db: Database, path: String, uncommitted: NIOLockedValueBox<(pages: Int, since: ContinuousClock.Instant)>,
        behind: NIOLockedValueBox<Bool>
    ) -> Result<Void, SinkError> {
        uncommitted.withLockedValue { $0 = (0, ContinuousClock.now) }
        guard db.isInsideTransaction else { return .success(()) }
        do {
            try db.commit()
            return .success(())
        } catch {
            try? db.rollback()
            behind.withLockedValue { $0 = true }
            return .failure(SinkError(path: path, operation: "index commit", detail: "\(error)"))
        }
    }

    /// One page in its own savepoint of the open transaction (begun here when none is open).
    private static func admit(
        _ records: [CollectedRecord], in db: Database, path: String,
        write: ([CollectedRecord]) throws(SinkError) -> (file: String, end: Int)?
    ) -> Result<[CollectedRecord], SinkError> {
        do {
            var fresh: [CollectedRecord] = []
            if !db.isInsideTransaction { try db.beginTransaction(.immediate) }
            try db.inSavepoint {
                fresh.reserveCapacity(records.count)
                let inserted = try insertKeys(records.lazy.map(\.key), in: db)
                for (record, new) in zip(records, inserted) where new { fresh.append(record) }
                guard !fresh.isEmpty, let written = try write(fresh) else { return .rollback }
                try db.execute(
                    sql:
                        "INSERT INTO indexed_file (name, size) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET size = excluded.size",
                    arguments: [written.file, written.end])
                return .commit
            }
            return .success(fresh)
        } catch let error as SinkError {
            return .failure(error)
        } catch {
            return .failure(SinkError(path: path, operation: "index write", detail: "\(error)"))
        }
    }

    /// Inserts `keys` that the index does not hold yet; says for each whether it was new.
    ///
    /// A run inserts one key per record, so this loop is SQLite's own calls on one prepared statement: through
    /// GRDB's `execute(arguments:)` each insert built an argument array and its database values, checked them and
    /// notified GRDB's observers (a million records: 2.9 s of the index thread's CPU, ahead of the sink's write).
    private static func insertKeys(_ keys: some Sequence<RecordKey>, in db: Database) throws -> [Bool] {
        let statement = try db.makeStatement(sql: "INSERT OR IGNORE INTO record_key (id, version) VALUES (?, ?)")
        let handle = statement.sqliteStatement
        var inserted: [Bool] = []
        inserted.reserveCapacity(keys.underestimatedCount)
        for key in keys {
            var (id, version) = (key.id, key.version)
            // The texts are bound without a copy (SQLITE_STATIC, a nil destructor): they outlive the step.
            let code = id.withUTF8 { id in
                version.withUTF8 { version in
                    sqlite3_bind_text(handle, 1, id.baseAddress, Int32(id.count), nil)
                    sqlite3_bind_text(handle, 2, version.baseAddress, Int32(version.count), nil)
                    defer {
                        sqlite3_reset(handle)
                        sqlite3_clear_bindings(handle)
                    }
                    return sqlite3_step(handle)
                }
            }
            guard code == SQLITE_DONE else {
                let message = String(cString: sqlite3_errmsg(db.sqliteConnection))
                throw DatabaseError(resultCode: ResultCode(rawValue: code), message: message, sql: statement.sql)
            }
            inserted.append(sqlite3_changes(db.sqliteConnection) > 0)
        }
        return inserted
    }

    /// Which of `keys` the sink already holds.
    func known(_ keys: [RecordKey]) throws(SinkError) -> Set<RecordKey> {
        do {
            return try queue.read { db in
                let statement = try db.cachedStatement(sql: "SELECT 1 FROM record_key WHERE id = ? AND version = ?")
                var known = Set<RecordKey>()
                for key in keys where try Bool.fetchOne(statement, arguments: [key.id, key.version]) != nil {
                    known.insert(key)
                }
                return known
            }
        } catch {
            throw SinkError(path: path, operation: "index lookup", detail: "\(error)")
        }
    }

    /// Records keys whose lines are on disk in `file`, now complete up to `end`, in one transaction.
    func add(_ keys: [RecordKey], file: String, end: Int) throws(SinkError) {
        do {
            try queue.write { db in
                _ = try Self.insertKeys(keys, in: db)
                try db.execute(
                    sql:
                        "INSERT INTO indexed_file (name, size) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET size = excluded.size",
                    arguments: [file, end])
            }
        } catch {
            throw SinkError(path: path, operation: "index write", detail: "\(error)")
        }
    }

    /// Has `observer` see the index's transactions (tests: one whose `databaseWillCommit` throws fails a commit, as a
    /// full disk or an I/O error does).
    func observe(_ observer: some TransactionObserver) {
        queue.add(transactionObserver: observer, extent: .databaseLifetime)
    }

    /// How many keys the index holds.
    func count() throws -> Int {
        try queue.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM record_key") ?? 0 }
    }
}
