import Foundation
import GRDB
import WatermarkCore

/// Fills a database with many watermarks and their history, for the `scale` benchmark and for operators who
/// want to see the service at their size before they get there (`storage-service seed`).
///
/// Rows are written straight through the store's schema (the same migrations), in transactions of
/// `batchSize` rows with SQLite's synchronous mode off: a seed that dies is simply run again on a new file. A file
/// that holds watermarks already is refused (seeded rows would count among real ones, and a seed does not write them
/// durably as it goes), and the file is synced before the seed reports it done.
/// Source `i` is `<prefix><i>`; it has `history / sources` runs (versions 1...n, the watermark at version n);
/// one source in a hundred is failed and one in a hundred has not succeeded for a day (stale), the others
/// succeeded within the last hour.
struct WatermarkSeeder {
    var sources: Int
    var history: Int
    var prefix = "seed-"
    var batchSize = 20_000
    var now = Timestamp.now()

    /// A database with watermarks already: it is not seeded.
    struct NotEmpty: Error, CustomStringConvertible {
        let path: String
        let watermarks: Int
        var description: String {
            "\(path) holds \(watermarks) watermarks already: seed fills a new database (pass another --database-path)"
        }
    }

    /// Seeds the database at `path` (created and migrated if needed); reports progress through `progress`.
    func seed(path: String, progress: (String) -> Void) throws {
        // Synchronous as SQLite's default (FULL) until the file is known to hold no watermarks: a refused file whose
        // WAL this connection checkpoints when it closes keeps its data through a power loss.
        let queue = try DatabaseQueue(path: path)
        _ = try queue.writeWithoutTransaction { db in try String.fetchOne(db, sql: "PRAGMA journal_mode = WAL") }
        try WatermarkDatabase.migrator.migrate(queue)
        let existing = try queue.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM watermark") ?? 0 }
        guard existing == 0 else { throw NotEmpty(path: path, watermarks: existing) }
        try queue.writeWithoutTransaction { db in try db.execute(sql: "PRAGMA synchronous = OFF") }
        let perSource = sources > 0 ? history / sources : 0
        let extra = sources > 0 ? history % sources : 0
        var start = 0
        var nextReport = 100_000
        while start < sources {
            let end = min(sources, start + max(1, batchSize / max(1, perSource + 1)))
            try queue.write { db in
                let watermark = try db.makeStatement(
                    sql: """
                        INSERT INTO watermark (source_id, last_successful_timestamp, last_run_timestamp, status,
                            records_collected, error_message, version, consecutive_failures, created_at)
                        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                        """)
                let run = try db.makeStatement(
                    sql: """
                        INSERT INTO watermark_run (source_id, version, recorded_at, status, timestamp,
                            last_successful_timestamp, records_collected, error_message)
                        VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                        """)
                for index in start..<end {
                    let id = "\(prefix)\(index)"
                    let runs = Int64(max(1, perSource + (index < extra ? 1 : 0)))
                    let failed = index % 100 == 1
                    let age: Int64 = index % 100 == 2 ? 86_400 : Int64(index % 3_600)
                    let success = now.adding(.seconds(-age)).sortableString
                    let created = now.adding(.seconds(-age - runs * 60)).sortableString
                    try watermark.execute(arguments: [
                        id, success, success, failed ? "failed" : "success", runs * 100,
                        failed ? "seeded failure" : nil, runs, failed ? 1 : 0, created,
                    ])
                    for version in 1...runs {
                        let at = now.adding(.seconds(-age - (runs - version) * 60)).sortableString
                        try run.execute(arguments: [id, version, at, "success", at, at, 100, nil])
                    }
                }
            }
            start = end
            if start >= nextReport || start == sources {
                progress("\(start) of \(sources) sources")
                nextReport += 100_000
            }
        }
        // Synced as the service syncs: the checkpoint syncs the file before it empties the WAL, so a seed reported done
        // survives a power loss.
        try queue.writeWithoutTransaction { db in
            try db.execute(sql: "PRAGMA synchronous = FULL")
            try db.execute(sql: "PRAGMA wal_checkpoint(TRUNCATE)")
        }
        try queue.close()
    }
}
