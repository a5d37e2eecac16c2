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
import WatermarkStores

@testable import StorageClient

/// How the fake storage behaves right now.
enum StorageBehaviour: Sendable {
    /// Answers with the real rules (a `MemoryWatermarkStore`).
    case healthy
    /// Holds every watermark call until the storage is healthy again (so past any client timeout), then
    /// answers it: what a storage behind a stalled disk or a hung proxy does.
    case stalled
    /// Answers 200 with a body that is not a watermark.
    case garbage
    /// Sends the head and the first byte of the answer, then nothing more until the storage is healthy again: a
    /// host that froze in the middle of an answer (`execute`'s deadline ends with the head).
    case stalledBody
}

/// A storage that applies the real rules when healthy and misbehaves on demand: the collector's update
/// path (HTTP client + WatermarkManager) must never lose an update, whatever the storage does.
final class FaultyStorage: Sendable {
    let store = MemoryWatermarkStore()
    let behaviour = Mutex<StorageBehaviour>(.healthy)

    func router() -> Router<BasicRequestContext> {
        let router = Router()
        router.get("/health") { _, _ in
            if case .stalledBody = self.behaviour.withLock({ $0 }), let early = try await self.misbehave() {
                return early
            }
            return jsonResponse(.ok, #"{"status":"healthy"}"#)
        }
        router.get("/api/v1/watermarks/:id") { _, context in
            if let early = try await self.misbehave() { return early }
            let id = try SourceID(context.parameters.get("id") ?? "")
            guard let watermark = try await self.store.watermark(for: id) else {
                return jsonResponse(.notFound, #"{"error":{"code":"watermark_not_found","message":"none"}}"#)
            }
            return jsonResponse(.ok, String(decoding: try JSONEncoder().encode(watermark), as: UTF8.self))
        }
        router.put("/api/v1/watermarks/:id") { request, context in
            var request = request
            let body = try await request.collectBody(upTo: 1 << 16)
            if let early = try await self.misbehave() { return early }
            let update = try JSONDecoder().decode(WatermarkUpdate.self, from: Data(body.readableBytesView))
            let outcome = try await self.store.write(
                WatermarkWrite(
                    sourceID: try SourceID(context.parameters.get("id") ?? ""), update: update,
                    idempotencyKey: request.headers[HTTPField.Name("Idempotency-Key")!]
                )
            )
            let json = String(decoding: try JSONEncoder().encode(outcome.watermark), as: UTF8.self)
            return jsonResponse(outcome.created ? .created : .ok, json)
        }
        return router
    }

    private func misbehave() async throws -> Response? {
        switch behaviour.withLock({ $0 }) {
        case .healthy:
            return nil
        case .stalled:
            // Released when the test makes the storage healthy again, or by the bound (never reached).
            let deadline = ContinuousClock.now + .seconds(120)
            while case .stalled = behaviour.withLock({ $0 }), ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(20))
            }
            return jsonResponse(.ok, "{}")
        case .garbage:
            return jsonResponse(.ok, "<html>502 from a proxy that says 200</html>")
        case .stalledBody:
            let body = ResponseBody(contentLength: 100) { writer in
                try await writer.write(ByteBuffer(string: "{"))
                // Released when the test makes the storage healthy again, or by the bound (never reached by the
                // client, which gives up after its timeout of 5 s).
                let deadline = ContinuousClock.now + .seconds(60)
                while case .stalledBody = self.behaviour.withLock({ $0 }), ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(20))
                }
                throw CancellationError()  // the rest never comes: the connection is closed
            }
            return Response(status: .ok, headers: [.contentType: "application/json"], body: body)
        }
    }
}

@Suite("Collector updates against a misbehaving storage")
struct FaultyStorageTests {
    let source = sid("otx")

    @Test(
        "stalled past the timeout before or in its answer, or answering garbage: updates queued, never lost, replayed once",
        arguments: [StorageBehaviour.stalled, .stalledBody, .garbage])
    func neverLost(behaviour: StorageBehaviour) async throws {
        let storage = FaultyStorage()
        let app = Application(router: storage.router(), configuration: .init(address: .hostname("127.0.0.1", port: 0)))
        try await app.test(.live) { client in
            let http = HTTPStorageClient(
                // A healthy answer comes well within it even on a loaded 2-core machine running every suite at
                // once (1.2 s was not enough there); a stalled one never does.
                baseURL: "http://127.0.0.1:\(client.port!)", timeout: .seconds(5),
                retryPolicy: RetryPolicy(maxAttempts: 2, baseDelay: .milliseconds(1), maxDelay: .milliseconds(2)),
                logger: Logger(label: "test")
            )
            try await using(http) { http in
                try await withTemporaryDirectory { folder in
                    let manager = try WatermarkManager(client: http, stateDirectory: folder, logger: Logger(label: "t"))
                    let first = Timestamp.at("2026-11-20T00:00:00Z")
                    let second = Timestamp.at("2026-11-21T00:00:00.123456789Z")
                    #expect(
                        try await !manager.updateWatermark(sourceID: source, timestamp: first, status: .success)
                            .isQueued)

                    storage.behaviour.withLock { $0 = behaviour }
                    let began = ContinuousClock.now
                    let queued = try await manager.updateWatermark(
                        sourceID: source, timestamp: second, status: .success, recordsCollected: 5
                    )
                    #expect(queued.isQueued)
                    // Two attempts of 5 s at most, not the storage's 60 s stall.
                    #expect(ContinuousClock.now - began < .seconds(30), "the update waited out the stall")
                    if behaviour == .stalledBody {  // the start-up check too ends at its timeout
                        let asked = ContinuousClock.now
                        #expect(await http.healthCheck() == false)
                        #expect(ContinuousClock.now - asked < .seconds(30), "the health check waited out the stall")
                    }
                    // The collector goes on from the queued mark, also after its own restart.
                    let restarted = try WatermarkManager(
                        client: http, stateDirectory: folder, logger: Logger(label: "t"))
                    #expect(try await restarted.getWatermark(sourceID: source)?.lastSuccessfulTimestamp == second)
                    #expect(await restarted.replayPending().remaining == 1)

                    storage.behaviour.withLock { $0 = .healthy }
                    #expect(await restarted.replayPending() == ReplaySummary(applied: 1, dropped: 0, remaining: 0))
                    // A stalled storage may have applied the first attempt after the client gave up: the
                    // idempotency key makes the replay a no-op then. Either way, one run per update.
                    let runs = try await storage.store.history(for: source, limit: 10)
                    #expect(runs.count == 2)
                    #expect(runs.first?.timestamp == second && runs.first?.recordsCollected == 5)
                    #expect(try await storage.store.watermark(for: source)?.lastSuccessfulTimestamp == second)
                }
            }
        }
    }
}
