import NIOCore
import NIOPosix
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
        let latch = ReadyGate()
        let (passed, report) = AsyncStream<Bool>.makeStream()
        await #expect(throws: TimedOut.self) {
            try await withDeadline(.milliseconds(50), onTimeout: { TimedOut() }) { gate -> Int in
                // A query that goes on waiting though cancelled, until the test lets it go (after the answer).
                try? await latch.wait()
                report.yield((try? gate.enterCommit()) != nil)
                report.finish()
                return 1
            }
        }
        latch.open()
        #expect(await passed.first { _ in true } == false)
    }

    /// The gate's rules, without tasks or clocks: whichever of the deadline and the body's commit comes first wins.
    @Test("a commit entered before the deadline is waited for; the deadline first closes the gate")
    func theGatesRules() {
        var committed = DeadlinePhase()
        let entered = committed.enterCommit()
        let onCommit = committed.deadlinePassed()
        #expect(entered && onCommit == .waitForCommit && !committed.expired)

        var late = DeadlinePhase()
        let beforeCommit = late.deadlinePassed()
        let enteredLate = late.enterCommit()
        #expect(beforeCommit == .answerTimedOut && !enteredLate && !late.committing)

        var answered = DeadlinePhase()
        answered.finished = true
        let afterAnswer = answered.deadlinePassed()
        #expect(afterAnswer == .nothing && !answered.expired)
    }

    /// What the body registers runs once the deadline answered the caller (the stores close the connection there),
    /// at once when registered after that, and never for a body that finished in time.
    @Test("what the body registers for the deadline runs when the deadline passes, and only then")
    func expiryActions() async throws {
        let (ran, report) = AsyncStream<String>.makeStream()
        await #expect(throws: TimedOut.self) {
            try await withDeadline(.milliseconds(50), onTimeout: { TimedOut() }) { gate -> Int in
                gate.onExpiry {
                    report.yield("registered before")
                    return nil
                }
                await withCheckedContinuation { (_: CheckedContinuation<Void, Never>) in }
                return 0
            }
        }
        let late = ReadyGate()
        await #expect(throws: TimedOut.self) {
            try await withDeadline(.milliseconds(50), onTimeout: { TimedOut() }) { gate -> Int in
                try? await late.wait()  // goes on after the answer, as a query on a dead connection does
                gate.onExpiry {
                    report.yield("registered after")
                    report.finish()
                    return nil
                }
                return 0
            }
        }
        _ = try await withDeadline(.seconds(30), onTimeout: { TimedOut() }) { gate -> Int in
            gate.onExpiry {
                report.yield("in time")
                return nil
            }
            return 1
        }
        late.open()
        var seen: [String] = []
        for await event in ran { seen.append(event) }
        #expect(seen == ["registered before", "registered after"])
    }

    /// Once the deadline has passed, the answer is the timeout's, though the caller waits for what the body
    /// registered (a connection closing) and the body, cancelled, throws meanwhile; and a registered action whose work
    /// never ends holds the answer `expiryGrace` at most (a TLS close waits for a reply a vanished server never sends).
    @Test("past the deadline the answer is the timeout's, after what was registered or its grace")
    func theTimeoutOwnsTheAnswer() async throws {
        let loop = MultiThreadedEventLoopGroup.singleton.any()
        await #expect(throws: TimedOut.self) {
            try await withDeadline(.milliseconds(50), onTimeout: { TimedOut() }) { gate -> Int in
                gate.onExpiry { loop.scheduleTask(in: .milliseconds(200)) {}.futureResult }
                try await Task.sleep(for: .seconds(3600))  // throws CancellationError when the deadline cancels it
                return 0
            }
        }
        let never = loop.makePromise(of: Void.self)
        defer { never.succeed() }
        await #expect(throws: TimedOut.self) {
            try await withDeadline(.milliseconds(50), onTimeout: { TimedOut() }) { gate -> Int in
                gate.onExpiry { never.futureResult }
                await withCheckedContinuation { (_: CheckedContinuation<Void, Never>) in }
                return 0
            }
        }
    }

    /// Cancelling a query on a dead connection does not end it: a cancelled caller (a shutdown, a stopped run) must
    /// close the connection as the deadline would, or the pool's slot stays taken until TCP gives up (15 minutes).
    /// A body in its commit is left its chance to finish: the deadline closes the connection after the grace.
    @Test("the caller's cancellation runs what the body registered; during a commit, the deadline does after its grace")
    func cancellationClosesWhatTheBodyHolds() async throws {
        for committing in [false, true] {
            let (ran, report) = AsyncStream<ContinuousClock.Instant>.makeStream()
            let registered = ReadyGate()
            let deadline = committing ? Duration.seconds(1) : .seconds(3600)
            let start = ContinuousClock.now
            let waiting = Task {
                try await withDeadline(deadline, grace: .milliseconds(50), onTimeout: { TimedOut() }) { gate -> Int in
                    if committing { try gate.enterCommit() }
                    gate.onExpiry {
                        report.yield(.now)
                        return nil
                    }
                    registered.open()
                    await withCheckedContinuation { (_: CheckedContinuation<Void, Never>) in }
                    return 0
                }
            }
            try await registered.wait()
            waiting.cancel()
            await #expect(throws: CancellationError.self) { try await waiting.value }
            let closed = try await Self.first(of: ran, within: .seconds(10))
            #expect(closed != nil, "committing: \(committing)")
            // During the commit, only the deadline closes it (it cannot pass sooner than `deadline` after `start`).
            if committing, let closed { #expect(closed - start >= deadline) }
        }
    }

    /// An operation whose deadline passed while the database was still starting stops waiting for the start at once
    /// (it stayed parked until the start ended, up to 15 s, with every other one).
    @Test("a cancelled wait for the database's start ends at once")
    func aCancelledWaitForTheStartEnds() async throws {
        let gate = ReadyGate()
        let waiting = Task { try await gate.wait() }
        let registered = ContinuousClock.now + .seconds(10)
        while gate.waiterCount == 0, ContinuousClock.now < registered { try await Task.sleep(for: .milliseconds(5)) }
        #expect(gate.waiterCount == 1)
        waiting.cancel()
        let (ended, report) = AsyncStream<Bool>.makeStream()
        let watcher = Task {
            report.yield((try? await waiting.value) == nil)
            report.finish()
        }
        let outcome = try await Self.first(of: ended, within: .seconds(10))
        gate.fail(TimedOut())  // releases a waiter the cancellation missed, so the test ends either way
        _ = await watcher.value
        #expect(outcome == true, "the cancelled waiter still waited for the start")
        #expect(gate.waiterCount == 0)
        // One that waits afterwards still waits for the start's outcome.
        await #expect(throws: TimedOut.self) { try await gate.wait() }
    }

    /// What `events` yields first within `limit`, or nil (a wait that a missing event cannot hang).
    private static func first<T: Sendable>(of events: AsyncStream<T>, within limit: Duration) async throws -> T? {
        try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask { await events.first { _ in true } }
            group.addTask {
                try await Task.sleep(for: limit)
                return nil
            }
            defer { group.cancelAll() }
            return try await group.next() ?? nil
        }
    }

    @Test("a commit that never returns is answered with the timeout's error all the same")
    func aCommitThatNeverReturns() async throws {
        await #expect(throws: TimedOut.self) {
            try await withDeadline(.milliseconds(50), grace: .milliseconds(50), onTimeout: { TimedOut() }) {
                gate -> Int in
                try gate.enterCommit()
                await withCheckedContinuation { (_: CheckedContinuation<Void, Never>) in }
                return 0
            }
        }
    }
}
