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
}
