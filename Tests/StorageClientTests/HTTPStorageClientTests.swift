import AsyncHTTPClient
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import Synchronization
import TestSupport
import Testing
import WatermarkCore

@testable import StorageClient

// Over 300 lines for a reason: one suite against scripted servers, which its cases share.

/// What the test server saw, and how many times it should still fail.
final class ServerScript: Sendable {
    struct Seen: Sendable {
        var method: String
        var path: String
        var idempotencyKey: String?
        var authorization: String?
        var ifMatch: String?
        var leaseToken: String?
        var body: String
    }

    private let state = Mutex<(seen: [Seen], failuresLeft: Int)>(([], 0))

    init(failures: Int = 0) {
        state.withLock { $0.failuresLeft = failures }
    }

    var seen: [Seen] { state.withLock { $0.seen } }

    /// Records a request and answers whether it should fail.
    func record(_ seen: Seen) -> Bool {
        state.withLock {
            $0.seen.append(seen)
            guard $0.failuresLeft > 0 else { return false }
            $0.failuresLeft -= 1
            return true
        }
    }
}

/// A flag shared between a test and its server.
final class Toggle: Sendable {
    private let value = Mutex(true)
    var isOn: Bool {
        get { value.withLock { $0 } }
        set { value.withLock { $0 = newValue } }
    }
}

/// Shuts the client down after `body`, also when it throws (AsyncHTTPClient insists on a shutdown).
func using<T>(_ client: HTTPStorageClient, _ body: (HTTPStorageClient) async throws -> T) async throws -> T {
    do {
        let result = try await body(client)
        try await client.shutdown()
        return result
    } catch {
        try? await client.shutdown()
        throw error
    }
}

/// Delays the client asked to sleep, without sleeping.
final class SleepRecorder: Sendable {
    private let delays = Mutex<[Duration]>([])
    var all: [Duration] { delays.withLock { $0 } }
    var sleeper: HTTPStorageClient.Sleeper { { delay in self.delays.withLock { $0.append(delay) } } }
}

let sampleWatermarkJSON = """
    {"source_id":"alpha","last_successful_timestamp":"2024-01-01T12:00:00.5Z",\
    "last_run_timestamp":"2024-01-01T12:05:00Z","status":"success","records_collected":7,\
    "error_message":null,"version":3,"consecutive_failures":0,"created_at":"2024-01-01T00:00:00Z"}
    """

func jsonResponse(_ status: HTTPResponse.Status, _ body: String, headers: HTTPFields = [:]) -> Response {
    var headers = headers
    headers[.contentType] = "application/json"
    return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: body)))
}

/// Starts a tiny server whose `/api/v1/watermarks/alpha` answers `failure` while `script` says so and the
/// sample watermark afterwards; runs `body` with its base URL.
func withScriptedServer(
    script: ServerScript, failure: @escaping @Sendable () -> Response,
    extraRoutes: @Sendable (Router<BasicRequestContext>) -> Void = { _ in },
    _ body: @escaping @Sendable (String) async throws -> Void
) async throws {
    let router = Router()
    let handler: @Sendable (Request, BasicRequestContext) async throws -> Response = { request, context in
        var request = request
        let bytes = try await request.collectBody(upTo: 1 << 20)
        let seen = ServerScript.Seen(
            method: request.method.rawValue, path: request.uri.path,
            idempotencyKey: request.headers[HTTPField.Name("Idempotency-Key")!],
            authorization: request.headers[.authorization], ifMatch: request.headers[.ifMatch],
            leaseToken: request.headers[HTTPField.Name("Lease-Token")!], body: String(buffer: bytes)
        )
        if script.record(seen) { return failure() }
        if request.method == .delete { return Response(status: .noContent) }
        return jsonResponse(.ok, sampleWatermarkJSON)
    }
    router.get("/api/v1/watermarks/alpha", use: handler)
    router.put("/api/v1/watermarks/alpha", use: handler)
    router.delete("/api/v1/watermarks/alpha", use: handler)
    extraRoutes(router)
    let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)))
    try await app.test(.live) { client in
        try await body("http://127.0.0.1:\(try #require(client.port))")
    }
}

/// Calls counted per source id, shared by a scripted route and its test.
final class CallCounter: Sendable {
    private let calls = Mutex<[String: Int]>([:])

    /// Counts one more call of `id` and says which call this is (1 for the first).
    func next(_ id: String) -> Int {
        calls.withLock { calls in
            calls[id, default: 0] += 1
            return calls[id]!
        }
    }

    func count(_ id: String) -> Int { calls.withLock { $0[id, default: 0] } }
    var all: [String: Int] { calls.withLock { $0 } }
}

/// A scripted server whose `DELETE /api/v1/watermarks/{id}` answers `answer(id, n)` for the n-th call of `id`.
func withScriptedDeletes(
    _ counter: CallCounter, answer: @escaping @Sendable (String, Int) async throws -> Response,
    extraRoutes: @escaping @Sendable (Router<BasicRequestContext>) -> Void = { _ in },
    _ body: @escaping @Sendable (String) async throws -> Void
) async throws {
    try await withScriptedServer(
        script: ServerScript(failures: 0), failure: { jsonResponse(.internalServerError, "") },
        extraRoutes: { router in
            router.delete("/api/v1/watermarks/:id") { _, context in
                let id = context.parameters.get("id") ?? ""
                return try await answer(id, counter.next(id))
            }
            extraRoutes(router)
        }, body)
}

@Suite("HTTPStorageClient against scripted servers")
struct HTTPStorageClientTests {
    let alpha = sid("alpha")

    func makeClient(
        _ url: String, sleeps: SleepRecorder, policy: RetryPolicy = RetryPolicy(maxAttempts: 4),
        timeout: Duration = .seconds(5), token: String? = nil, maxResponseBytes: Int = 1 << 20,
        logger: Logger = Logger(label: "test")
    ) -> HTTPStorageClient {
        HTTPStorageClient(
            baseURL: url, token: token, timeout: timeout, retryPolicy: policy, maxResponseBytes: maxResponseBytes,
            logger: logger, sleep: sleeps.sleeper, random: { 1.0 }
        )
    }

    @Test func retriesTransientAnswersUntilTheServiceRecovers() async throws {
        let script = ServerScript(failures: 2)
        let sleeps = SleepRecorder()
        let logs = LogRecorder()
        try await withScriptedServer(
            script: script,
            failure: { jsonResponse(.serviceUnavailable, #"{"error":{"code":"database_unavailable","message":"x"}}"#) }
        ) { url in
            try await using(makeClient(url, sleeps: sleeps, token: "secret", logger: logs.logger())) { client in
                let watermark = try #require(try await client.getWatermark(sourceID: alpha))
                #expect(watermark.version == 3)
                #expect(watermark.lastSuccessfulTimestamp == Timestamp.at("2024-01-01T12:00:00.5Z"))
            }
        }
        #expect(script.seen.count == 3)
        #expect(script.seen.allSatisfy { $0.authorization == "Bearer secret" })
        // Full jitter with random = 1: the cap, 0.2 s then 0.4 s.
        #expect(sleeps.all == [.milliseconds(200), .milliseconds(400)])
        #expect(logs.messages(at: .notice).filter { $0 == "storage request failed - retrying" }.count == 2)
        #expect(!logs.all.contains { $0.metadata.values.contains { $0.contains("secret") } })
    }

    @Test func aRetriedUpdateCarriesOneIdempotencyKey() async throws {
        let script = ServerScript(failures: 2)
        let sleeps = SleepRecorder()
        try await withScriptedServer(
            script: script, failure: { jsonResponse(.badGateway, "<html>bad gateway</html>") }
        ) { url in
            try await using(makeClient(url, sleeps: sleeps)) { client in
                _ = try await client.updateWatermark(
                    sourceID: alpha, timestamp: Timestamp.at("2024-01-01T12:00:00.5Z"), status: .success,
                    recordsCollected: 7, ifVersion: 2, leaseToken: 4
                )
            }
        }
        let seen = script.seen
        #expect(seen.count == 3)
        let keys = Set(seen.compactMap(\.idempotencyKey))
        #expect(keys.count == 1)
        #expect(seen.allSatisfy { $0.ifMatch == "\"2\"" && $0.leaseToken == "4" && $0.method == "PUT" })
        let body = try #require(seen.first?.body)
        #expect(body.contains(#""timestamp":"2024-01-01T12:00:00.5Z""#))
        #expect(body.contains(#""records_collected":7"#))
    }

    @Test func givesUpAfterMaxAttemptsWithATypedError() async throws {
        let script = ServerScript(failures: 100)
        let sleeps = SleepRecorder()
        try await withScriptedServer(
            script: script, failure: { jsonResponse(.gatewayTimeout, "") }
        ) { url in
            try await using(makeClient(url, sleeps: sleeps, policy: RetryPolicy(maxAttempts: 3))) { client in
                let error = await thrown(StorageClientError.self) { _ = try await client.getWatermark(sourceID: alpha) }
                #expect(error?.isTransient == true)
                #expect(error?.code == "http_504")
            }
        }
        #expect(script.seen.count == 3)
        #expect(sleeps.all.count == 2)
    }

    /// A DELETE whose answer was lost (a gateway's 504, or no answer within the timeout) may have been applied: its
    /// retry then finds nothing to delete, and that is the deletion done, not a failure. Where the first answer said
    /// the service did not apply it (its own 503), where the connection was refused (nothing was sent), or without a
    /// retry, "not found" stays an error.
    @Test func aDeleteRetriedAfterALostAnswerIsDoneWhenNothingIsLeft() async throws {
        let calls = CallCounter()
        let notFound: @Sendable () -> Response = {
            jsonResponse(.notFound, #"{"error":{"code":"watermark_not_found","message":"none"}}"#)
        }
        try await withScriptedDeletes(
            calls,
            answer: { id, call in
                guard call == 1 else { return notFound() }
                switch id {
                case "lost-504": return jsonResponse(.gatewayTimeout, "<html>gateway timeout</html>")
                case "refused-503":
                    return jsonResponse(
                        .serviceUnavailable, #"{"error":{"code":"database_unavailable","message":"x"}}"#)
                case "slow":
                    // Applied, and answered only once the client, done waiting, has sent its retry.
                    let deadline = ContinuousClock.now + .seconds(20)
                    while calls.count(id) < 2, ContinuousClock.now < deadline {
                        try await Task.sleep(for: .milliseconds(10))
                    }
                    return Response(status: .noContent)
                default: return notFound()
                }
            }
        ) { url in
            let sleeps = SleepRecorder()
            let policy = RetryPolicy(maxAttempts: 3, retryTimeouts: true)
            try await using(makeClient(url, sleeps: sleeps, policy: policy)) { client in
                try await client.deleteWatermark(
                    sourceID: sid("lost-504"), precondition: nil, leaseToken: nil, reason: nil)
                for id in ["refused-503", "absent"] {
                    let error = await thrown(StorageClientError.self) {
                        try await client.deleteWatermark(
                            sourceID: sid(id), precondition: nil, leaseToken: nil, reason: nil)
                    }
                    #expect(error?.code == "watermark_not_found", "\(id)")
                }
            }
            // A client that stops waiting after half a second; the slow answer is held until its retry came.
            try await using(makeClient(url, sleeps: sleeps, policy: policy, timeout: .milliseconds(500))) { client in
                try await client.deleteWatermark(sourceID: sid("slow"), precondition: nil, leaseToken: nil, reason: nil)
            }
        }
        let seen = calls.all
        #expect(seen["lost-504"] == 2 && seen["refused-503"] == 2 && seen["absent"] == 1 && seen["slow"]! >= 2)
    }

    /// A conditional DELETE whose answer was lost is answered 412 on its retry when the first attempt deleted the
    /// watermark (the precondition is checked first): done when the watermark is gone, the 412 stands when it is
    /// still there (it changed meanwhile), and without a lost answer a 412 is never looked into.
    @Test func aConditionalDeleteRetriedAfterALostAnswerIsDoneWhenTheWatermarkIsGone() async throws {
        let calls = CallCounter()
        let gets = Mutex<[String: Int]>([:])
        try await withScriptedDeletes(
            calls,
            answer: { id, call in
                if call == 1, id != "plain-412" {
                    return jsonResponse(.gatewayTimeout, "<html>gateway timeout</html>")
                }
                return jsonResponse(
                    .preconditionFailed, #"{"error":{"code":"precondition_failed","message":"version 3 != 2"}}"#)
            },
            extraRoutes: { router in
                router.get("/api/v1/watermarks/:id") { _, context in
                    let id = context.parameters.get("id") ?? ""
                    gets.withLock { $0[id, default: 0] += 1 }
                    guard id == "gone" else { return jsonResponse(.ok, sampleWatermarkJSON) }
                    return jsonResponse(.notFound, #"{"error":{"code":"watermark_not_found","message":"none"}}"#)
                }
            }
        ) { url in
            try await using(makeClient(url, sleeps: SleepRecorder())) { client in
                try await client.deleteWatermark(
                    sourceID: sid("gone"), precondition: .version(2), leaseToken: nil, reason: nil)
                for id in ["changed", "plain-412"] {
                    let error = await thrown(StorageClientError.self) {
                        try await client.deleteWatermark(
                            sourceID: sid(id), precondition: .version(2), leaseToken: nil, reason: nil)
                    }
                    #expect(error?.code == "precondition_failed", "\(id)")
                }
            }
        }
        #expect(calls.all == ["gone": 2, "changed": 2, "plain-412": 1])
        #expect(gets.withLock { $0 } == ["gone": 1, "changed": 1])
    }

    /// Which failed attempts may have been applied: no answer in time, yes; a refused connection (port 1 on loopback,
    /// where nothing listens), no: the request never went out, so a retry's "not found" is no deletion done.
    @Test func aRefusedConnectionWasNotApplied() async throws {
        let client = makeClient("http://127.0.0.1:1", sleeps: SleepRecorder(), policy: RetryPolicy(maxAttempts: 1))
        let error = try await using(client) { client in
            await thrown(StorageClientError.self) {
                try await client.deleteWatermark(sourceID: alpha, precondition: nil, leaseToken: nil, reason: nil)
            }
        }
        guard case .unavailable(let underlying)? = error else {
            Issue.record("expected unavailable, got \(String(describing: error))")
            return
        }
        #expect(!HTTPStorageClient.mayHaveBeenApplied(underlying), "\(underlying)")
        #expect(HTTPStorageClient.mayHaveBeenApplied(HTTPClientError.deadlineExceeded))
        #expect(HTTPStorageClient.mayHaveBeenApplied(HTTPClientError.remoteConnectionClosed))
        #expect(!HTTPStorageClient.mayHaveBeenApplied(HTTPClientError.connectTimeout))
    }

    @Test func honoursRetryAfter() async throws {
        let script = ServerScript(failures: 1)
        let sleeps = SleepRecorder()
        try await withScriptedServer(
            script: script,
            failure: {
                jsonResponse(
                    .tooManyRequests, #"{"error":{"code":"rate_limited","message":"slow down"}}"#,
                    headers: [.retryAfter: "3"]
                )
            }
        ) { url in
            try await using(makeClient(url, sleeps: sleeps)) { client in
                let value1 = try await client.getWatermark(sourceID: alpha)
                #expect(value1 != nil)
            }
        }
        #expect(script.seen.count == 2)
        // The server asked for 3 s, more than the 0.2 s backoff: the client waits as told.
        #expect(sleeps.all == [.seconds(3)])
    }

    /// Given up at once, and transient: a rate limit (429) too, which the manager must queue, not dead-letter.
    @Test(arguments: [(503, "maintenance"), (429, "rate_limited")])
    func aRetryAfterBeyondTheCapIsReturnedAtOnce(status: Int, code: String) async throws {
        let script = ServerScript(failures: 5)
        let sleeps = SleepRecorder()
        try await withScriptedServer(
            script: script,
            failure: {
                jsonResponse(
                    HTTPResponse.Status(code: status), #"{"error":{"code":"\#(code)","message":"back in an hour"}}"#,
                    headers: [.retryAfter: "3600"]
                )
            }
        ) { url in
            try await using(makeClient(url, sleeps: sleeps)) { client in
                let error = await thrown(StorageClientError.self) { _ = try await client.getWatermark(sourceID: alpha) }
                #expect(error?.isTransient == true)
                #expect(error?.code == code)
            }
        }
        #expect(script.seen.count == 1)
        #expect(sleeps.all.isEmpty)
    }

    @Test(arguments: [
        (409, #"{"error":{"code":"watermark_regression","message":"older"}}"#, "watermark_regression"),
        (400, #"{"error":{"code":"invalid_timestamp","message":"bad"}}"#, "invalid_timestamp"),
        (401, #"{"error":{"code":"unauthorized","message":"token"}}"#, "unauthorized"),
        (412, #"{"error":{"code":"precondition_failed","message":"v"}}"#, "precondition_failed"),
        (500, #"{"error":{"code":"internal_error","message":"oops"}}"#, "internal_error"),
    ])
    func permanentAnswersAreNotRetried(status: Int, body: String, code: String) async throws {
        let script = ServerScript(failures: 1)
        let sleeps = SleepRecorder()
        try await withScriptedServer(
            script: script, failure: { jsonResponse(.init(code: status), body) }
        ) { url in
            try await using(makeClient(url, sleeps: sleeps)) { client in
                let error = await thrown(StorageClientError.self) {
                    try await client.updateWatermark(sourceID: alpha, timestamp: Timestamp.now(), status: .success)
                }
                #expect(error?.code == code)
                #expect(error?.isTransient == (status >= 500))
                if status == 409, case .conflict(_, let message)? = error { #expect(message == "older") }
                if status == 401, case .unauthorized? = error {
                } else if status == 401 {
                    Issue.record("got \(String(describing: error))")
                }
            }
        }
        #expect(script.seen.count == 1)
        #expect(sleeps.all.isEmpty)
    }

    @Test func leaseHeldCarriesHolderAndExpiry() async throws {
        let script = ServerScript(failures: 1)
        try await withScriptedServer(
            script: script,
            failure: {
                jsonResponse(
                    .conflict,
                    #"{"error":{"code":"lease_held","message":"held","holder":"replica-b","expires_at":"2030-01-01T00:00:00Z"}}"#
                )
            }
        ) { url in
            try await using(makeClient(url, sleeps: SleepRecorder())) { client in
                do {
                    try await client.deleteWatermark(sourceID: alpha, precondition: nil, leaseToken: 1)
                    Issue.record("expected lease_held")
                } catch StorageClientError.conflict(let code, let message) {
                    #expect(code == "lease_held")
                    #expect(message == "held")
                }
            }
        }
        let decoded = HTTPStorageClient.serviceError(
            status: 409,
            body: ByteBuffer(
                string:
                    #"{"error":{"code":"lease_held","message":"held","holder":"b","expires_at":"2030-01-01T00:00:00Z"}}"#
            )
        )
        #expect(decoded.holder == "b")
        #expect(decoded.expiresAt == Timestamp.at("2030-01-01T00:00:00Z"))
    }

    @Test func aTimeoutIsUnavailableAndNotRetriedByDefault() async throws {
        let script = ServerScript()
        let sleeps = SleepRecorder()
        try await withScriptedServer(
            script: script, failure: { jsonResponse(.ok, "") },
            extraRoutes: { router in
                router.get("/api/v1/watermarks/slow") { _, _ in
                    try await Task.sleep(for: .seconds(12))
                    return jsonResponse(.ok, sampleWatermarkJSON)
                }
            }
        ) { url in
            // 2 s, not less: the connect timeout is the same bound, and a connection that took longer than a
            // 200 ms timeout to open on a loaded machine (CI, every suite at once) failed as a connection error,
            // which is rightly retried; here the request itself must time out.
            try await using(makeClient(url, sleeps: sleeps, timeout: .seconds(2))) { client in
                let started = ContinuousClock.now
                let error = await thrown(StorageClientError.self) {
                    _ = try await client.getWatermark(sourceID: sid("slow"))
                }
                let elapsed = ContinuousClock.now - started
                #expect(error?.isTransient == true)
                // Far from the 12 s answer (the timeout cut it), with room for a loaded machine.
                #expect(elapsed < .seconds(7))
            }
        }
        #expect(sleeps.all.isEmpty)
    }

    @Test func connectionFailuresAreRetriedThenUnavailable() async throws {
        let sleeps = SleepRecorder()
        // Port 1 on loopback: nothing listens there, the connection is refused at once.
        // A long timeout, so the bound below tells the two behaviours apart with a wide margin even on a loaded
        // machine: refused at once (milliseconds), or held until the timeout by connection retries inside
        // AsyncHTTPClient (at least 30 s).
        let client = makeClient(
            "http://127.0.0.1:1", sleeps: sleeps, policy: RetryPolicy(maxAttempts: 3), timeout: .seconds(30))
        let (error, elapsed): (StorageClientError?, Duration) = try await using(client) { client in
            let started = ContinuousClock.now
            let error = await thrown(StorageClientError.self) { _ = try await client.getWatermark(sourceID: alpha) }
            return (error, ContinuousClock.now - started)
        }
        // 20 s: refused at once took 10.7 s once in the full parallel run on 2 cores, whose first seconds are
        // saturated; still far from the 30 s that connection retries inside AsyncHTTPClient would take.
        #expect(elapsed < .seconds(20))
        guard case .unavailable? = error else {
            Issue.record("expected unavailable, got \(String(describing: error))")
            return
        }
        #expect(sleeps.all.count == 2)
        let healthy = try await using(makeClient("http://127.0.0.1:1", sleeps: sleeps)) { await $0.healthCheck() }
        #expect(healthy == false)
    }

    @Test func aNonService404IsAnErrorNotAFirstCollection() async throws {
        let script = ServerScript()
        try await withScriptedServer(script: script, failure: { jsonResponse(.ok, "") }) { url in
            // A wrong path prefix in STORAGE_SERVICE_URL: the router answers a plain 404.
            try await using(makeClient(url + "/wrong-prefix", sleeps: SleepRecorder())) { client in
                let error = await thrown(StorageClientError.self) { _ = try await client.getWatermark(sourceID: alpha) }
                guard case .invalidRequest(let code, _)? = error else {
                    Issue.record("expected invalidRequest, got \(String(describing: error))")
                    return
                }
                #expect(code == "http_404")
            }
        }
    }

    @Test func oversizedAndUnreadableAnswersAreUnavailable() async throws {
        let script = ServerScript()
        let sleeps = SleepRecorder()
        try await withScriptedServer(
            script: script, failure: { jsonResponse(.ok, "") },
            extraRoutes: { router in
                router.get("/api/v1/watermarks/huge") { _, _ in
                    jsonResponse(.ok, "[" + String(repeating: "1,", count: 10_000) + "1]")
                }
                router.get("/api/v1/watermarks/garbled") { _, _ in jsonResponse(.ok, "{not json") }
            }
        ) { url in
            try await using(makeClient(url, sleeps: sleeps, maxResponseBytes: 4096)) { client in
                let huge = await thrown(StorageClientError.self) {
                    _ = try await client.getWatermark(sourceID: sid("huge"))
                }
                guard case .unavailable(let underlying)? = huge else {
                    Issue.record("expected unavailable, got \(String(describing: huge))")
                    return
                }
                #expect(underlying is ResponseTooLarge)
                let garbled = await thrown(StorageClientError.self) {
                    _ = try await client.getWatermark(sourceID: sid("garbled"))
                }
                guard case .unavailable(let underlying)? = garbled else {
                    Issue.record("expected unavailable, got \(String(describing: garbled))")
                    return
                }
                #expect(underlying is UnreadableAnswer)
            }
        }
        #expect(sleeps.all.isEmpty)
    }

    @Test func healthCheckFollowsTheHealthEndpoint() async throws {
        let healthy = Toggle()
        try await withScriptedServer(
            script: ServerScript(), failure: { jsonResponse(.ok, "") },
            extraRoutes: { router in
                router.get("/health") { _, _ in
                    healthy.isOn
                        ? jsonResponse(.ok, #"{"status":"healthy"}"#)
                        : jsonResponse(.serviceUnavailable, #"{"status":"unhealthy"}"#)
                }
            }
        ) { url in
            try await using(makeClient(url + "/", sleeps: SleepRecorder())) { client in
                #expect(await client.healthCheck())
                healthy.isOn = false
                #expect(await client.healthCheck() == false)
            }
        }
    }
}

@Suite("RetryPolicy")
struct RetryPolicyTests {
    @Test func fullJitterGrowsExponentiallyUpToTheCap() {
        let policy = RetryPolicy(maxAttempts: 10, baseDelay: .milliseconds(200), maxDelay: .seconds(1))
        #expect(policy.backoffCap(beforeRetry: 1) == .milliseconds(200))
        #expect(policy.backoffCap(beforeRetry: 2) == .milliseconds(400))
        #expect(policy.backoffCap(beforeRetry: 3) == .milliseconds(800))
        #expect(policy.backoffCap(beforeRetry: 4) == .seconds(1))
        #expect(policy.backoffCap(beforeRetry: 60) == .seconds(1))
        #expect(policy.delay(beforeRetry: 2, retryAfter: nil, random: 0.5) == .milliseconds(200))
        #expect(policy.delay(beforeRetry: 2, retryAfter: nil, random: 0) == .zero)
    }

    @Test func stopsAfterMaxAttempts() {
        let policy = RetryPolicy(maxAttempts: 3)
        #expect(policy.delay(beforeRetry: 2, retryAfter: nil, random: 1) != nil)
        #expect(policy.delay(beforeRetry: 3, retryAfter: nil, random: 1) == nil)
        #expect(RetryPolicy.none.delay(beforeRetry: 1, retryAfter: nil, random: 1) == nil)
    }

    @Test func retryAfterIsALowerBoundUpToItsCap() {
        let policy = RetryPolicy(maxRetryAfter: .seconds(10))
        #expect(policy.delay(beforeRetry: 1, retryAfter: .seconds(2), random: 1) == .seconds(2))
        #expect(policy.delay(beforeRetry: 1, retryAfter: .zero, random: 1) == .milliseconds(200))
        #expect(policy.delay(beforeRetry: 1, retryAfter: .seconds(11), random: 1) == nil)
    }

    @Test func parsesRetryAfterSecondsAndDates() {
        #expect(RetryPolicy.retryAfter("7") == .seconds(7))
        #expect(RetryPolicy.retryAfter(" 0 ") == .zero)
        #expect(RetryPolicy.retryAfter("-3") == nil)
        #expect(RetryPolicy.retryAfter("soon") == nil)
        #expect(RetryPolicy.retryAfter("Wed, 21 Oct 2015 07:28:00 GMT") == .zero)
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss 'GMT'"
        let inAMinute = formatter.string(from: Date().addingTimeInterval(60))
        let parsed = RetryPolicy.retryAfter(inAMinute)
        #expect(parsed.map { $0 > .seconds(55) && $0 <= .seconds(60) } == true)
    }
}
