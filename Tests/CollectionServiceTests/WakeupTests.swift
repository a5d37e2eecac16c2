import Testing

@testable import CollectionService

/// The scheduler sleeps on `Wakeup` until its next due run: a lost signal would leave a triggered or freed run
/// waiting for the longest sleep (30 s).
@Suite("Wakeup", .timeLimit(.minutes(1)))
struct WakeupTests {
    /// Long enough that returning before it can only be the signal (or cancellation) at work.
    static let long = Duration.seconds(30)

    @Test func aSignalBeforeTheWaitIsKeptForIt() async {
        let wakeup = Wakeup()
        wakeup.signal()
        wakeup.signal()  // coalesced: one pending wake, not two
        let started = ContinuousClock.now
        await wakeup.wait(for: Self.long)
        #expect(ContinuousClock.now - started < .seconds(10))
        // The pending wake was used up: the next wait sleeps its whole (short) timeout.
        let again = ContinuousClock.now
        await wakeup.wait(for: .milliseconds(200))
        #expect(ContinuousClock.now - again >= .milliseconds(200))
    }

    @Test func aSignalWakesTheWaiter() async {
        let wakeup = Wakeup()
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                try? await Task.sleep(for: .milliseconds(50))
                wakeup.signal()
            }
            let started = ContinuousClock.now
            await wakeup.wait(for: Self.long)
            #expect(ContinuousClock.now - started < .seconds(10))
        }
    }

    @Test func cancellationEndsTheWait() async {
        let wakeup = Wakeup()
        let started = ContinuousClock.now
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await wakeup.wait(for: Self.long) }
            try? await Task.sleep(for: .milliseconds(50))
            group.cancelAll()
        }
        #expect(ContinuousClock.now - started < .seconds(10))
    }

    /// Signals racing waits that time out at once, are cancelled, or are woken: no round may sleep the long
    /// timeout, whatever the interleaving. Each round is timed on its own: a lost signal costs that round the
    /// whole 300 s (and the suite's time limit), while a saturated machine only slows every round a little (the
    /// full parallel run on 2 cores once took 26 s for all 2,000 rounds).
    @Test func noSignalIsLostUnderRaces() async {
        let wakeup = Wakeup()
        let rounds = 2_000
        var slowest = Duration.zero
        for round in 0..<rounds {
            let started = ContinuousClock.now
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    if round % 3 == 0 { await Task.yield() }
                    wakeup.signal()
                }
                // Every third wait also races its own zero timeout against the signal.
                await wakeup.wait(for: round % 3 == 1 ? .zero : .seconds(300))
                await group.waitForAll()
            }
            // A zero-timeout wait may leave the round's signal pending for the next: at most one extra wake.
            slowest = max(slowest, ContinuousClock.now - started)
        }
        #expect(slowest < .seconds(60), "slowest of \(rounds) rounds")
    }
}
