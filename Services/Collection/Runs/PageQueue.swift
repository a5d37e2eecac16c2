import NIOConcurrencyHelpers

/// The pages of a run between the task that fetches them and the run that writes them: up to `limit` pages wait,
/// and the run takes every waiting page at once, so they share one append, one fsync and one index savepoint.
///
/// With one page read ahead, the run wrote page after page while the next was fetched and parsed, and the two
/// halves took about as long (a million TAXII records: 5.5 s fetching and parsing, 6 s writing, of which 1 s
/// waiting for fsyncs). Letting pages wait turns the writer's fixed cost per fsync into a cost per batch.
///
/// The fetching task ends with `finish()` or `fail(_:)`; the run ends the queue with `close()` when it stops
/// early (a `defer`: it does not wait), which wakes a fetching task waiting for room (its `put` then throws
/// `CancellationError`).
final class PageQueue: Sendable {
    private struct State {
        var pages: [CollectorPage] = []
        /// How the fetching ended: after the last page, or with an error the run sees once the pages before it
        /// are taken.
        var end: Result<Void, any Error>?
        var closed = false
        /// `tick()` was called since the run last took pages.
        var ticked = false
        var taker: CheckedContinuation<Void, Never>?
        var putter: CheckedContinuation<Void, Never>?
    }

    private let limit: Int
    private let state = NIOLockedValueBox(State())

    init(limit: Int) {
        precondition(limit > 0, "a queue of pages holds at least one")
        self.limit = limit
    }

    /// Adds a page, waiting while `limit` pages wait; throws `CancellationError` once the run closed the queue.
    func put(_ page: CollectorPage) async throws {
        while true {
            let room = state.withLockedValue { $0.closed || $0.pages.count < limit }
            if room { break }
            await withCheckedContinuation { continuation in
                let wait = state.withLockedValue { state in
                    guard !state.closed, state.pages.count >= limit else { return false }
                    state.putter = continuation
                    return true
                }
                if !wait { continuation.resume() }
            }
        }
        let taker = try state.withLockedValue { state throws -> CheckedContinuation<Void, Never>? in
            if state.closed { throw CancellationError() }
            state.pages.append(page)
            defer { state.taker = nil }
            return state.taker
        }
        taker?.resume()
    }

    /// No page follows those put.
    func finish() { end(.success(())) }

    /// Fetching failed: the run takes the pages put before, then sees `error`.
    func fail(_ error: any Error) { end(.failure(error)) }

    private func end(_ how: Result<Void, any Error>) {
        wakeTaker { state in
            if state.end == nil { state.end = how }
        }
    }

    /// Changes the state and wakes the run if it waits for a page.
    private func wakeTaker(after change: (inout State) -> Void) {
        let taker = state.withLockedValue { state in
            change(&state)
            defer { state.taker = nil }
            return state.taker
        }
        taker?.resume()
    }

    /// Every waiting page, in order, waiting for one when none is there; `nil` after the last page; throws the
    /// fetching's error once no page put before it is left. No page (`[]`) when `tick()` was called meanwhile, so that
    /// the run can do what is due while a page takes long (renew its lease).
    func takeAll() async throws -> [CollectorPage]? {
        while true {
            let taken = state.withLockedValue {
                state -> (
                    pages: [CollectorPage], end: Result<Void, any Error>?, putter: CheckedContinuation<Void, Never>?,
                    ticked: Bool
                ) in
                let pages = state.pages
                state.pages = []
                defer {
                    if !pages.isEmpty { state.putter = nil }
                    state.ticked = false
                }
                return (pages, state.end, pages.isEmpty ? nil : state.putter, state.ticked)
            }
            taken.putter?.resume()
            if !taken.pages.isEmpty { return taken.pages }
            if let end = taken.end {
                try end.get()
                return nil
            }
            if taken.ticked { return [] }
            await withCheckedContinuation { continuation in
                let wait = state.withLockedValue { state in
                    guard state.pages.isEmpty, state.end == nil, !state.ticked else { return false }
                    state.taker = continuation
                    return true
                }
                if !wait { continuation.resume() }
            }
        }
    }

    /// Wakes the run waiting for a page, which `takeAll` then answers with no page.
    func tick() {
        wakeTaker { $0.ticked = true }
    }

    /// The run stops taking pages: a fetching task waiting for room wakes up and stops.
    func close() {
        let putter = state.withLockedValue { state in
            state.closed = true
            defer { state.putter = nil }
            return state.putter
        }
        putter?.resume()
    }
}
