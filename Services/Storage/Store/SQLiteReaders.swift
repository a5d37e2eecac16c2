import GRDB
import NIOConcurrencyHelpers

/// Read-only connections to the database file that the request path borrows on its own thread, for the one-row
/// reads of a GET, `/health` and the counts of `/status` and `/metrics`.
///
/// `DatabasePool.read` costs more than the lookup it runs: it takes a reader through the pool's semaphore and
/// barrier queue (threads parked on a futex under load) and wraps the statement in BEGIN/COMMIT. Here a connection
/// is taken from a list under a lock, and the single statement runs in autocommit, which is one consistent WAL
/// snapshot by itself (`unsafeRead`: no transaction, so only single-statement reads belong here). In WAL mode a
/// reader never waits for the writer, so the calling thread is held for the lookup only. When every connection is
/// busy the read goes to the pool instead of waiting.
final class SQLiteReaders: Sendable {
    private let idle: NIOLockedValueBox<[DatabaseQueue]>
    private let pool: any DatabaseReader

    /// Opens `count` read-only connections to `path` (migrated already) with `configuration`'s settings.
    init(path: String, count: Int, configuration: Configuration, pool: any DatabaseReader) throws {
        var configuration = configuration
        configuration.readonly = true
        self.idle = NIOLockedValueBox(
            try (0..<count).map { _ in try DatabaseQueue(path: path, configuration: configuration) })
        self.pool = pool
    }

    /// Runs one statement's read on the calling thread.
    func read<T>(_ body: (Database) throws -> T) throws -> T {
        guard let connection = idle.withLockedValue({ $0.popLast() }) else { return try pool.read(body) }
        defer { idle.withLockedValue { $0.append(connection) } }
        return try connection.unsafeRead(body)
    }

    func close() throws {
        for connection in idle.withLockedValue({ $0 }) { try connection.close() }
    }
}
