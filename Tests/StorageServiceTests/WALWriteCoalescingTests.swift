import Foundation
import GRDB
import TestSupport
import Testing
import WatermarkCore

@testable import StorageService

/// The VFS that gathers a commit's WAL frames into one write: fewer writes, and the same database for every reader.
@Suite("WAL write coalescing")
struct WALWriteCoalescingTests {
    init() { #expect(WALWriteCoalescing.installed) }

    /// A WAL database on the coalescing VFS with a table `t (id, payload)`.
    func database(_ path: String, synchronous: String = "FULL") throws -> DatabasePool {
        var configuration = Configuration()
        configuration.busyMode = .timeout(10)
        let pool = try DatabasePool(path: path, configuration: configuration)
        try pool.writeWithoutTransaction { db in
            try db.execute(sql: "PRAGMA synchronous = \(synchronous)")
            try db.execute(sql: "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
        }
        return pool
    }

    func payload(_ seed: Int, size: Int) -> Data {
        Data((0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ seed) })
    }

    /// Each commit (FULL: SQLite syncs the WAL) writes its frames, header and page each, in one write, also a commit
    /// past the unix VFS's largest write (128 KiB), and what was written reads back from another connection.
    @Test("a commit's WAL frames reach the file in one write per 128 KiB, and read back the same")
    func framesGathered() async throws {
        try await withTemporaryDirectory { folder in
            let pool = try database(folder + "/c.db")
            for (round, rows) in [1, 8, 60].enumerated() {
                let before = try await pool.writeWithoutTransaction { db in WALWriteCoalescing.writes(of: db) }
                try await pool.write { db in
                    for row in 0..<rows {
                        try db.execute(
                            sql: "INSERT OR REPLACE INTO t (id, payload) VALUES (?, ?)",
                            arguments: [round * 100 + row, payload(row, size: 3000)])
                    }
                }
                let after = try #require(
                    try await pool.writeWithoutTransaction { db in WALWriteCoalescing.writes(of: db) })
                let sqlite = after.sqlite - (before?.sqlite ?? 0)
                let file = after.file - (before?.file ?? 0)
                // A frame is a 24-byte header and a 4 KiB page: two writes of SQLite's; the WAL header adds one.
                let frames = sqlite / 2
                #expect(frames >= rows)
                let bytes = frames * (24 + 4096) + 32
                #expect(file <= (bytes + WALWriteCoalescing.maxWrite - 1) / WALWriteCoalescing.maxWrite + 1)
                #expect(file < sqlite)
                for row in 0..<rows {
                    let stored = try await pool.read { db in
                        try Data.fetchOne(db, sql: "SELECT payload FROM t WHERE id = ?", arguments: [round * 100 + row])
                    }
                    #expect(stored == payload(row, size: 3000))
                }
            }
            #expect(try await pool.read { db in try String.fetchOne(db, sql: "PRAGMA integrity_check") } == "ok")
            try pool.close()
        }
    }

    /// A connection that commits without syncing the WAL still writes out a transaction's last frame with it, so a
    /// connection of another pool (as another process would) reads every commit as soon as it is made.
    @Test("commits without a sync are in the file when they are published", arguments: ["NORMAL", "OFF"])
    func unsyncedCommitsPublished(synchronous: String) async throws {
        try await withTemporaryDirectory { folder in
            let writer = try database(folder + "/n.db", synchronous: synchronous)
            let other = try DatabaseQueue(path: folder + "/n.db")
            for row in 0..<40 {
                try await writer.write { db in
                    try db.execute(
                        sql: "INSERT INTO t (id, payload) VALUES (?, ?)", arguments: [row, payload(row, size: 5000)])
                }
                let stored = try await other.read { db in
                    try Data.fetchOne(db, sql: "SELECT payload FROM t WHERE id = ?", arguments: [row])
                }
                #expect(stored == payload(row, size: 5000))
            }
            try other.close()
            try writer.close()
        }
    }

    /// The store's own database: its writer's WAL is this VFS's, and a write went through it gathered.
    @Test("the store's writer writes its WAL through the coalescing VFS")
    func storeUsesIt() async throws {
        try await withTemporaryDirectory { folder in
            let store = try SQLiteWatermarkStore(path: folder + "/s.db", policy: WatermarkPolicy(), logger: .quiet)
            _ = try await store.write(
                WatermarkWrite(sourceID: sid("a"), update: .success(.at("2026-01-01T00:00:00Z"), records: 1)))
            let writes = try await store.writer.writeWithoutTransaction { db in WALWriteCoalescing.writes(of: db) }
            let counted = try #require(writes)
            #expect(counted.file >= 1 && counted.file < counted.sqlite)
            try store.close()
        }
    }
}
