import Foundation
import GRDB
import TestSupport
import Testing
import WatermarkCore

@testable import StorageService

@Suite("Group commit")
struct GroupCommitTests {
    /// Polls `condition` every 5 ms until it holds, failing after 10 s.
    func waitUntil(_ what: String, _ condition: () async -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(10)
        while !(await condition()) {
            guard ContinuousClock.now < deadline else { throw WaitTimeout(what: what) }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    struct WaitTimeout: Error { var what: String }

    /// Jobs that arrive while a batch commits share the next transaction; a job that throws rolls back its own
    /// savepoint only, later jobs see the earlier ones' writes, and every caller gets its own outcome.
    @Test func jobsWaitingDuringACommitShareTheNextOneAndKeepTheirOwnOutcome() async throws {
        let queue = try DatabaseQueue()
        try await queue.write { db in try db.execute(sql: "CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)") }
        let writer = GroupCommitWriter(writer: queue)
        struct Refused: Error {}
        try await withThrowingTaskGroup(of: Void.self) { group in
            // The first batch holds the writer until the 21 others are queued behind it.
            let release = DispatchSemaphore(value: 0)
            group.addTask {
                try await writer.write { db in
                    try db.execute(sql: "INSERT INTO t VALUES ('slow', 0)")
                    _ = release.wait(timeout: .now() + 30)
                }
            }
            try await waitUntil("the first job leads its batch") {
                let (running, waiting) = (await writer.batchRunning, await writer.waitingCount)
                return running && waiting == 0
            }
            for index in 0..<20 {
                group.addTask {
                    try await writer.write { db in
                        try db.execute(sql: "INSERT INTO t VALUES (?, ?)", arguments: ["k\(index)", index])
                    }
                }
            }
            group.addTask {
                await #expect(throws: Refused.self) {
                    try await writer.write { db in
                        try db.execute(sql: "INSERT INTO t VALUES ('refused', 1)")
                        throw Refused()
                    }
                }
            }
            try await waitUntil("21 jobs queued behind the first") { await writer.waitingCount == 21 }
            release.signal()
            try await group.waitForAll()
        }
        let rows = try await queue.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM t") }
        #expect(rows == 21, "the refused job's insert was rolled back, every other job committed")
        let refused = try await queue.read { db in
            try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM t WHERE k = 'refused'")
        }
        #expect(refused == 0)
        let (batches, jobs) = (await writer.batches, await writer.jobs)
        #expect(jobs == 22 && batches == 2, "\(jobs) jobs in \(batches) batches")

        // Within a batch the rules see the batch's earlier writes: a second insert of one key fails alone.
        let outcomes = await withTaskGroup(of: Bool.self) { group in
            for _ in 0..<8 {
                group.addTask {
                    (try? await writer.write { db in try db.execute(sql: "INSERT INTO t VALUES ('once', 1)") }) != nil
                }
            }
            return await group.reduce(into: [Bool]()) { $0.append($1) }
        }
        #expect(outcomes.filter { $0 }.count == 1)
    }

    /// Through the store: concurrent writes to many sources take fewer commits than writes, a refused write
    /// among them changes nothing and does not fail the others.
    @Test func concurrentStoreWritesShareCommitsAndRefusalsStayTheirOwn() async throws {
        let folder = NSTemporaryDirectory() + "group-commit-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        // On disk, WAL and synchronous=FULL: each commit waits for an fsync, as in production.
        let store = try SQLiteWatermarkStore(path: folder + "/w.db", policy: WatermarkPolicy(), logger: .quiet)
        let seeded = try await store.write(
            WatermarkWrite(sourceID: sid("seeded"), update: .success(.at("2026-01-01T00:00:00Z"), records: 1)))
        let results = await withTaskGroup(of: (String, String?).self) { group in
            for index in 0..<48 {
                group.addTask {
                    let code = await refusal {
                        _ = try await store.write(
                            WatermarkWrite(
                                sourceID: sid("s\(index)"), update: .success(.at("2026-01-02T00:00:00Z"), records: 1)))
                    }
                    return ("s\(index)", code)
                }
            }
            group.addTask {
                let code = await refusal {
                    _ = try await store.write(
                        WatermarkWrite(
                            sourceID: sid("seeded"), update: .success(.at("2025-01-01T00:00:00Z"), records: 1)))
                }
                return ("seeded", code)
            }
            return await group.reduce(into: [String: String?]()) { $0[$1.0] = $1.1 }
        }
        #expect(results["seeded"] == "watermark_regression")
        #expect(results.filter { $0.key != "seeded" }.allSatisfy { $0.value == nil })
        #expect(try await store.watermark(for: sid("seeded")) == seeded.watermark)
        for index in 0..<48 { #expect(try await store.watermark(for: sid("s\(index)"))?.version == 1) }
        let (batches, writes) = await store.writeBatches()
        #expect(writes == 50 && batches < writes, "\(writes) writes in \(batches) commits")
        try store.close()
    }

    /// An acknowledged write must survive power loss, so every commit syncs the WAL: `DatabasePool` turns its
    /// writer to `synchronous = NORMAL` when it switches to WAL, and the store must set FULL after that.
    @Test("the writer connection commits with synchronous = FULL, also on a database opened again")
    func synchronousFull() async throws {
        let folder = NSTemporaryDirectory() + "synchronous-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        for _ in 0..<2 {
            let store = try SQLiteWatermarkStore(path: folder + "/w.db", policy: WatermarkPolicy(), logger: .quiet)
            #expect(try await store.writerSynchronous() == 2)
            try store.close()
        }
    }

    /// Readers keep a small page cache (random reads of a large database are the OS cache's job); the writer
    /// keeps SQLite's default.
    @Test("reader connections cache 512 KiB of pages, the writer SQLite's default 2 MiB")
    func readerCacheSize() async throws {
        let folder = NSTemporaryDirectory() + "cache-size-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let store = try SQLiteWatermarkStore(path: folder + "/w.db", policy: WatermarkPolicy(), logger: .quiet)
        #expect(try await store.writer.read { db in try Int.fetchOne(db, sql: "PRAGMA cache_size") } == -512)
        #expect(
            try await store.writer.writeWithoutTransaction { db in try Int.fetchOne(db, sql: "PRAGMA cache_size") }
                == -2000)
        try store.close()
    }
}
