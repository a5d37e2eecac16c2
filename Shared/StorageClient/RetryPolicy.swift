import Foundation

/// How a call is retried after a failure that may pass: the connection could not be made or broke, or the
/// server answered 502, 503, 504 or 429. `HTTPStorageClient` uses it with the storage, the collection
/// service's source client with the feeds (with its own defaults).
///
/// Only idempotent calls are retried (every call of the client is: a `PUT` always carries an
/// `Idempotency-Key`, so the service applies it once however often it arrives). The wait before retry *n*
/// (1-based) is "full jitter": a uniformly random delay in `0...min(maxDelay, baseDelay * 2^(n-1))`, which
/// spreads out many collectors that lost the storage at the same instant. A `Retry-After` from the service
/// is honoured as a lower bound on that wait; one longer than `maxRetryAfter` ends the retries at once and
/// the error goes to the caller (the `WatermarkManager` then queues the update on disk) rather than
/// blocking a collection run for minutes.
///
/// A timeout (no answer within the client's timeout) is not retried unless `retryTimeouts` is set: a hung
/// service would otherwise hold each call for `maxAttempts` times the timeout.
public struct RetryPolicy: Sendable, Equatable {
    /// Attempts in total, the first one included; 1 disables retries.
    public var maxAttempts: Int
    /// The cap of the first retry's random delay; doubles with each further retry.
    public var baseDelay: Duration
    /// The largest delay drawn by the backoff.
    public var maxDelay: Duration
    /// The longest `Retry-After` the client waits for; a longer one is returned to the caller as an error.
    public var maxRetryAfter: Duration
    /// Also retry calls that ran into the client's timeout.
    public var retryTimeouts: Bool

    public init(
        maxAttempts: Int = 4, baseDelay: Duration = .milliseconds(200), maxDelay: Duration = .seconds(5),
        maxRetryAfter: Duration = .seconds(30), retryTimeouts: Bool = false
    ) {
        self.maxAttempts = max(1, maxAttempts)
        self.baseDelay = max(.zero, baseDelay)
        self.maxDelay = max(.zero, maxDelay)
        self.maxRetryAfter = max(.zero, maxRetryAfter)
        self.retryTimeouts = retryTimeouts
    }

    /// 4 attempts, 0.2 s doubling up to 5 s, `Retry-After` up to 30 s.
    public static let `default` = RetryPolicy()

    /// One attempt only.
    public static let none = RetryPolicy(maxAttempts: 1)

    /// The backoff cap before retry `retry` (1 for the first retry): `min(maxDelay, baseDelay * 2^(retry-1))`.
    public func backoffCap(beforeRetry retry: Int) -> Duration {
        let exponent = min(max(0, retry - 1), 30)
        let cap = baseDelay * (1 << exponent)
        return min(cap, maxDelay)
    }

    /// The delay before retry `retry`, or `nil` when the client must give up instead.
    ///
    /// - Parameters:
    ///   - retryAfter: the service's `Retry-After`, if it sent one.
    ///   - random: a number in `0...1` (injectable so tests are deterministic).
    public func delay(beforeRetry retry: Int, retryAfter: Duration?, random: Double) -> Duration? {
        guard retry < maxAttempts else { return nil }
        let jittered = backoffCap(beforeRetry: retry) * min(1, max(0, random))
        guard let retryAfter else { return jittered }
        guard retryAfter <= maxRetryAfter else { return nil }
        return max(retryAfter, jittered)
    }

    /// `Retry-After` as delta-seconds or as an HTTP-date (RFC 9110); `nil` for anything else, a negative
    /// number included (the caller then backs off as if it was not sent).
    public static func retryAfter(_ value: String) -> Duration? {
        let text = value.trimmingCharacters(in: .whitespaces)
        if let seconds = Int64(text) { return seconds >= 0 ? .seconds(seconds) : nil }
        guard let date = httpDate(text) else { return nil }
        return .milliseconds(max(0, Int64(date.timeIntervalSinceNow * 1000)))
    }

    /// An HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110's IMF-fixdate), as `Retry-After` and `Date` carry it.
    public static func httpDate(_ value: String) -> Date? {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss zzz"
        return formatter.date(from: value.trimmingCharacters(in: .whitespaces))
    }
}
