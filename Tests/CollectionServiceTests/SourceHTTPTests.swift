import AsyncHTTPClient
import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import NIOHTTP1
import StorageClient
import TestSupport
import Testing
import WatermarkCore

@testable import CollectionService

/// What a source's HTTP answer may do to a run: go quiet mid-body, redirect elsewhere.
@Suite("Source HTTP", .timeLimit(.minutes(1)))
struct SourceHTTPTests {
    /// Serves `router` on 127.0.0.1 for the duration of `body`.
    func serving<Value: Sendable>(
        _ router: Router<BasicRequestContext>, _ body: @escaping @Sendable (Int) async throws -> Value
    ) async throws -> Value {
        let app = Application(
            router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)), logger: Logger.quiet)
        return try await app.test(.live) { client in try await body(client.port!) }
    }

    /// A source that sends its head and the start of its body, then nothing: the request times out (the suite's
    /// time limit bounds the wait), where the deadline ended with the head and the run waited for ever.
    @Test func anAnswerThatStopsMidBodyTimesOut() async throws {
        let (release, releaseSignal) = AsyncStream<Void>.makeStream()
        let router = Router()
        router.get("/stall") { _, _ -> Response in
            Response(
                status: .ok, headers: [.contentType: "application/json"],
                body: ResponseBody { writer in
                    try await writer.write(ByteBuffer(string: #"{"objects":["#))
                    for await _ in release { break }  // quiet until the test is done
                    try await writer.finish(nil)
                })
        }
        try await serving(router) { port in
            defer { releaseSignal.finish() }
            try await withHTTPClient { client in
                let http = SourceHTTPClient(httpClient: client, timeout: .seconds(1), retry: testRetry, logger: .quiet)
                let error = await thrown(CollectorError.self) {
                    _ = try await http.get("http://127.0.0.1:\(port)/stall", headers: [:])
                }
                guard case .timeout? = error else {
                    Issue.record("expected a timeout, got \(String(describing: error))")
                    return
                }
            }
        }
    }

    /// The services' HTTP client follows no redirect: a source answering 302 to another host fails with the 302,
    /// and its credential header (OTX's API key) never reaches that host.
    @Test func aRedirectIsAnErrorAndCarriesNoCredentialElsewhere() async throws {
        let elsewhere = Router()
        let seen = Counter()
        elsewhere.get("/steal") { _, _ -> Response in
            seen.add()
            return Response(status: .ok, body: ResponseBody(byteBuffer: ByteBuffer(string: #"{"results":[]}"#)))
        }
        try await serving(elsewhere) { otherPort in
            let source = Router()
            source.get("/api/v1/pulses/subscribed") { _, _ -> Response in
                Response(status: .found, headers: [.location: "http://127.0.0.1:\(otherPort)/steal"])
            }
            try await serving(source) { port in
                let client = HTTPClient(
                    eventLoopGroupProvider: .singleton,
                    configuration: HTTPStorageClient.configuration(timeout: .seconds(5)))
                defer { _ = client }
                let collector = OTXCollector(
                    settings: OTXSettings(baseURL: "http://127.0.0.1:\(port)", apiKey: Secret("otx-secret")),
                    pageSize: 2,
                    http: SourceHTTPClient(httpClient: client, timeout: .seconds(5), retry: testRetry, logger: .quiet))
                let error = await thrown(CollectorError.self) {
                    _ = try await collector.fetchPage(since: ts("2026-11-25T00:00:00Z"), cursor: nil)
                }
                try await client.shutdown()
                guard case .httpStatus(let status, _, _)? = error else {
                    Issue.record("expected the 302, got \(String(describing: error))")
                    return
                }
                #expect(status == 302)
                #expect(seen.value == 0, "the redirect was followed")
            }
        }
    }
}
