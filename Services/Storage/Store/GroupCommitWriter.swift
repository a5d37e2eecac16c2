import GRDB
import NIOConcurrencyHelpers

/// Group commit: concurrent writes run in one SQLite transaction, so one fsync serves them all.
///
/// Each write is a job. A job that arrives while the writer is idle, nothing waits and the last transaction carried a
/// single job runs at once on the caller's thread, in a transaction of its own without a savepoint (a lone request's
/// latency is what counts, and hopping to the writer's queue and back cost two thread wake-ups: PUT p50 430-465 us
/// against 470-494 us at one connection). After a batch of several jobs it queues instead: under concurrent writes a
/// job run alone held one of the concurrency pool's threads (two on two cores) through its commit's fsync while the
/// other requests waited to be parsed and answered (CPU 15 % idle; PUT at 64 connections 15.3-15.8k req/s against
/// 13.9-14.6k, alternating runs). Jobs that arrive while the writer is busy queue; the writer then drains the queue on
/// GRDB's writer queue, batch after batch, until it is empty: each batch takes every waiting job (up to `maxBatch`),
/// runs them in arrival order in one transaction, each inside its own savepoint, and commits. A job that throws (a 409
/// or 412 of the rules) rolls back its savepoint only, so it changes nothing and the others keep their outcome; later
/// jobs of the batch see the writes of the earlier ones. Every caller is answered only after the commit returned (with
/// `synchronous=FULL`, once the WAL is on disk); a failed commit fails every job of its batch. The next batch starts as
/// soon as one committed, on the writer's own thread: handing the lead to a waiting request's task made the writer wait
/// for that task to be scheduled among the answers of the batch before (a batch every 2.4 ms at 64 connections, most of
/// it idle).
final class GroupCommitWriter: Sendable {
    typealias Work = @Sendable (Database) throws -> any Sendable
    typealias Outcome = Result<any Sendable, any Error>

    private struct Job: Sendable {
        let work: Work
        let ended: (@Sendable (Outcome) -> Void)?
        let caller: CheckedContinuation<Outcome, Never>
    }

    private struct State {
        var waiting: [Job] = []
        /// A job runs on its caller's thread, or the writer drains the queue.
        var busy = false
        /// Jobs of the last transaction: a job runs on its caller's thread only after one that ran alone.
        var lastBatchSize = 1
        var alone = 0
        var batches = 0
        var jobs = 0
    }

    private let writer: any DatabaseWriter
    /// Wraps every transaction: one that may start the WAL over runs with no checkpoint starting (`WALResetGuard`).
    private let walGuard: WALResetGuard?
    /// Runs on the writer's connection after every transaction, outside it (the store's WAL upkeep).
    private let afterCommit: @Sendable (Database) -> Void
    /// Largest batch: bounds the time one transaction holds the writer.
    private let maxBatch: Int
    /// Held only to queue or take jobs, never while a transaction runs, so callers queue during a commit.
    private let state = NIOLockedValueBox(State())

    /// Batches committed and jobs they carried, for `/metrics`.
    var batches: Int { state.withLockedValue { $0.batches } }
    var jobs: Int { state.withLockedValue { $0.jobs } }
    var batchRunning: Bool { state.withLockedValue { $0.busy } }
    /// Jobs queued for the next batch (tests wait on it rather than on time).
    var waitingCount: Int { state.withLockedValue { $0.waiting.count } }
    /// Jobs that ran on their caller's thread (tests).
    var aloneCount: Int { state.withLockedValue { $0.alone } }

    init(
        writer: any DatabaseWriter, maxBatch: Int = 256, walGuard: WALResetGuard? = nil,
        afterCommit: @escaping @Sendable (Database) -> Void = { _ in }
    ) {
        self.writer = writer
        self.walGuard = walGuard
        self.afterCommit = afterCommit
        self.maxBatch = maxBatch
    }

    /// Runs `work` in the next batch and returns once that batch committed.
    ///
    /// - Parameter ended: run on the writer's thread as soon as the job's transaction ended (committed or failed),
    ///   before the writer's upkeep (`afterCommit`, a checkpoint of up to tens of milliseconds) and before any caller
    ///   is answered: what must follow a commit at once, such as dropping what a read cache holds of the rows the
    ///   job wrote, so that no read in between is served the value before the commit. It is given the job's outcome
    ///   (what `work` returned, or the error of the job or of the commit), in commit order.
    func write<T: Sendable>(
        ended: (@Sendable (Outcome) -> Void)? = nil, _ work: @escaping @Sendable (Database) throws -> T
    ) async throws -> T {
        let alone = state.withLockedValue { state in
            guard !state.busy, state.lastBatchSize == 1 else { return false }
            state.busy = true
            return true
        }
        let outcome: Outcome
        if alone {
            outcome = Self.writeHere(writer) { [walGuard] db in
                let outcome = Result {
                    var value: (any Sendable)?
                    try Self.transaction(walGuard) {
                        try db.inTransaction(.immediate) {
                            value = try work(db)
                            return .commit
                        }
                    }
                    return value!
                }
                ended?(outcome)
                afterCommit(db)
                return outcome
            }
            let drain = state.withLockedValue { state in
                state.batches += 1
                state.jobs += 1
                state.lastBatchSize = 1
                state.alone += 1
                state.busy = !state.waiting.isEmpty
                return state.busy
            }
            if drain { startDraining() }
        } else {
            outcome = await withCheckedContinuation { caller in
                let drain = state.withLockedValue { state in
                    state.waiting.append(Job(work: work, ended: ended, caller: caller))
                    // The job that ran alone finished between the two locks and found nothing queued.
                    guard !state.busy else { return false }
                    state.busy = true
                    return true
                }
                if drain { startDraining() }
            }
        }
        // Every job's result is the value its own `work` returned.
        return try outcome.get() as! T
    }

    private func startDraining() {
        writer.asyncWriteWithoutTransaction { db in self.drain(db) }
    }

    /// Commits batches on the writer's queue until no job waits.
    private func drain(_ db: Database) {
        while true {
            let batch = state.withLockedValue { state in
                let batch = Array(state.waiting.prefix(maxBatch))
                state.waiting.removeFirst(batch.count)
                state.busy = !batch.isEmpty
                return batch
            }
            guard !batch.isEmpty else { return }
            let outcomes = Self.commit(batch.map(\.work), in: db, walGuard: walGuard)
            for (job, outcome) in zip(batch, outcomes) { job.ended?(outcome) }
            afterCommit(db)
            state.withLockedValue { state in
                state.batches += 1
                state.jobs += batch.count
                state.lastBatchSize = batch.count
            }
            for (job, outcome) in zip(batch, outcomes) { job.caller.resume(returning: outcome) }
        }
    }

    /// One transaction, one savepoint per job; a commit failure fails them all.
    private static func commit(_ works: [Work], in db: Database, walGuard: WALResetGuard?) -> [Outcome] {
        var outcomes: [Outcome] = []
        do {
            try transaction(walGuard) {
                try db.inTransaction(.immediate) {
                    outcomes = works.map { work in Result { try inSavepoint(db) { try work(db) } } }
                    return .commit
                }
            }
            return outcomes
        } catch {
            return works.map { _ in .failure(error) }
        }
    }

    private static func transaction(_ walGuard: WALResetGuard?, _ body: () throws -> Void) throws {
        if let walGuard { try walGuard.transaction(body) } else { try body() }
    }

    /// Runs `work` in a savepoint of the batch's transaction: what it changed is rolled back if it throws. GRDB's
    /// `inSavepoint` prepares its `SAVEPOINT` and `RELEASE` statements on every call (5 us of each write of a batch,
    /// timed at 64 connections); these are prepared once per connection. It runs inside `inTransaction`, whose block
    /// makes any statement after an aborted transaction throw, as GRDB's savepoints do.
    private static func inSavepoint<T>(_ db: Database, _ work: () throws -> T) throws -> T {
        try db.cachedStatement(sql: "SAVEPOINT job").execute()
        do {
            let value = try work()
            try db.cachedStatement(sql: "RELEASE SAVEPOINT job").execute()
            return value
        } catch {
            // The job's error is the one that counts; when the transaction was aborted there is nothing to undo.
            do {
                try db.cachedStatement(sql: "ROLLBACK TRANSACTION TO SAVEPOINT job").execute()
                try? db.cachedStatement(sql: "RELEASE SAVEPOINT job").execute()
            } catch {
                // The job's changes cannot be undone alone (its savepoint is gone): the whole transaction is, so the
                // batch fails as one rather than commit what its caller is told did not happen.
                if db.isInsideTransaction { try? db.rollback() }
            }
            throw error
        }
    }

    /// The writer's connection on the calling thread, outside a transaction (GRDB's synchronous access, from a
    /// synchronous function, so the asynchronous overload is not chosen).
    private static func writeHere(_ writer: any DatabaseWriter, _ body: (Database) -> Outcome) -> Outcome {
        writer.writeWithoutTransaction(body)
    }
}
