import AsyncHTTPClient
import NIOCore

extension HTTPClientResponse {
    /// The whole body, at most `limit` bytes (more throws `NIOTooManyBytesError`), or `nil` when it has not all
    /// arrived by `deadline`.
    ///
    /// `HTTPClient.execute`'s deadline ends with the response's head: a peer that sent its head and then went quiet
    /// (a frozen host, a link gone without a reset) held the caller in `collect` for ever. The body is read in a
    /// child task raced against a sleep; the caller's calls are few a run, so the sleep a cancellation leaves behind
    /// until its end (swiftlang/swift#60441) costs little here.
    package func collectBody(upTo limit: Int, by deadline: ContinuousClock.Instant) async throws -> ByteBuffer? {
        let body = self.body
        return try await withThrowingTaskGroup(of: ByteBuffer?.self) { group in
            group.addTask { try await body.collect(upTo: limit) }
            group.addTask {
                try await Task.sleep(until: deadline, clock: .continuous)
                return nil
            }
            defer { group.cancelAll() }
            return try await group.next() ?? nil
        }
    }
}
