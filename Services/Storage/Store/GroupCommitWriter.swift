import GRDB

/// Group commit: concurrent writes run in one SQLite transaction, so one fsync serves them all.
///
/// Each write is a job. The first job to arrive while no batch is running leads: it takes every job waiting
/// (its own included), runs them in arrival order in one `writer.write` transaction, each inside its own
/// savepoint, and commits. A job that throws (a 409 or 412 of the rules) rolls back its savepoint only, so it
/// changes nothing and the others keep their outcome; later jobs of the batch see the writes of the earlier
/// ones. Every caller is answered only after the commit returned (with `synchronous=FULL`, once the WAL is on
/// disk); a failed commit fails every job of the batch. Jobs that arrive while a batch commits wait for the
/// next one, led by the first of them, so no caller runs batches for others indefinitely.
actor GroupCommitWriter {
    typealias Work = @Sendable (Database) throws -> any Sendable

    private struct Job: Sendable {
        let work: Work
        /// Resumed with `.done` (a batch led by another job ran this one) or `.lead`.
        let role: CheckedContinuation<Role, Never>?
    }

    private enum Role: Sendable {
        case lead
        case done(Result<any Sendable, any Error>)
    }

    private let writer: any DatabaseWriter
    /// Largest batch: bounds the time one transaction holds the writer.
    private let maxBatch: Int
    private var waiting: [Job] = []
    private(set) var batchRunning = false
    /// Batches committed and jobs they carried, for `/metrics`.
    private(set) var batches = 0
    private(set) var jobs = 0
    /// Jobs queued for the next batch (tests wait on it rather than on time).
    var waitingCount: Int { waiting.count }

    init(writer: any DatabaseWriter, maxBatch: Int = 256) {
        self.writer = writer
        self.maxBatch = maxBatch
    }

    /// Runs `work` in the next batch and returns once that batch committed.
    func write<T: Sendable>(_ work: @escaping @Sendable (Database) throws -> T) async throws -> T {
        let role: Role = await withCheckedContinuation { continuation in
            waiting.append(Job(work: work, role: continuation))
            if !batchRunning {
                batchRunning = true
                waiting.removeLast().role?.resume(returning: .lead)
                waiting.append(Job(work: work, role: nil))
            }
        }
        let result: Result<any Sendable, any Error>
        switch role {
        case .done(let outcome):
            result = outcome
        case .lead:
            result = await lead()
        }
        // Every job's result is the value its own `work` returned.
        return try result.get() as! T
    }

    /// Runs one batch (the leader's job is the one without a continuation) and hands the lead on.
    private func lead() async -> Result<any Sendable, any Error> {
        let batch = Array(waiting.prefix(maxBatch))
        waiting.removeFirst(batch.count)
        let outcomes = await Self.run(batch.map(\.work), on: writer)
        batches += 1
        jobs += batch.count
        var own: Result<any Sendable, any Error> = .failure(CancellationError())
        for (job, outcome) in zip(batch, outcomes) {
            if let role = job.role { role.resume(returning: .done(outcome)) } else { own = outcome }
        }
        if let next = waiting.firstIndex(where: { $0.role != nil }) {
            let job = waiting[next]
            waiting[next] = Job(work: job.work, role: nil)
            job.role?.resume(returning: .lead)
        } else {
            batchRunning = false
        }
        return own
    }

    /// One transaction, one savepoint per job; a commit failure fails them all.
    private static func run(_ works: [Work], on writer: any DatabaseWriter) async -> [Result<any Sendable, any Error>] {
        do {
            return try await writer.write { db in
                works.map { work in
                    var value: (any Sendable)?
                    do {
                        try db.inSavepoint {
                            value = try work(db)
                            return .commit
                        }
                        return .success(value!)
                    } catch {
                        return .failure(error)
                    }
                }
            }
        } catch {
            return works.map { _ in .failure(error) }
        }
    }
}
