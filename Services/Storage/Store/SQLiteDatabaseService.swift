import Foundation
import Logging
import ServiceLifecycle
import WatermarkCore

/// The SQLite database file as a service of the app's `ServiceGroup`: opened (its folder created, the file
/// locked against a second process, migrated) before the server starts, and closed at graceful shutdown.
/// The server is the group's last service, so it has stopped and answered its last request before this one
/// is asked to stop.
struct SQLiteDatabaseService: Service {
    let store: SQLiteWatermarkStore
    private let lock: DatabaseLock
    private let logger: Logger

    /// Creates the database's folder once, takes `<path>.lock` and opens the store.
    init(path: String, policy: WatermarkPolicy, cacheCapacity: Int, logger: Logger) throws {
        try Self.createFolder(for: path)
        lock = try DatabaseLock(databasePath: path)
        store = try SQLiteWatermarkStore(path: path, policy: policy, logger: logger, cacheCapacity: cacheCapacity)
        self.logger = logger
    }

    /// Creates the folder that will hold the database file (also for `storage-service seed`).
    static func createFolder(for path: String) throws {
        let folder = URL(fileURLWithPath: path).deletingLastPathComponent().path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    }

    /// How often the WAL is copied into the database file while the service runs (`SQLiteWatermarkStore.checkpoint`).
    static let checkpointInterval = Duration.milliseconds(50)

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
