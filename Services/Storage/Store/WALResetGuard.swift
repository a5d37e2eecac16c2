import GRDB
import GRDBSQLite
import Synchronization

/// Keeps the store clear of SQLite's "WAL-reset bug" (https://sqlite.org/wal.html#walresetbug). In SQLite 3.7.0 to
/// 3.51.2 (Debian 12 ships 3.40.1, Ubuntu 24.04 3.45.1) a checkpoint that starts while the WAL is copied whole, as a
/// second connection commits and so starts the WAL over, can record frames as copied that are not, and a later
/// checkpoint then loses committed writes. The store checkpoints from a connection of its own every 500 ms, more
/// often than not into a WAL the pass before copied whole, while the writer commits: the race 3.51.3 closes.
///
/// So a checkpoint starts only when the WAL holds frames no checkpoint has copied, which no commit can start over:
/// - SQLite's WAL hook on the writer's connection sets `framesToCopy` after each commit that wrote frames;
/// - a checkpoint runs only when it is set, and clears it once it copied every frame it found;
/// - it clears it holding `writing`, which the writer holds through each of its transactions, so a commit whose
///   frames that checkpoint may have copied has set it before (it is cleared after), and one that sets it after
///   began after the checkpoint ended: its frames are not copied. A commit may leave it clear with frames to copy
///   (they are then copied after the next commit), never set with none.
///
/// It covers this process's connections only: another process writing the file while the service runs would bypass
/// it. `ProcessLock` keeps a second `storage-service` (and `seed`) off the file; other tools (the `sqlite3` shell)
/// must not write it while it is served.
///
/// Checkpoints take turns on `checkpointing` (the background pass waits, the writer's own gives up). The writer never
/// waits for a checkpoint: a checkpoint holds `writing` only to clear the flag, after SQLite's work.
final class WALResetGuard: Sendable {
    /// The WAL holds frames written after the last checkpoint that copied everything it found.
    private let framesToCopy = Atomic(false)
    /// Held by the writer through each transaction, and by a checkpoint to clear `framesToCopy`.
    private let writing = Mutex(())
    /// Held through each checkpoint.
    private let checkpointing = Mutex(())
    private let counts = Mutex((run: 0, skipped: 0))

    /// Checkpoints run, and skipped because nothing was written since the last one copied everything (tests).
    var checkpointsRun: Int { counts.withLock { $0.run } }
    var checkpointsSkipped: Int { counts.withLock { $0.skipped } }

    /// Has the writer's connection tell this guard of each commit that wrote frames. Call once, on the writer's
    /// connection, before its first write. The hook keeps the guard alive (one small object for as long as the process
    /// runs): SQLite says nothing when a connection closes, and a guard freed before its connection would be called.
    func watch(writer db: Database) {
        let context = Unmanaged.passRetained(self).toOpaque()
        sqlite3_wal_hook(
            db.sqliteConnection,
            { context, _, _, _ in
                // On the writer's thread, after a commit that appended frames to the WAL (inside `transaction`).
                if let context {
                    Unmanaged<WALResetGuard>.fromOpaque(context).takeUnretainedValue().framesToCopy.store(
                        true, ordering: .sequentiallyConsistent)
                }
                return SQLITE_OK
            }, context)
    }

    /// Runs one of the writer's transactions, from its `BEGIN` to its `COMMIT`.
    func transaction<T>(_ body: () throws -> T) rethrows -> T {
        try writing.withLock { _ in try body() }
    }

    /// Runs a passive checkpoint of `db` unless no frame was written since the last checkpoint that copied everything;
    /// `wait: false` gives up at once when another checkpoint runs (the writer's own, which must not wait). Returns
    /// its result, or nil when it did not run.
    func checkpoint(_ db: Database, wait: Bool) throws -> (walFrameCount: Int, checkpointedFrameCount: Int)? {
        let run = { () throws -> (walFrameCount: Int, checkpointedFrameCount: Int)? in
            guard self.framesToCopy.load(ordering: .sequentiallyConsistent) else {
                self.counts.withLock { $0.skipped += 1 }
                return nil
            }
            let result = try db.checkpoint(.passive)
            self.counts.withLock { $0.run += 1 }
            if result.walFrameCount >= 0, result.walFrameCount == result.checkpointedFrameCount {
                self.writing.withLock { _ in self.framesToCopy.store(false, ordering: .sequentiallyConsistent) }
            }
            return result
        }
        if wait { return try checkpointing.withLock { _ in try run() } }
        return try checkpointing.withLockIfAvailable { _ in try run() } ?? nil
    }
}
