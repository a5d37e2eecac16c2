import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import NIOSSL
import ServiceSupport
import WatermarkCore

// Over 300 lines for a reason: every call of the API and the one transport they share (retries, limits, error
// mapping) are one class, whose transport stays private to it.

/// The Storage Service's HTTP API (CONTRACT §1) behind the `StorageClient` protocol.
///
/// Every call has a timeout (default 30 s) and reads at most `maxResponseBytes` of an answer. Transient
/// failures (connection refused or broken, 502/503/504, 429) are retried with exponential backoff and full
/// jitter as `RetryPolicy` says; all calls are idempotent, because an update always carries an
/// `Idempotency-Key` (generated here when the caller gave none), so a retry is never applied twice. Errors
/// are `StorageClientError` values carrying the service's error code and message.
///
/// The client owns the `HTTPClient` it creates and `shutdown()` shuts it down; an injected one is left to
/// its owner.
public final class HTTPStorageClient: StorageClient {
    /// Sleeps between attempts; injectable so tests need not wait for real backoff delays.
    public typealias Sleeper = @Sendable (Duration) async throws -> Void

    /// The service's root, without a trailing slash (e.g. `http://storage:8000`).
    public let baseURL: String
    public let timeout: Duration
    public let retryPolicy: RetryPolicy
    /// The most bytes read of one answer; a longer answer is an error, never buffered whole.
    public let maxResponseBytes: Int

    private let token: String?
    /// Set on every request, so a shared `HTTPClient` trusts the private CA for the storage's calls only.
    private let tlsConfiguration: TLSConfiguration?
    private let httpClient: HTTPClient
    private let ownsHTTPClient: Bool
    private let logger: Logger
    private let sleep: Sleeper
    private let random: @Sendable () -> Double

    /// - Parameters:
    ///   - baseURL: `http(s)://host:port`, optionally with a path prefix.
    ///   - token: sent as `Authorization: Bearer <token>`; never logged.
    ///   - timeout: for each attempt, from sending the request to the end of the answer.
    ///   - httpClient: a shared client to use; when `nil` the storage client makes (and owns) one.
    ///   - tlsConfiguration: for `https://`, e.g. a private CA's trust roots
    ///     (`HTTPStorageClient.tlsConfiguration(trusting:)`), set on each request (also through an injected
    ///     client); `nil` trusts the system's roots.
    public init(
        baseURL: String, token: String? = nil, timeout: Duration = .seconds(30), retryPolicy: RetryPolicy = .default,
        httpClient: HTTPClient? = nil, tlsConfiguration: TLSConfiguration? = nil, maxResponseBytes: Int = 1 << 20,
        logger: Logger,
        sleep: @escaping Sleeper = { try await Task.sleep(for: $0) },
        random: @escaping @Sendable () -> Double = { Double.random(in: 0...1) }
    ) {
        var base = baseURL.trimmingCharacters(in: .whitespaces)
        while base.hasSuffix("/") { base.removeLast() }
        self.baseURL = base
        self.token = token.flatMap { $0.isEmpty ? nil : $0 }
        self.timeout = timeout
        self.retryPolicy = retryPolicy
        self.maxResponseBytes = maxResponseBytes
        self.tlsConfiguration = tlsConfiguration
        if let httpClient {
            self.httpClient = httpClient
            self.ownsHTTPClient = false
        } else {
            self.httpClient = HTTPClient(
                eventLoopGroup: HTTPClient.defaultEventLoopGroup,
                configuration: Self.configuration(timeout: timeout)
            )
            self.ownsHTTPClient = true
        }
        var logger = logger
        logger[metadataKey: "storage_url"] = "\(base)"
        self.logger = logger
        self.sleep = sleep
        self.random = random
    }

    /// The configuration of an `HTTPClient` made here. AsyncHTTPClient by default keeps retrying a refused
    /// connection until the request's deadline, so a storage that is down would hold every call for the
    /// whole timeout; this client fails such a connection at once and retries with its own backoff instead.
    /// An injected `HTTPClient` keeps its owner's configuration (the collection service makes its one client
    /// with this one).
    public static func configuration(timeout: Duration) -> HTTPClient.Configuration {
        var configuration = HTTPClient.Configuration()
        configuration.connectionPool.retryConnectionEstablishment = false
        configuration.timeout.connect = .init(min(timeout, .seconds(10)))
        // No redirects: the collection service's client also fetches the sources, and a redirect followed to
        // another host (or from https to http) carried their credential headers (OTX's X-OTX-API-KEY) along; the
        // storage never redirects. A 3xx is an error that names where it pointed.
        configuration.redirectConfiguration = .disallow
        return configuration
    }

    /// A client TLS configuration that trusts the CA certificates in the PEM file at `caPath` as well as the
    /// system's roots (`STORAGE_CA_PATH`). The server's name is still verified against its certificate.
    public static func tlsConfiguration(trusting caPath: String) throws(ConfigurationKeyError) -> TLSConfiguration {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.additionalTrustRoots = [.certificates(try TLSFiles.certificates(key: "STORAGE_CA_PATH", path: caPath))]
        return tls
    }

    /// Shuts down the `HTTPClient` if this client created it. Call once, when done with the client.
    public func shutdown() async throws {
        if ownsHTTPClient { try await httpClient.shutdown() }
    }

    // MARK: StorageClient

    public func getWatermark(sourceID: SourceID) async throws -> Watermark? {
        try await getUnlessAbsent(
            Watermark.self, "/api/v1/watermarks/\(sourceID)", sourceID: sourceID,
            absent: WatermarkError.watermarkNotFound(sourceID))
    }

    /// GET of something that may not exist: `nil` for the service's own 404 `absent`. Any other 404 (a proxy, a
    /// wrong path prefix in STORAGE_SERVICE_URL) is an error: for a watermark, a silent `nil` would restart
    /// collection from the lookback.
    private func getUnlessAbsent<T: Decodable>(
        _ type: T.Type, _ path: String, sourceID: SourceID, absent: WatermarkError
    ) async throws -> T? {
        let answer = try await send(.GET, path, sourceID: sourceID, accept: [200, 404])
        if answer.status == 404 {
            let error = Self.serviceError(status: 404, body: answer.body)
            guard error.code == absent.code else {
                throw StorageClientError.invalidRequest(code: error.code, message: error.message)
            }
            return nil
        }
        return try decode(T.self, from: answer)
    }

    @discardableResult
    public func updateWatermark(
        sourceID: SourceID, timestamp: Timestamp?, status: RunStatus, errorMessage: String?,
        recordsCollected: Int64?, options: UpdateOptions
    ) async throws -> Watermark {
        let update = WatermarkUpdate(
            timestamp: timestamp, status: status, errorMessage: errorMessage, recordsCollected: recordsCollected
        )
        let body = try Self.jsonBody(update, what: "the update")
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "application/json")
        // One key per logical update, the same on every retry: the service applies it once.
        headers.add(name: "Idempotency-Key", value: options.idempotencyKey ?? UUID().uuidString)
        Self.add(options.precondition, to: &headers)
        if let token = options.leaseToken { headers.add(name: "Lease-Token", value: String(token)) }
        Self.add(reason: options.reason, to: &headers)
        let path = "/api/v1/watermarks/\(sourceID)" + (options.force ? "?force=true" : "")
        let answer = try await send(.PUT, path, sourceID: sourceID, headers: headers, body: body, accept: [200, 201])
        if answer.headers.first(name: "Idempotent-Replayed") == "true" {
            logger.debug("storage update replayed", metadata: ["source_id": "\(sourceID)"])
        }
        return try decode(Watermark.self, from: answer)
    }

    /// A request body as JSON; a value that cannot be encoded is the caller's mistake, said as one.
    private static func jsonBody(_ value: some Encodable, what: String) throws -> ByteBuffer {
        do {
            return try JSONEncoder().encodeAsByteBuffer(value, allocator: ByteBufferAllocator())
        } catch {
            throw StorageClientError.invalidRequest(code: "invalid_body", message: "cannot encode \(what): \(error)")
        }
    }

    public func deleteWatermark(
        sourceID: SourceID, precondition: WritePrecondition?, leaseToken: Int64?, reason: String?
    ) async throws {
        var headers = HTTPHeaders()
        Self.add(precondition, to: &headers)
        if let leaseToken { headers.add(name: "Lease-Token", value: String(leaseToken)) }
        Self.add(reason: reason, to: &headers)
        // A retry after an attempt whose answer was lost finds the watermark gone when that attempt deleted it. A
        // conditional one is then answered 412 (the precondition is checked first): done if the watermark is gone,
        // the 412 stands if it is still there.
        let answer = try await send(
            .DELETE, "/api/v1/watermarks/\(sourceID)", sourceID: sourceID, headers: headers, accept: [204],
            doneWhenRetried: precondition == nil
                ? ["watermark_not_found"] : ["watermark_not_found", "precondition_failed"])
        if answer.status == 412, try await getWatermark(sourceID: sourceID) != nil {
            throw StorageClientError(Self.serviceError(status: answer.status, body: answer.body))
        }
    }

    /// `X-Reason`, percent-encoded so any text crosses as visible ASCII (letters, digits, space and `-._~` as they
    /// are).
    private static func add(reason: String?, to headers: inout HTTPHeaders) {
        guard let reason else { return }
        headers.add(
            name: "X-Reason", value: reason.addingPercentEncoding(withAllowedCharacters: reasonCharacters) ?? "")
    }

    private static let reasonCharacters = CharacterSet(
        charactersIn: "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 -._~")

    public func lease(sourceID: SourceID) async throws -> Lease? {
        try await getUnlessAbsent(
            Lease.self, "/api/v1/watermarks/\(sourceID)/lease", sourceID: sourceID,
            absent: WatermarkError.leaseNotFound(sourceID))
    }

    public func listWatermarks(_ query: WatermarkQuery) async throws -> WatermarkPage {
        var items = ["limit=\(query.limit)"]
        if let after = query.after { items.append("cursor=\(Self.percentEncoded(after.rawValue))") }
        if let status = query.status { items.append("status=\(status.rawValue)") }
        if let staleAfter = query.staleAfter { items.append("stale_after_seconds=\(staleAfter.components.seconds)") }
        let answer = try await send(.GET, "/api/v1/watermarks?" + items.joined(separator: "&"), accept: [200])
        return try decode(WatermarkPage.self, from: answer)
    }

    public func history(sourceID: SourceID, limit: Int?) async throws -> [WatermarkRun] {
        let path = "/api/v1/watermarks/\(sourceID)/history" + (limit.map { "?limit=\($0)" } ?? "")
        let answer = try await send(.GET, path, sourceID: sourceID, accept: [200])
        return try decode(HistoryBody.self, from: answer).runs
    }

    public func acquireLease(sourceID: SourceID, owner: String, ttl: Duration) async throws -> Lease {
        let request = LeaseRequestBody(owner: owner, ttlSeconds: ttl.components.seconds)
        let body = try Self.jsonBody(request, what: "the lease")
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "application/json")
        // Idempotent: the same owner asking again renews and keeps its fencing token.
        let answer = try await send(
            .POST, "/api/v1/watermarks/\(sourceID)/lease", sourceID: sourceID, headers: headers, body: body,
            accept: [200]
        )
        return try decode(Lease.self, from: answer)
    }

    public func releaseLease(sourceID: SourceID, token: Int64) async throws {
        var headers = HTTPHeaders()
        headers.add(name: "Lease-Token", value: String(token))
        _ = try await send(
            .DELETE, "/api/v1/watermarks/\(sourceID)/lease", sourceID: sourceID, headers: headers, accept: [204]
        )
    }

    /// One attempt, no retries: the caller (a start-up check, a status page) decides how to report it, so the
    /// reason is only logged at debug level.
    public func healthCheck() async -> Bool {
        do {
            var request = HTTPClientRequest(url: baseURL + "/health")
            request.method = .GET
            request.tlsConfiguration = tlsConfiguration
            let deadline = ContinuousClock.now + timeout
            let response = try await httpClient.execute(request, timeout: .init(timeout))
            guard try await response.collectBody(upTo: maxResponseBytes, by: deadline) != nil else {
                throw HTTPClientError.deadlineExceeded
            }
            let healthy = response.status == .ok
            if !healthy {
                logger.debug("storage health check failed", metadata: ["status": "\(response.status.code)"])
            }
            return healthy
        } catch {
            logger.debug("storage health check failed", metadata: ["error": "\(error)"])
            return false
        }
    }

    // MARK: Transport

    /// What `send` hands back: a status the caller accepts, with the whole (bounded) body.
    struct Answer {
        var status: Int
        var headers: HTTPHeaders
        var body: ByteBuffer
    }

    /// One call with its retries. Returns when the status is in `accept`; throws `StorageClientError`
    /// otherwise. `doneWhenRetried`: error codes that mean the call's effect is there when they answer a retry after
    /// an attempt that may have been applied with its answer lost (no answer in time, a connection broken after the
    /// request went out, a gateway's 502 or 504):
    /// a DELETE retried so finds nothing to delete, and reporting that as a failure made a done deletion look failed.
    private func send(
        _ method: HTTPMethod, _ path: String, sourceID: SourceID? = nil, headers: HTTPHeaders = HTTPHeaders(),
        body: ByteBuffer? = nil, accept: Set<Int>, doneWhenRetried: Set<String> = []
    ) async throws -> Answer {
        var request = HTTPClientRequest(url: baseURL + path)
        request.method = method
        request.tlsConfiguration = tlsConfiguration
        request.headers = headers
        request.headers.add(name: "Accept", value: "application/json")
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        if let body { request.body = .bytes(body) }

        var metadata: Logger.Metadata = ["method": "\(method.rawValue)", "path": "\(path)"]
        if let sourceID { metadata["source_id"] = "\(sourceID)" }
        var attempt = 1
        var mayHaveApplied = false
        while true {
            let started = ContinuousClock.now
            let failure: StorageClientError
            var retryable: Bool
            var retryAfter: Duration?
            do {
                let response = try await httpClient.execute(request, timeout: .init(timeout))
                let bytes: ByteBuffer
                do {
                    guard let body = try await response.collectBody(upTo: maxResponseBytes, by: started + timeout)
                    else {
                        throw HTTPClientError.deadlineExceeded  // the head came in time, not all of the body
                    }
                    bytes = body
                } catch let error as NIOTooManyBytesError {
                    throw ResponseTooLarge(limit: maxResponseBytes, underlying: error)
                }
                let status = Int(response.status.code)
                logger.debug(
                    "storage request", metadata: metadata.merging(Self.timing(status: status, since: started)) { $1 }
                )
                if accept.contains(status) { return Answer(status: status, headers: response.headers, body: bytes) }
                let error = Self.serviceError(status: status, body: bytes)
                if mayHaveApplied, doneWhenRetried.contains(error.code) {
                    logger.info(
                        "storage request already applied by an attempt whose answer was lost",
                        metadata: metadata.merging(["attempts": "\(attempt)", "answer": "\(error.code)"]) { $1 })
                    return Answer(status: status, headers: response.headers, body: bytes)
                }
                failure =
                    status == 404 && error.code != "watermark_not_found"
                    ? .invalidRequest(code: error.code, message: error.message) : StorageClientError(error)
                retryable = [429, 502, 503, 504].contains(status)
                // The service never answers 502 or 504 itself: a gateway's may come after the service applied the
                // call. The service's own 503 says it did not.
                mayHaveApplied = mayHaveApplied || [502, 504].contains(status)
                retryAfter = response.headers.first(name: "Retry-After").flatMap(RetryPolicy.retryAfter)
            } catch let error as StorageClientError {
                throw error
            } catch {
                if Task.isCancelled || error is CancellationError { throw error }
                failure = .unavailable(underlying: error)
                retryable = Self.isRetryableTransportError(error, retryTimeouts: retryPolicy.retryTimeouts)
                mayHaveApplied = mayHaveApplied || Self.mayHaveBeenApplied(error)
                retryAfter = nil
                logger.debug(
                    "storage request failed",
                    metadata: metadata.merging([
                        "error": "\(error)", "duration_ms": "\(Self.milliseconds(since: started))",
                    ]) {
                        $1
                    }
                )
            }
            guard retryable,
                let delay = retryPolicy.delay(beforeRetry: attempt, retryAfter: retryAfter, random: random())
            else {
                if attempt > 1 || retryable {
                    logger.warning(
                        "storage request gave up",
                        metadata: metadata.merging(["attempts": "\(attempt)", "error": "\(failure)"]) { $1 }
                    )
                }
                throw failure
            }
            logger.notice(
                "storage request failed - retrying",
                metadata: metadata.merging([
                    "attempt": "\(attempt)", "delay_ms": "\(delay.milliseconds)", "error": "\(failure)",
                ]) { $1 }
            )
            try await sleep(delay)
            attempt += 1
        }
    }

    private func decode<T: Decodable>(_ type: T.Type, from answer: Answer) throws -> T {
        do {
            return try JSONDecoder().decode(T.self, from: answer.body)
        } catch {
            throw StorageClientError.unavailable(underlying: UnreadableAnswer(status: answer.status, underlying: error))
        }
    }

    private static func add(_ precondition: WritePrecondition?, to headers: inout HTTPHeaders) {
        switch precondition {
        case .version(let version): headers.add(name: "If-Match", value: "\"\(version)\"")
        case .exists: headers.add(name: "If-Match", value: "*")
        case .absent: headers.add(name: "If-None-Match", value: "*")
        case nil: break
        }
    }

    /// The service's `{"error": {...}}`, or a stand-in built from the status when the body is not one
    /// (an answer from a proxy, say).
    static func serviceError(status: Int, body: ByteBuffer) -> WatermarkError {
        if let decoded = try? JSONDecoder().decode(ErrorEnvelope.self, from: body) {
            return WatermarkError(
                status: status, code: decoded.error.code, message: decoded.error.message, holder: decoded.error.holder,
                expiresAt: decoded.error.expiresAt
            )
        }
        let text = String(buffer: body).prefix(200)
        let status = HTTPResponseStatus(statusCode: status)
        return WatermarkError(
            status: Int(status.code), code: "http_\(status.code)",
            message: text.isEmpty ? status.reasonPhrase : "\(status.reasonPhrase): \(text)"
        )
    }

    /// Connection failures are worth retrying; a programming error, a cancelled call or (unless asked) a
    /// timeout is not.
    /// Whether an attempt that failed with `error` may have reached the service and been applied, its answer lost:
    /// no answer in time, or the connection closed or reset once the request was on its way. A refused or timed-out
    /// connect or a failed TLS handshake never sent it (counting those too made a DELETE of a watermark that never
    /// existed, retried after the storage refused a connection while restarting, report a deletion).
    static func mayHaveBeenApplied(_ error: any Error) -> Bool {
        if let error = error as? HTTPClientError {
            return [.deadlineExceeded, .readTimeout, .writeTimeout, .remoteConnectionClosed].contains(error)
        }
        if let error = error as? IOError { return [ECONNRESET, EPIPE].contains(error.errnoCode) }
        return false
    }

    static func isRetryableTransportError(_ error: any Error, retryTimeouts: Bool) -> Bool {
        if error is ResponseTooLarge { return false }
        if let error = error as? HTTPClientError {
            let timeouts: [HTTPClientError] = [.deadlineExceeded, .readTimeout, .writeTimeout]
            if timeouts.contains(error) { return retryTimeouts }
            let permanent: [HTTPClientError] = [
                .cancelled, .alreadyShutdown, .invalidURL, .emptyHost, .emptyScheme, .missingSocketPath,
                .redirectLimitReached, .redirectCycleDetected,
            ]
            return !permanent.contains(error)
        }
        return true
    }

    private static func timing(status: Int, since start: ContinuousClock.Instant) -> Logger.Metadata {
        ["status": "\(status)", "duration_ms": "\(milliseconds(since: start))"]
    }

    private static func milliseconds(since start: ContinuousClock.Instant) -> Int64 {
        (ContinuousClock.now - start).milliseconds
    }

    private static func percentEncoded(_ text: String) -> String {
        text.addingPercentEncoding(withAllowedCharacters: .urlQueryAllowed.subtracting(["&", "=", "+"])) ?? text
    }
}

/// An answer that is not what the API promises (not JSON, wrong shape): the service or something in front
/// of it misbehaves, so the call counts as `unavailable`.
public struct UnreadableAnswer: Error, Sendable, CustomStringConvertible {
    public let status: Int
    public let underlying: any Error

    public var description: String { "unreadable answer (HTTP \(status)): \(underlying)" }
}

/// An answer longer than the client's limit.
public struct ResponseTooLarge: Error, Sendable, CustomStringConvertible {
    public let limit: Int
    public let underlying: any Error

    public var description: String { "the answer is over \(limit) bytes" }
}
