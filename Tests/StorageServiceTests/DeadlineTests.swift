import PostgresSupport
import Testing

/// `withDeadline`: what a PostgreSQL operation that does not answer turns into.
@Suite("Operation deadline", .timeLimit(.minutes(1)))
struct DeadlineTests {
    struct TimedOut: Error {}

    @Test("a body that finishes in time gives its value")
    func inTime() async throws {
        let value = try await withDeadline(.seconds(30), onTimeout: { TimedOut() }) { 42 }
        #expect(value == 42)
    }

    @Test("a body that never ends, even when cancelled, is answered with the timeout's error")
    func neverEnds() async throws {
        await #expect(throws: TimedOut.self) {
            try await withDeadline(.milliseconds(50), onTimeout: { TimedOut() }) { () async -> Int in
                // Ignores cancellation, like a query on a connection PostgreSQL closed mid-transaction.
                await withCheckedContinuation { (_: CheckedContinuation<Void, Never>) in }
                return 0
            }
        }
    }

    @Test("the caller's cancellation ends the wait with CancellationError, before the deadline")
    func callerCancelled() async throws {
        let waiting = Task {
            try await withDeadline(.seconds(3600), onTimeout: { TimedOut() }) { () async -> Int in
                await withCheckedContinuation { (_: CheckedContinuation<Void, Never>) in }
                return 0
            }
        }
        waiting.cancel()
        await #expect(throws: CancellationError.self) { try await waiting.value }
    }

    @Test("a body that reaches its commit after the deadline answered may not commit")
    func noCommitAfterTheDeadline() async throws {
        let (passed, report) = AsyncStream<Bool>.makeStream()
        await #expect(throws: TimedOut.self) {
            try await withDeadline(.milliseconds(50), onTimeout: { TimedOut() }) { gate -> Int in
                // A query that went on waiting though cancelled, then returned: the transaction is about to commit.
                await withCheckedContinuation { (resume: CheckedContinuation<Void, Never>) in
                    Task {
                        try? await Task.sleep(for: .milliseconds(200))
                        resume.resume()
                    }
                }
                report.yield((try? gate.enterCommit()) != nil)
                report.finish()
                return 1
            }
        }
        #expect(await passed.first { _ in true } == false)
    }

    @Test("a body that entered its commit before the deadline is answered with its own outcome")
    func aCommitInFlightIsWaitedFor() async throws {
        let value = try await withDeadline(.seconds(1), onTimeout: { TimedOut() }) { gate -> Int in
            try gate.enterCommit()
            // The COMMIT takes longer than the deadline (not cancelled: nothing would undo it now).
            try await Task.sleep(for: .milliseconds(1500))
            return 7
        }
        #expect(value == 7)
    }

    @Test("a commit that never returns is answered with the timeout's error all the same")
    func aCommitThatNeverReturns() async throws {
        await #expect(throws: TimedOut.self) {
            try await withDeadline(.milliseconds(50), onTimeout: { TimedOut() }) { gate -> Int in
                try gate.enterCommit()
                await withCheckedContinuation { (_: CheckedContinuation<Void, Never>) in }
                return 0
            }
        }
    }
}
