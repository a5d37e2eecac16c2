import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import StorageClient
import WatermarkCore

extension RetryPolicy {
    /// How a collector retries a source that answers 429 or 5xx, or cannot be reached: 6 attempts, full jitter
    /// from 0.5 s doubling (waits of up to 0.5, 1, 2, 4 and 8 s, 15.5 s in all); a `Retry-After` over 120 s fails
    /// the run instead of stalling it (the scheduler tries again later). Four attempts gave up within 3.5 s, so a
    /// gateway restarting for five seconds, or a 429 without `Retry-After`, failed the run and its catch-up with it.
    static let source = RetryPolicy(
        maxAttempts: 6, baseDelay: .milliseconds(500), maxDelay: .seconds(30), maxRetryAfter: .seconds(120))
}

/// A source's answer: status, headers, body.
struct SourceResponse: Sendable {
    var status: Int
    var headers: HTTPHeaders
    var body: Data
    /// The answer is to the request's `retryURL`, not to its first URL.
    var isRetryAnswer = false
}

/// GET with a timeout, a body size limit and retries of transient failures, shared by the HTTP collectors.
///
/// Retries 429 and 5xx (honouring `Retry-After` in seconds or as an HTTP date) and connection failures; a
/// timeout is not retried, because the source's timeout already bounds how long one page may take.
struct SourceHTTPClient: Sendable {
    let httpClient: HTTPClient
    var timeout: Duration
    var retry: RetryPolicy
    var maxBodyBytes: Int = 64 * 1024 * 1024
    var logger: Logger
    /// Injectable so tests do not wait for real backoffs.
    var sleep: @Sendable (Duration) async throws -> Void = { try await Task.sleep(for: $0) }

    init(
        httpClient: HTTPClient, timeout: Duration, retry: RetryPolicy = .source, logger: Logger,
        sleep: @escaping @Sendable (Duration) async throws -> Void = { try await Task.sleep(for: $0) }
    ) {
        self.httpClient = httpClient
        self.timeout = timeout
        self.retry = retry
        self.logger = logger
        self.sleep = sleep
    }

    /// GETs `url`; any answer other than 2xx (after retries) throws `CollectorError.httpStatus`.
    /// `displayURL` is what error messages show (without query secrets). Retries GET `retryURL` when one is given:
    /// for a request that must not be sent twice, the request that asks for the same again.
    func get(_ url: String, headers: HTTPHeaders, retryURL: String? = nil) async throws(CollectorError)
        -> SourceResponse
    {
        let display = Self.displayURL(url)
        var attempt = 0
        while true {
            attempt += 1
            let outcome = await attemptOnce(attempt == 1 ? url : retryURL ?? url, headers: headers, display: display)
            let delay: Duration
            switch outcome {
            case .success(var response) where (200..<300).contains(response.status):
                response.isRetryAnswer = attempt > 1 && retryURL != nil
                return response
            case .success(let response) where response.status == 429 || (500..<600).contains(response.status):
                let error = CollectorError.httpStatus(response.status, url: display, detail: Self.detail(response.body))
                guard attempt < retry.maxAttempts else { throw error }
                let retryAfter = response.headers.first(name: "Retry-After").flatMap(RetryPolicy.retryAfter)
                guard let wait = retry.delay(beforeRetry: attempt, retryAfter: retryAfter, random: .random(in: 0...1))
                else {
                    // Attempts remain, so the only reason to give up is a Retry-After longer than the policy waits.
                    throw .rateLimited(url: display, retryAfterSeconds: retryAfter?.components.seconds ?? 0)
                }
                delay = wait
                logger.warning(
                    "source request retried",
                    metadata: [
                        "url": "\(display)", "status": "\(response.status)", "attempt": "\(attempt)",
                        "delay_ms":
                            "\(delay.components.seconds * 1000 + delay.components.attoseconds / 1_000_000_000_000_000)",
                    ]
                )
            case .success(let response)
            where attempt == 1 && retryURL != nil && [400, 404, 410].contains(response.status):
                // The paging token refused: medallion forgets a session unused for 30 s (a run writing slowly
                // between two pages) and answers 400 "next not valid"; behind several workers another one may
                // not know it. Asked again by date at once, rather than failing the run.
                delay = .zero
                logger.warning(
                    "source request asked again by date: the source refused its paging token",
                    metadata: [
                        "url": "\(display)", "status": "\(response.status)", "detail": "\(Self.detail(response.body))",
                    ])
            case .success(let response):
                throw .httpStatus(response.status, url: display, detail: Self.detail(response.body))
            case .failure(let error):
                guard case .transport = error,
                    let wait = retry.delay(beforeRetry: attempt, retryAfter: nil, random: .random(in: 0...1))
                else { throw error }
                delay = wait
                logger.warning(
                    "source request retried",
                    metadata: ["url": "\(display)", "error": "\(error)", "attempt": "\(attempt)"]
                )
            }
            do {
                try await sleep(delay)
            } catch {
                throw .transport(url: display, detail: "cancelled while waiting to retry")
            }
        }
    }

    private func attemptOnce(_ url: String, headers: HTTPHeaders, display: String) async -> Result<
        SourceResponse, CollectorError
    > {
        var request = HTTPClientRequest(url: url)
        request.method = .GET
        request.headers = headers
        let seconds = max(1, timeout.components.seconds)
        let maxBodyBytes = self.maxBodyBytes
        do {
            let response = try await httpClient.execute(request, timeout: .seconds(seconds))
            // The body within the timeout too: `execute`'s deadline ends with the response's head, and a source that
            // went quiet in the middle of its body held the run for ever.
            let body = try await response.collectBody(upTo: maxBodyBytes, by: .now + .seconds(seconds))
            guard let body else { return .failure(.timeout(url: display, seconds: seconds)) }
            return .success(
                SourceResponse(status: Int(response.status.code), headers: response.headers, body: Data(buffer: body)))
        } catch let error as HTTPClientError {
            if error == .deadlineExceeded || error == .readTimeout || error == .connectTimeout {
                return .failure(.timeout(url: display, seconds: seconds))
            }
            if error == .bodyLengthMismatch {
                return .failure(.malformed("the answer of \(display) was cut short"))
            }
            return .failure(.transport(url: display, detail: "\(error)"))
        } catch let error as NIOTooManyBytesError {
            return .failure(.malformed("the answer of \(display) is larger than \(maxBodyBytes) bytes (\(error))"))
        } catch is CancellationError {
            return .failure(.transport(url: display, detail: "cancelled"))
        } catch {
            return .failure(.transport(url: display, detail: "\(error)"))
        }
    }

    /// The URL without its query, for messages and logs (queries may carry filters, never needed to diagnose).
    static func displayURL(_ url: String) -> String {
        String(url.prefix { $0 != "?" })
    }

    /// A short, single-line excerpt of an error body.
    static func detail(_ body: Data) -> String {
        guard !body.isEmpty else { return "" }
        if let object = try? JSONSerialization.jsonObject(with: body) as? [String: Any] {
            for key in ["title", "description", "detail", "message", "error"] {
                if let text = object[key] as? String { return String(text.prefix(200)) }
                if let nested = object[key] as? [String: Any], let text = nested["message"] as? String {
                    return String(text.prefix(200))
                }
            }
        }
        return String(String(decoding: body.prefix(200), as: UTF8.self).map { $0.isNewline ? " " : $0 })
    }
}
