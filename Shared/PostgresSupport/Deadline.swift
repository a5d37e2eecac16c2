import NIOCore
import NIOPosix
import Synchronization

/// Opens once, when the database is ready (migrated): until then operations wait here rather than fail on
/// tables that are not there yet; if the start fails, they fail with its error. A waiter that is cancelled (its
/// operation's deadline passed) stops waiting at once: left waiting, each one stayed parked until the start ended.
package final class ReadyGate: Sendable {
    private enum State {
        case waiting([UInt64: CheckedContinuation<Void, any Error>], next: UInt64)
        case open
        case failed(any Error)
    }

    private let state = Mutex(State.waiting([:], next: 0))

    package init() {}

    package func wait() async throws {
        if case .open = state.withLock({ $0 }) { return }
        let id = Mutex<UInt64?>(nil)
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let outcome: Result<Void, any Error>? = state.withLock { state in
                    switch state {
                    case .waiting(var waiters, let next):
                        // Cancelled before it got here: it does not wait at all.
                        if Task.isCancelled { return .failure(CancellationError()) }
                        waiters[next] = continuation
                        state = .waiting(waiters, next: next + 1)
                        id.withLock { $0 = next }
                        return nil
                    case .open: return .success(())
                    case .failed(let error): return .failure(error)
                    }
                }
                if let outcome { continuation.resume(with: outcome) }
            }
        } onCancel: {
            let waiter = state.withLock { state -> CheckedContinuation<Void, any Error>? in
                guard case .waiting(var waiters, let next) = state, let key = id.withLock({ $0 }),
                    let waiter = waiters.removeValue(forKey: key)
                else { return nil }
                state = .waiting(waiters, next: next)
                return waiter
            }
            waiter?.resume(throwing: CancellationError())
        }
    }

    /// Operations waiting for the start (tests).
    package var waiterCount: Int {
        if case .waiting(let waiters, _) = state.withLock({ $0 }) { return waiters.count }
        return 0
    }

    /// Whether the database is ready: a health check answers at once rather than wait for the start.
    package var isOpen: Bool {
        if case .open = state.withLock({ $0 }) { return true }
        return false
    }

    /// Whether the start failed (the process is ending).
    package var failed: Bool {
        if case .failed = state.withLock({ $0 }) { return true }
        return false
    }

    package func open() { finish(.success(())) }
    package func fail(_ error: any Error) { finish(.failure(error)) }

    private func finish(_ outcome: Result<Void, any Error>) {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, any Error>] in
            guard case .waiting(let waiters, _) = state else { return [] }
            switch outcome {
            case .success: state = .open
            case .failure(let error): state = .failed(error)
            }
            return Array(waiters.values)
        }
        for waiter in waiters { waiter.resume(with: outcome) }
    }
}

/// Runs `body`, or throws `onTimeout()` when it has not finished within `timeout`: a database that does not
/// answer becomes a prompt 503, not a request that hangs until the client gives up.
///
/// The body runs in a task of its own rather than as a child task, on purpose: a task group waits for its
/// children, and postgres-nio 1.33 does not end a query whose connection PostgreSQL closed in the middle of a
/// transaction, cancelled or not (the replica restart test saw such requests still waiting 10 s after their 5 s
/// deadline, for ever). At the deadline what the body registered with `gate.onExpiry` runs (the PostgreSQL stores
/// close the connection it waits on there), the body is cancelled, and the caller is answered once what those actions
/// started has ended, `expiryGrace` (0.5 s) later at most. A connection
/// whose server vanished without a reset (a failover that takes the primary's address away) is never answered, and
/// the pool gives its slot back only once it is closed: TCP notices after about 15 minutes, and until then the
/// stuck connections held the pool's slots, every request of the replica waiting for one and answered 503.
/// The caller's cancellation cancels the body and ends the wait too, and runs what the body registered as the deadline
/// would (a body in its commit keeps its deadline for that).
///
/// The deadline is a task scheduled on an event loop, removed when the body finishes. It was a task sleeping for the
/// timeout, but a cancelled `Task.sleep` is only freed at the end of its sleep (swiftlang/swift#60441): every
/// operation left its sleeping task behind for 5 s, 27-34 MiB of a PostgreSQL replica's RSS under `GET`s at 64
/// connections (78-85 MiB against 51 with a 0.5 s timeout, 7.5k against 8.1k req/s).
package func withDeadline<T: Sendable>(
    _ timeout: Duration, onTimeout: @escaping @Sendable () -> any Error,
    _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
    try await withDeadline(timeout, onTimeout: onTimeout) { (_: DeadlineGate) in try await body() }
}

/// `withDeadline` for a body whose work becomes permanent at one point, a transaction's `COMMIT`: the body calls
/// `gate.enterCommit()` just before it. Past the deadline that throws, so the transaction rolls back: a caller
/// answered that the operation did not finish must be able to trust that it changed nothing, and a cancelled
/// query does not always end (a write waiting for a lock that another session held past the deadline committed
/// after its 503 once the lock was free, in one run out of several). Once the body has entered its commit, the
/// deadline waits for it `grace` more before answering all the same: a `COMMIT` takes milliseconds, and one that
/// takes a second more is on a connection PostgreSQL closed (with a grace of one more 5 s timeout, a write caught by a
/// server restart was answered at 10 s, past the restart test's client timeout).
package func withDeadline<T: Sendable>(
    _ timeout: Duration, grace: Duration = .seconds(1), onTimeout: @escaping @Sendable () -> any Error,
    _ body: @escaping @Sendable (DeadlineGate) async throws -> T
) async throws -> T {
    let tasks = DeadlineTasks<T>()
    let gate = DeadlineGate(
        pass: { tasks.state.withLock { $0.phase.enterCommit() } },
        onExpiry: { action in
            let now = tasks.state.withLock { state in
                guard !state.deadlineAnswered else { return true }
                state.onExpiry.append(action)
                return false
            }
            if now { _ = action() }
        })
    return try await withTaskCancellationHandler {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            let answer = AnswerOnce(continuation)
            let work = Task {
                do {
                    answer.resume(with: .success(try await body(gate)))
                } catch {
                    answer.resume(with: .failure(error))
                }
                tasks.state.withLock { state in
                    state.phase.finished = true
                    return state.timer
                }?.cancel()
            }
            let loop = MultiThreadedEventLoopGroup.singleton.any()
            let timedOut: @Sendable () -> Void = {
                // The answer is the deadline's from here on, whatever the body throws meanwhile (a cancellation).
                let caller = answer.take()
                let actions: [ExpiryAction]? = tasks.state.withLock { state in
                    // The body answered first: it holds nothing any more. A caller cancelled while the body was
                    // committing has had its answer, but what the body waits on is closed all the same.
                    guard caller != nil || state.cancelled else { return nil }
                    state.deadlineAnswered = true
                    defer { state.onExpiry = [] }
                    return state.onExpiry
                }
                guard let actions else { return }
                // Before the body is cancelled: what it holds (a connection) is closed before it can hand it back.
                let ending = actions.compactMap { $0() }
                work.cancel()
                guard let caller else { return }
                // The caller is answered once what the actions started has ended (a connection closed: the pool has
                // then seen it close, and lends the caller's next request a new one), or `expiryGrace` later (a TLS
                // close waits for the server's reply, which a vanished server never sends).
                guard !ending.isEmpty else { return caller.resume(throwing: onTimeout()) }
                let once = AnswerOnce(caller)
                EventLoopFuture.whenAllComplete(ending, on: loop).whenComplete { _ in
                    once.resume(with: .failure(onTimeout()))
                }
                loop.scheduleTask(in: .init(expiryGrace)) { once.resume(with: .failure(onTimeout())) }
            }
            let timer = loop.scheduleTask(in: .init(timeout)) {
                let firing = tasks.state.withLock { state in
                    let firing = state.phase.deadlinePassed()
                    if firing == .waitForCommit {
                        // Its outcome is the answer, if it comes within the grace.
                        state.timer = loop.scheduleTask(in: .init(grace), timedOut)
                    }
                    return firing
                }
                if firing == .answerTimedOut { timedOut() }
            }
            let (cancelled, finished) = tasks.state.withLock { state in
                state.work = work
                state.timer = timer
                state.answer = answer
                return (state.cancelled, state.phase.finished)
            }
            // The body ended before the deadline was stored here: nothing else would cancel it.
            if finished { timer.cancel() }
            if cancelled {
                timer.cancel()
                work.cancel()
                answer.resume(with: .failure(CancellationError()))
            }
        }
    } onCancel: {
        let cancelled:
            (work: Task<Void, Never>?, timer: Scheduled<Void>?, answer: AnswerOnce<T>?, actions: [ExpiryAction])
        cancelled = tasks.state.withLock { state in
            state.cancelled = true
            state.phase.expired = true
            // A body in its commit keeps its deadline, which closes what it waits on should the commit not return
            // within the grace (its outcome is unknown: closed at once, a commit that was about to succeed fails).
            guard !state.phase.committing else { return (state.work, nil, state.answer, []) }
            state.deadlineAnswered = true
            defer { state.onExpiry = [] }
            return (state.work, state.timer, state.answer, state.onExpiry)
        }
        // As at the deadline: what the body holds (a connection that may never answer) is closed before the body is
        // cancelled, since cancelling a query does not end it, and the pool's slot would stay taken for ever.
        for action in cancelled.actions { _ = action() }
        cancelled.timer?.cancel()
        cancelled.work?.cancel()
        cancelled.answer?.resume(with: .failure(CancellationError()))
    }
}

/// What `withDeadline` hands its body: the point after which the body's work cannot be undone, and what to undo
/// should the deadline pass.
package struct DeadlineGate: Sendable {
    fileprivate let pass: @Sendable () -> Bool
    fileprivate let register: @Sendable (@escaping @Sendable () -> EventLoopFuture<Void>?) -> Void

    fileprivate init(
        pass: @escaping @Sendable () -> Bool,
        onExpiry: @escaping @Sendable (@escaping @Sendable () -> EventLoopFuture<Void>?) -> Void
    ) {
        self.pass = pass
        self.register = onExpiry
    }

    /// Call just before the work becomes permanent (a `COMMIT`); throws `CancellationError` once the caller has been
    /// answered that the operation did not finish (the deadline passed, or the caller was cancelled).
    package func enterCommit() throws {
        guard pass() else { throw CancellationError() }
    }

    /// Runs `action` if the deadline passes or the caller is cancelled before the body finished (at once, if that has
    /// happened already): closing the connection the body waits on, which nothing else would end (see
    /// `withDeadline`). The caller is answered once the future `action` returns (if any) has completed.
    package func onExpiry(_ action: @escaping @Sendable () -> EventLoopFuture<Void>?) {
        register(action)
    }
}

/// Where a body stands against its deadline: the rules of the commit gate, apart from the tasks and the timers.
package struct DeadlinePhase: Sendable, Equatable {
    /// What the deadline does when it passes.
    package enum Firing: Sendable, Equatable {
        /// Answer the caller that the operation did not finish (and cancel the body).
        case answerTimedOut
        /// The body is committing: wait for its outcome (within the grace).
        case waitForCommit
        /// The body has answered already.
        case nothing
    }

    /// The body has ended (and answered).
    package var finished = false
    /// The caller was answered that the operation did not finish (the deadline, or the caller's cancellation).
    package var expired = false
    /// The body passed its gate.
    package var committing = false

    package init() {}

    /// The deadline passes.
    package mutating func deadlinePassed() -> Firing {
        if finished { return .nothing }
        if committing { return .waitForCommit }
        expired = true
        return .answerTimedOut
    }

    /// The body is about to make its work permanent: allowed unless the caller was told it did not finish.
    package mutating func enterCommit() -> Bool {
        guard !expired else { return false }
        committing = true
        return true
    }
}

/// The body's task, the deadline's scheduled task and the caller's answer; whether the caller was cancelled before
/// they existed, and the body's phase.
private final class DeadlineTasks<T: Sendable>: Sendable {
    let state = Mutex<
        (
            work: Task<Void, Never>?, timer: Scheduled<Void>?, answer: AnswerOnce<T>?, cancelled: Bool,
            phase: DeadlinePhase, onExpiry: [@Sendable () -> EventLoopFuture<Void>?], deadlineAnswered: Bool
        )
    >((nil, nil, nil, false, DeadlinePhase(), [], false))
}

/// A continuation resumed by whichever of the body and the timer finishes first; the other's answer is dropped.
private final class AnswerOnce<T: Sendable>: Sendable {
    private let continuation: Mutex<CheckedContinuation<T, any Error>?>

    init(_ continuation: CheckedContinuation<T, any Error>) { self.continuation = Mutex(continuation) }

    func resume(with result: Result<T, any Error>) {
        take()?.resume(with: result)
    }

    /// The continuation, if nobody has answered yet; nobody else will.
    func take() -> CheckedContinuation<T, any Error>? {
        continuation.withLock { pending in
            defer { pending = nil }
            return pending
        }
    }
}

/// What a body registers to be run should the deadline pass or its caller be cancelled (`DeadlineGate.onExpiry`).
private typealias ExpiryAction = @Sendable () -> EventLoopFuture<Void>?

/// How long a deadline that passed waits for what its body registered (`DeadlineGate.onExpiry`) before it answers.
let expiryGrace = Duration.milliseconds(500)
