import Foundation
import Logging
import ServiceLifecycle
import ServiceSupport
import WatermarkCore

/// The SQLite database file as a service of the app's `ServiceGroup`: opened (its folder created, the file
/// locked against a second process, migrated) before the server starts, and closed at graceful shutdown.
/// The server is the group's last service, so it has stopped and answered its last request before this one
/// is asked to stop.
struct SQLiteDatabaseService: Service {
    let store: SQLiteWatermarkStore
    private let lock: ProcessLock
    private let logger: Logger

    /// Creates the database's folder once, takes `<path>.lock` and opens the store.
    init(path: String, policy: WatermarkPolicy, cacheCapacity: Int, logger: Logger) throws {
        try Self.createFolder(for: path)
        lock = try ProcessLock(path: path + ".lock") { holder in
            "database \(path) is in use by another storage-service process"
                + (holder.map { " (pid \($0))" } ?? "") + "; stop it or use another DATABASE_PATH"
        }
        store = try SQLiteWatermarkStore(path: path, policy: policy, logger: logger, cacheCapacity: cacheCapacity)
        self.logger = logger
    }

    /// Creates the folder that will hold the database file (also for `storage-service seed`).
    static func createFolder(for path: String) throws {
        let folder = URL(fileURLWithPath: path).deletingLastPathComponent().path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    }

    /// How often the WAL is copied into the database file while the service runs (`SQLiteWatermarkStore.checkpoint`).
    ///
    /// Each pass first syncs the WAL, the file every commit syncs too, and copies every page changed since the pass
    /// before: at a million sources, where a batch's writes land on scattered pages, passes every 50 ms copied a page
    /// that kept changing up to 20 times a second. Every 500 ms: PUT to 1,000 of a million sources 11.5-13.1k against
    /// 10.9-12.1k req/s in three alternating runs (steady state, after the first 4 s); no change on a small database,
    /// where a batch rewrites the same few pages, nor at one connection. The writer's own checkpoint, which starts the
    /// WAL over, still comes once a pass saw the WAL past `SQLiteWatermarkStore.writerCheckpointFrames`.
    static let checkpointInterval = Duration.milliseconds(500)

    func run() async throws {
        // Until shutdown (or cancellation, when another service failed): checkpoints, then the database is closed
        // either way.
        await cancelWhenGracefulShutdown {
            while (try? await Task.sleep(for: Self.checkpointInterval)) != nil {
                await store.checkpoint()
            }
        }
        try store.close()
        withExtendedLifetime(lock) {}
        logger.info("Database closed", metadata: ["path": "\(lock.path.dropLast(".lock".count))"])
    }
}
