import Foundation
import GRDB
import Synchronization
import TestSupport
import Testing
import WatermarkCore

@testable import StorageService

/// Serialized: two of these tests hold a thread of the concurrency pool on purpose (a write that runs alone blocks
/// its caller's thread until the writer is free), and the machine may have two.
@Suite("Group commit", .serialized)
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
                let (running, waiting) = (writer.batchRunning, writer.waitingCount)
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
            try await waitUntil("21 jobs queued behind the first") { writer.waitingCount == 21 }
            release.signal()
            try await group.waitForAll()
        }
        let rows = try await queue.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM t") }
        #expect(rows == 21, "the refused job's insert was rolled back, every other job committed")
        let refused = try await queue.read { db in
            try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM t WHERE k = 'refused'")
        }
        #expect(refused == 0)
        let (batches, jobs) = (writer.batches, writer.jobs)
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

    /// A job that ends the batch's transaction (SQLite rolls it back on some errors, as on a full disk) fails every
    /// job after it: none of them may run in a transaction of its own and commit while the batch reports failure.
    @Test func jobsAfterOneThatEndedTheTransactionFailAndCommitNothing() async throws {
        let queue = try DatabaseQueue()
        try await queue.write { db in try db.execute(sql: "CREATE TABLE t (k TEXT PRIMARY KEY)") }
        let writer = GroupCommitWriter(writer: queue)
        let outcomes = try await withThrowingTaskGroup(of: (String, Bool).self) { group in
            let release = DispatchSemaphore(value: 0)
            group.addTask {
                try await writer.write { _ in _ = release.wait(timeout: .now() + 30) }
                return ("holder", true)
            }
            try await waitUntil("the holding write runs") { writer.batchRunning }
            group.addTask {
                let ok =
                    (try? await writer.write { db -> Void in
                        try db.execute(sql: "INSERT INTO t VALUES ('a')")
                        try db.execute(sql: "ROLLBACK")
                    }) != nil
                return ("a", ok)
            }
            try await waitUntil("the ending job queued") { writer.waitingCount == 1 }
            group.addTask {
                ("b", (try? await writer.write { db in try db.execute(sql: "INSERT INTO t VALUES ('b')") }) != nil)
            }
            try await waitUntil("both queued") { writer.waitingCount == 2 }
            release.signal()
            return try await group.reduce(into: [String: Bool]()) { $0[$1.0] = $1.1 }
        }
        #expect(outcomes == ["holder": true, "a": false, "b": false])
        #expect(try await queue.read { db in try String.fetchAll(db, sql: "SELECT k FROM t") } == [])
    }

    /// What must follow a commit at once (the store's read cache forgets the rows a job wrote there) runs on the
    /// writer's thread right after the job's transaction, before the writer's upkeep (its checkpoint, up to tens of
    /// milliseconds) and before any caller is answered: for a job run alone on its caller's thread and for a batch.
    @Test func eachJobsEndRunsAfterItsTransactionBeforeTheUpkeepAndTheAnswers() async throws {
        let queue = try DatabaseQueue()
        let events = EventLog()
        let writer = GroupCommitWriter(writer: queue) { _ in events.add("upkeep") }
        try await writer.write(ended: { _ in events.add("ended alone") }) { _ in events.add("work alone") }
        events.add("answered alone")
        #expect(events.all == ["work alone", "ended alone", "upkeep", "answered alone"])

        let release = DispatchSemaphore(value: 0)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await writer.write { _ in _ = release.wait(timeout: .now() + 30) } }
            try await waitUntil("the holding write runs") { writer.batchRunning }
            for name in ["a", "b"] {
                group.addTask {
                    try await writer.write(ended: { _ in events.add("ended \(name)") }) { _ in
                        events.add("work \(name)")
                    }
                    events.add("answered \(name)")
                }
                try await waitUntil("\(name) queued") { writer.waitingCount == (name == "a" ? 1 : 2) }
            }
            release.signal()
            try await group.waitForAll()
        }
        let batch = Array(events.all.dropFirst(5))  // the holder's upkeep is the fifth event
        #expect(Array(batch.prefix(5)) == ["work a", "work b", "ended a", "ended b", "upkeep"], "\(events.all)")
        #expect(Set(batch.dropFirst(5)) == ["answered a", "answered b"], "\(events.all)")
    }

    /// A write finding the writer idle runs on its caller's thread only when the last transaction carried one job:
    /// after a batch of several (concurrent writers) it goes through the writer's queue, where a commit's fsync does
    /// not hold a thread of the concurrency pool.
    @Test func aWriteRunsOnItsCallersThreadOnlyAfterATransactionOfOne() async throws {
        let queue = try DatabaseQueue()
        let writer = GroupCommitWriter(writer: queue)
        func counts() -> (alone: Int, batches: Int) { (writer.aloneCount, writer.batches) }
        try await writer.write { db in try db.execute(sql: "CREATE TABLE t (k INTEGER)") }
        #expect(counts() == (1, 1), "the first write runs alone")
        // A batch of three: queued behind a write that holds the writer.
        try await withThrowingTaskGroup(of: Void.self) { group in
            let release = DispatchSemaphore(value: 0)
            group.addTask { try await writer.write { _ in _ = release.wait(timeout: .now() + 30) } }
            try await waitUntil("the holding write runs") { writer.batchRunning && writer.aloneCount == 1 }
            for index in 0..<3 {
                group.addTask {
                    try await writer.write { db in try db.execute(sql: "INSERT INTO t VALUES (?)", arguments: [index]) }
                }
            }
            try await waitUntil("three writes queued") { writer.waitingCount == 3 }
            release.signal()
            try await group.waitForAll()
        }
        #expect(counts() == (2, 3), "the holding write ran alone, the three shared a batch")
        // The writer's queue is left only after the callers were answered: each write below finds it idle.
        try await waitUntil("the writer is idle") { !writer.batchRunning }
        try await writer.write { db in try db.execute(sql: "INSERT INTO t VALUES (3)") }
        #expect(counts() == (2, 4), "after a batch of three, a write goes through the writer's queue")
        try await waitUntil("the writer is idle") { !writer.batchRunning }
        try await writer.write { db in try db.execute(sql: "INSERT INTO t VALUES (4)") }
        #expect(counts() == (3, 5), "after a transaction of one, a write runs alone again")
        #expect(try await queue.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM t") } == 5)
    }

    /// Through the store: concurrent writes to many sources take fewer commits than writes, a refused write
    /// among them changes nothing and does not fail the others.
    @Test func concurrentStoreWritesShareCommitsAndRefusalsStayTheirOwn() async throws {
        try await withTemporaryDirectory { folder in
            // On disk, WAL and synchronous=FULL: each commit waits for an fsync, as in production.
            let store = try SQLiteWatermarkStore(path: folder + "/w.db", policy: WatermarkPolicy(), logger: .quiet)
            let seeded = try await store.write(
                WatermarkWrite(sourceID: sid("seeded"), update: .success(.at("2026-01-01T00:00:00Z"), records: 1)))
            // The writer's connection is held until every write is under way: the first runs alone once it is free,
            // the 48 others queue behind it and share commits.
            let release = DispatchSemaphore(value: 0)
            store.writer.asyncWriteWithoutTransaction { _ in _ = release.wait(timeout: .now() + 30) }
            async let running = withTaskGroup(of: (String, String?).self) { group in
                for index in 0..<48 {
                    group.addTask {
                        let code = await refusal {
                            _ = try await store.write(
                                WatermarkWrite(
                                    sourceID: sid("s\(index)"),
                                    update: .success(.at("2026-01-02T00:00:00Z"), records: 1)))
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
            try await waitUntil("48 writes queued behind the first") { store.batcher.waitingCount == 48 }
            release.signal()
            let results = await running
            #expect(results["seeded"] == "watermark_regression")
            #expect(results.filter { $0.key != "seeded" }.allSatisfy { $0.value == nil })
            #expect(try await store.watermark(for: sid("seeded")) == seeded.watermark)
            for index in 0..<48 { #expect(try await store.watermark(for: sid("s\(index)"))?.version == 1) }
            let (batches, writes) = await store.writeBatches()
            #expect(writes == 50 && batches < writes, "\(writes) writes in \(batches) commits")
            try store.close()
        }
    }

    /// Checkpoints leave the commit path: the background pass copies the WAL, and only once it saw the WAL past
    /// `writerCheckpointFrames` does the writer checkpoint after a commit, which lets the next commit start the WAL
    /// over (another connection's checkpoint alone never can while commits keep coming, and the WAL grew without end).
    /// The pass that finds the writer's checkpoint due syncs the database file first, so the writer syncs little.
    @Test("the WAL is checkpointed in the background and started over once past its bound")
    func walCheckpointsAndRestarts() async throws {
        try await withTemporaryDirectory { folder in
            let store = try SQLiteWatermarkStore(path: folder + "/w.db", policy: WatermarkPolicy(), logger: .quiet)
            defer { try? store.close() }
            func write(_ count: Int, from first: Int) async throws {
                for index in first..<(first + count) {
                    _ = try await store.write(
                        WatermarkWrite(
                            sourceID: sid("s\(index)"), update: .success(.at("2026-01-02T00:00:00Z"), records: 1)))
                }
            }
            // A pass that finds the WAL within its bound leaves the database file to the writer's checkpoint.
            try await write(1, from: 5000)
            await store.checkpoint()
            #expect(store.backgroundDatabaseSyncs == 0, "\(store.walFrameCount) frames")
            // No checkpoint in the commit path: a thousand commits leave every frame in the WAL.
            try await write(1000, from: 0)
            // A reader's snapshot stops the background checkpoint short of the WAL's end, as commits that keep coming
            // during one do: the WAL cannot start over after it alone.
            let readers = try DatabasePool(path: folder + "/w.db")
            var snapshot: DatabaseSnapshot? = try readers.makeSnapshot()
            let seen = try await snapshot?.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM watermark") }
            #expect(seen == 1001)
            try await write(1, from: 1000)
            await store.checkpoint()
            let grown = store.walFrameCount
            #expect(grown >= SQLiteWatermarkStore.writerCheckpointFrames, "\(grown) frames after 1,000 commits")
            #expect(store.backgroundDatabaseSyncs == 1, "the pass that saw the WAL past its bound syncs the file")
            snapshot = nil
            try readers.close()
            // The next commit is followed by the writer's checkpoint; the one after starts the WAL over.
            try await write(2, from: 1001)
            await store.checkpoint()
            #expect(store.walFrameCount < 100, "\(store.walFrameCount) frames after the writer's checkpoint")
            #expect(store.backgroundDatabaseSyncs == 1, "a pass that finds the WAL within its bound syncs nothing")
            for index in [0, 999, 1002] { #expect(try await store.watermark(for: sid("s\(index)"))?.version == 1) }
        }
    }

    /// A job that fails is undone by rolling back to its savepoint. Should that fail while the transaction goes on
    /// (the savepoint is gone), its changes were kept and committed with the batch while its caller was told it
    /// failed: the whole batch now fails instead.
    @Test func aJobThatCannotBeUndoneAloneFailsItsBatch() async throws {
        let queue = try DatabaseQueue()
        try await queue.write { db in try db.execute(sql: "CREATE TABLE t (k TEXT PRIMARY KEY)") }
        let writer = GroupCommitWriter(writer: queue)
        struct Refused: Error {}
        let release = DispatchSemaphore(value: 0)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                try await writer.write { db in
                    try db.execute(sql: "INSERT INTO t VALUES ('first')")
                    _ = release.wait(timeout: .now() + 30)
                }
            }
            try await waitUntil("the first job leads its batch") { writer.batchRunning && writer.waitingCount == 0 }
            group.addTask {
                await #expect(throws: (any Error).self, "committed with a job whose changes could not be undone") {
                    try await writer.write { db in try db.execute(sql: "INSERT INTO t VALUES ('good')") }
                }
            }
            try await waitUntil("one job queued") { writer.waitingCount == 1 }
            group.addTask {
                await #expect(throws: (any Error).self) {
                    try await writer.write { db in
                        try db.execute(sql: "INSERT INTO t VALUES ('undone')")
                        try db.execute(sql: "RELEASE SAVEPOINT job")
                        throw Refused()
                    }
                }
            }
            try await waitUntil("two jobs queued") { writer.waitingCount == 2 }
            release.signal()
            try await group.waitForAll()
        }
        #expect(try await queue.read { db in try String.fetchAll(db, sql: "SELECT k FROM t ORDER BY k") } == ["first"])
    }

    /// SQLite before 3.51.3 can lose committed writes when a checkpoint starts right after one that copied the whole
    /// WAL while another connection commits and starts the WAL over (the WAL-reset bug). No checkpoint starts while the
    /// WAL is copied whole: only a commit that wrote frames lets the next one run (a refused write, whose transaction
    /// wrote none, does not), and every write is still read back afterwards.
    @Test("no checkpoint starts while the WAL is copied whole; only a commit that wrote frames allows the next")
    func noCheckpointIntoAWholeCopiedWAL() async throws {
        try await withTemporaryDirectory { folder in
            let store = try SQLiteWatermarkStore(path: folder + "/w.db", policy: WatermarkPolicy(), logger: .quiet)
            defer { try? store.close() }
            let guarded = store.walGuard
            func write(_ id: String, _ at: String) async throws {
                _ = try await store.write(WatermarkWrite(sourceID: sid(id), update: .success(.at(at), records: 1)))
            }
            await store.checkpoint()
            #expect((guarded.checkpointsRun, guarded.checkpointsSkipped) == (0, 1), "nothing written since the open")
            try await write("a", "2026-01-02T00:00:00Z")
            await store.checkpoint()
            #expect((guarded.checkpointsRun, guarded.checkpointsSkipped) == (1, 1), "a commit wrote frames")
            await store.checkpoint()
            #expect((guarded.checkpointsRun, guarded.checkpointsSkipped) == (1, 2), "copied whole by the pass before")
            // Refused (a regression): its transaction wrote nothing, so the WAL is still copied whole.
            await #expect(throws: WatermarkError.self) { try await write("a", "2026-01-01T00:00:00Z") }
            await store.checkpoint()
            #expect((guarded.checkpointsRun, guarded.checkpointsSkipped) == (1, 3))
            try await write("b", "2026-01-02T00:00:00Z")
            await store.checkpoint()
            #expect((guarded.checkpointsRun, guarded.checkpointsSkipped) == (2, 3))
            for id in ["a", "b"] { #expect(try await store.watermark(for: sid(id))?.version == 1) }
        }
    }

    /// The writer's own checkpoint holds every write while it runs (some 45 ms at a million sources written at
    /// random), so the next may start only after a pause 19 times as long: at most a twentieth of the writer's time.
    @Test("the writer checkpoints again only after a pause 19 times as long as its last checkpoint")
    func checkpointPacing() {
        var pacing = SQLiteWatermarkStore.CheckpointPacing()
        let start = ContinuousClock.now
        #expect(pacing.allows(at: start))
        pacing.checkpointed(from: start, to: start + .milliseconds(45))
        let end = start + .milliseconds(45)
        #expect(!pacing.allows(at: end))
        #expect(!pacing.allows(at: end + .milliseconds(854)))
        #expect(pacing.allows(at: end + .milliseconds(855)))
        // A quick checkpoint (a small database's) barely delays the next.
        pacing.checkpointed(from: end + .seconds(1), to: end + .seconds(1) + .milliseconds(1))
        #expect(pacing.allows(at: end + .seconds(1) + .milliseconds(20)))
    }

    /// An acknowledged write must survive power loss, so every commit syncs the WAL: `DatabasePool` turns its
    /// writer to `synchronous = NORMAL` when it switches to WAL, and the store must set FULL after that.
    @Test("the writer connection commits with synchronous = FULL, also on a database opened again")
    func synchronousFull() async throws {
        try await withTemporaryDirectory { folder in
            for _ in 0..<2 {
                let store = try SQLiteWatermarkStore(path: folder + "/w.db", policy: WatermarkPolicy(), logger: .quiet)
                #expect(store.writerSynchronous == 2)
                #expect(
                    try await store.writer.writeWithoutTransaction { db in
                        try Int.fetchOne(db, sql: "PRAGMA synchronous")
                    } == 2)
                try store.close()
            }
        }
    }

    /// `/status` reads the store's details while the writer's queue is held (as the group-commit writer holds it
    /// for as long as writes keep arriving): it answers at once, where it waited for the queue to be free.
    @Test("the store's details are read without waiting for the writer")
    func infoDoesNotWaitForTheWriter() async throws {
        try await withTemporaryDirectory { folder in
            let store = try SQLiteWatermarkStore(path: folder + "/w.db", policy: WatermarkPolicy(), logger: .quiet)
            let held = HeldFlag()
            let release = DispatchSemaphore(value: 0)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    try await store.writer.writeWithoutTransaction { _ in
                        held.value.withLock { $0 = true }
                        release.wait()
                    }
                }
                do {
                    try await waitUntil("the writer's queue held") { held.value.withLock { $0 } }
                } catch {
                    release.signal()  // the writer's job, if it ever runs, must not hold the group for ever
                    throw error
                }
                let answered = try await withThrowingTaskGroup(of: Bool.self) { race in
                    race.addTask {
                        _ = try await store.info()
                        return true
                    }
                    race.addTask {
                        try await Task.sleep(for: .seconds(10))
                        release.signal()  // lets a waiting info() end, so that the race does
                        return false
                    }
                    let first = try await race.next() ?? false
                    race.cancelAll()
                    return first
                }
                #expect(answered, "info() waited for the writer's queue")
                release.signal()
                try await group.waitForAll()
            }
            try store.close()
        }
    }

    /// Readers keep a small page cache (random reads of a large database are the OS cache's job); the writer
    /// keeps SQLite's default.
    @Test("reader connections cache 512 KiB of pages, the writer SQLite's default 2 MiB")
    func readerCacheSize() async throws {
        try await withTemporaryDirectory { folder in
            let store = try SQLiteWatermarkStore(path: folder + "/w.db", policy: WatermarkPolicy(), logger: .quiet)
            #expect(try await store.writer.read { db in try Int.fetchOne(db, sql: "PRAGMA cache_size") } == -512)
            #expect(
                try await store.writer.writeWithoutTransaction { db in try Int.fetchOne(db, sql: "PRAGMA cache_size") }
                    == -2000)
            try store.close()
        }
    }
}

/// Whether the writer's queue is held, set from the queue's thread.
/// Events in the order they happened, from any thread.
private final class EventLog: Sendable {
    private let events = Mutex<[String]>([])
    func add(_ event: String) { events.withLock { $0.append(event) } }
    var all: [String] { events.withLock { $0 } }
}

private final class HeldFlag: Sendable {
    let value = Mutex(false)
}
