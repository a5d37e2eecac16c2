import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import ServiceSupport
import StorageClient
import TestSupport
import Testing
import WatermarkCore
import WatermarkStores

@testable import StorageService

// Over 300 lines for a reason: one conformance suite, run unchanged against every client and store; its cases must
// stay together.

/// What every conformance test runs against: the in-memory mock, and the HTTP client talking to a live Storage
/// Service started in the test, on SQLite (a temporary file) and on PostgreSQL (a database of the suite's real
/// server). The same assertions pass on all three, so neither the mock nor a backend can drift from the others.
enum Backend: String, CaseIterable, CustomTestStringConvertible {
    case memory, liveSQLite, livePostgres

    var testDescription: String { rawValue }

    /// Runs `body` with a fresh client whose storage reads time from `clock`, and tears everything down
    /// afterwards (also when `body` throws).
    func run(
        clock: ManualClock = ManualClock(), policy: WatermarkPolicy = WatermarkPolicy(),
        _ body: @escaping @Sendable (any StorageClient) async throws -> Void
    ) async throws {
        switch self {
        case .memory:
            try await body(InMemoryStorageClient(policy: policy, clock: { clock.now() }))
        case .liveSQLite:
            try await withTemporaryDirectory { folder in
                let store = try SQLiteWatermarkStore(
                    path: (folder as NSString).appendingPathComponent("watermarks.db"), policy: policy,
                    logger: Logger(label: "storage-service-test"), clock: { clock.now() }
                )
                try await Self.serve(store, policy: policy, body)
                try store.close()
            }
        case .livePostgres:
            try await Self.serve(try await StoreKind.postgres.make(clock: clock, policy: policy), policy: policy, body)
        }
    }

    /// Serves `store` with the real application on a free port and runs `body` with an HTTP client of it.
    private static func serve(
        _ store: any WatermarkStore, policy: WatermarkPolicy,
        _ body: @escaping @Sendable (any StorageClient) async throws -> Void
    ) async throws {
        var configuration = StorageConfiguration()
        configuration.host = "127.0.0.1"
        configuration.port = 0
        configuration.apiTokens = APITokens([.init(name: "conformance", token: "conformance-token")])
        configuration.policy = policy
        let app = try await buildApplication(
            configuration: configuration, store: store, logger: Logger(label: "storage-service-test"))
        try await app.test(.live) { server in
            let port = try #require(server.port)
            let client = HTTPStorageClient(
                baseURL: "http://127.0.0.1:\(port)", token: "conformance-token", timeout: .seconds(10),
                retryPolicy: .none, logger: Logger(label: "storage-client-test")
            )
            do {
                try await body(client)
            } catch {
                try await client.shutdown()
                throw error
            }
            try await client.shutdown()
        }
    }
}

@Suite("StorageClient conformance (mock, live service on SQLite and on PostgreSQL)", .postgres)
struct ConformanceTests {
    let alpha = sid("alpha")
    let t1 = Timestamp.at("2024-01-01T12:00:00.123456789Z")
    let t2 = Timestamp.at("2024-01-01T13:00:00Z")

    @Test(arguments: Backend.allCases)
    func firstCollectionHasNoWatermark(backend: Backend) async throws {
        try await backend.run { client in
            let value1 = try await client.getWatermark(sourceID: sid("never_seen"))
            #expect(value1 == nil)
            #expect(await client.healthCheck())
        }
    }

    /// Ids with every character the contract allows, at its edges: written, read, listed page by page (the
    /// cursor is an id too), leased, its history read and deleted, each the same id it was sent as.
    @Test(arguments: Backend.allCases)
    func everyValidIDRoundTrips(backend: Backend) async throws {
        let t1 = t1
        let ids = [
            "a:b", ":", "::", "x.y-z_0", "...", "-", "_", "A.b:C-d_9", "urn:otx:pulse:1",
            String(repeating: "z", count: 128),
        ].map { sid($0) }
        try await backend.run { client in
            for id in ids {
                let written = try await client.updateWatermark(
                    sourceID: id, timestamp: t1, status: .success, recordsCollected: 1)
                #expect(written.sourceID == id)
                #expect(try await client.getWatermark(sourceID: id)?.sourceID == id)
                #expect(try await client.history(sourceID: id, limit: nil).count == 1, "\(id)")
                let lease = try await client.acquireLease(sourceID: id, owner: "round-trip", ttl: .seconds(60))
                #expect(lease.sourceID == id)
                try await client.releaseLease(sourceID: id, token: lease.fencingToken)
            }
            var listed: [SourceID] = []
            var cursor: SourceID?
            repeat {
                let page = try await client.listWatermarks(WatermarkQuery(limit: 3, after: cursor))
                listed += page.watermarks.map(\.sourceID)
                cursor = try page.nextCursor.map { try SourceID($0) }
            } while cursor != nil
            #expect(listed == ids.sorted())
            for id in ids {
                try await client.deleteWatermark(sourceID: id, precondition: nil, leaseToken: nil)
                #expect(try await client.getWatermark(sourceID: id) == nil, "\(id)")
            }
        }
    }

    @Test(arguments: Backend.allCases)
    func successCreatesThenMovesTheWatermarkWithNanosecondPrecision(backend: Backend) async throws {
        let (alpha, t1, t2) = (alpha, t1, t2)
        try await backend.run { client in
            let created = try await client.updateWatermark(
                sourceID: alpha, timestamp: t1, status: .success, recordsCollected: 150
            )
            #expect(created.version == 1)
            #expect(created.lastSuccessfulTimestamp == t1)
            #expect(created.lastSuccessfulTimestamp?.description == "2024-01-01T12:00:00.123456789Z")
            #expect(created.recordsCollected == 150)
            #expect(created.status == .success)
            #expect(created.errorMessage == nil)

            let moved = try await client.updateWatermark(sourceID: alpha, timestamp: t2, status: .success)
            #expect(moved.version == 2)
            #expect(moved.lastSuccessfulTimestamp == t2)
            #expect(moved.recordsCollected == 0)
            #expect(moved.createdAt == created.createdAt)
            #expect(try await client.getWatermark(sourceID: alpha) == moved)
        }
    }

    @Test(arguments: Backend.allCases)
    func failedRunKeepsTheLastSuccessAndCountsFailures(backend: Backend) async throws {
        let (alpha, t1) = (alpha, t1)
        try await backend.run { client in
            try await client.updateWatermark(sourceID: alpha, timestamp: t1, status: .success)
            let failed = try await client.updateWatermark(
                sourceID: alpha, timestamp: nil, status: .failed, errorMessage: "HTTP 502 from the feed"
            )
            #expect(failed.status == .failed)
            #expect(failed.lastSuccessfulTimestamp == t1)
            #expect(failed.errorMessage == "HTTP 502 from the feed")
            #expect(failed.consecutiveFailures == 1)
            let again = try await client.updateWatermark(sourceID: alpha, timestamp: nil, status: .failed)
            #expect(again.consecutiveFailures == 2)
            #expect(again.version == 3)

            // A first run that fails creates the source without a success.
            let fresh = try await client.updateWatermark(
                sourceID: sid("beta"), timestamp: nil, status: .failed, errorMessage: "down"
            )
            #expect(fresh.lastSuccessfulTimestamp == nil)
            #expect(fresh.version == 1)
        }
    }

    @Test(arguments: Backend.allCases)
    func regressionIsRefusedUnlessForced(backend: Backend) async throws {
        let (alpha, t1, t2) = (alpha, t1, t2)
        try await backend.run { client in
            let stored = try await client.updateWatermark(sourceID: alpha, timestamp: t2, status: .success)
            let error = await thrown(StorageClientError.self) {
                try await client.updateWatermark(sourceID: alpha, timestamp: t1, status: .success)
            }
            guard case .conflict(let code, let message)? = error else {
                Issue.record("expected a conflict, got \(String(describing: error))")
                return
            }
            #expect(code == "watermark_regression")
            #expect(message.contains("force=true"))
            // A refused request changes nothing, not even last_run_timestamp.
            #expect(try await client.getWatermark(sourceID: alpha) == stored)

            let equal = try await client.updateWatermark(sourceID: alpha, timestamp: t2, status: .success)
            #expect(equal.version == 2)

            let forced = try await client.updateWatermark(
                sourceID: alpha, timestamp: t1, status: .success, errorMessage: nil, recordsCollected: nil,
                options: UpdateOptions(force: true)
            )
            #expect(forced.lastSuccessfulTimestamp == t1)
            #expect(forced.version == 3)
        }
    }

    @Test(arguments: Backend.allCases)
    func invalidUpdatesAreRefusedWithTheServiceCodes(backend: Backend) async throws {
        let alpha = alpha
        let clock = ManualClock()
        try await backend.run(clock: clock) { client in
            let future = clock.now().adding(.seconds(3600))
            let tooNew = await thrown(StorageClientError.self) {
                try await client.updateWatermark(sourceID: alpha, timestamp: future, status: .success)
            }
            #expect(tooNew?.code == "timestamp_in_future")
            let missing = await thrown(StorageClientError.self) {
                try await client.updateWatermark(sourceID: alpha, timestamp: nil, status: .success)
            }
            #expect(missing?.code == "missing_timestamp")
            let badKey = await thrown(StorageClientError.self) {
                try await client.updateWatermark(
                    sourceID: alpha, timestamp: clock.now(), status: .success, idempotencyKey: "has space"
                )
            }
            #expect(badKey?.code == "invalid_header")
            if case .invalidRequest? = tooNew {
            } else {
                Issue.record("expected invalidRequest, got \(String(describing: tooNew))")
            }
            let value2 = try await client.getWatermark(sourceID: alpha)
            #expect(value2 == nil)
        }
    }

    @Test(arguments: Backend.allCases)
    func preconditionsGuardConcurrentWriters(backend: Backend) async throws {
        let (alpha, t1, t2) = (alpha, t1, t2)
        try await backend.run { client in
            let created = try await client.updateWatermark(
                sourceID: alpha, timestamp: t1, status: .success, errorMessage: nil, recordsCollected: nil,
                options: UpdateOptions(precondition: .absent)
            )
            let createAgain = await thrown(StorageClientError.self) {
                try await client.updateWatermark(
                    sourceID: alpha, timestamp: t2, status: .success, errorMessage: nil, recordsCollected: nil,
                    options: UpdateOptions(precondition: .absent)
                )
            }
            if case .preconditionFailed? = createAgain {
            } else {
                Issue.record("got \(String(describing: createAgain))")
            }

            let stale = await thrown(StorageClientError.self) {
                try await client.updateWatermark(sourceID: alpha, timestamp: t2, status: .success, ifVersion: 7)
            }
            if case .preconditionFailed? = stale {} else { Issue.record("got \(String(describing: stale))") }

            let updated = try await client.updateWatermark(
                sourceID: alpha, timestamp: t2, status: .success, ifVersion: created.version
            )
            #expect(updated.version == 2)
            let missing = await thrown(StorageClientError.self) {
                try await client.updateWatermark(
                    sourceID: sid("gamma"), timestamp: t2, status: .success, errorMessage: nil, recordsCollected: nil,
                    options: UpdateOptions(precondition: .exists)
                )
            }
            #expect(missing?.code == "precondition_failed")
        }
    }

    @Test(arguments: Backend.allCases)
    func anIdempotencyKeyAppliesOnce(backend: Backend) async throws {
        let (alpha, t1, t2) = (alpha, t1, t2)
        try await backend.run { client in
            let first = try await client.updateWatermark(
                sourceID: alpha, timestamp: t1, status: .success, recordsCollected: 5, idempotencyKey: "run-1"
            )
            let replay = try await client.updateWatermark(
                sourceID: alpha, timestamp: t1, status: .success, recordsCollected: 5, idempotencyKey: "run-1"
            )
            #expect(replay == first)
            #expect(try await client.history(sourceID: alpha, limit: nil).count == 1)

            let reused = await thrown(StorageClientError.self) {
                try await client.updateWatermark(
                    sourceID: alpha, timestamp: t2, status: .success, recordsCollected: 5, idempotencyKey: "run-1"
                )
            }
            #expect(reused?.code == "idempotency_key_reused")
            if case .conflict? = reused {} else { Issue.record("got \(String(describing: reused))") }
        }
    }

    @Test(arguments: Backend.allCases)
    func deleteResetsTheSourceAndVersionsKeepGrowing(backend: Backend) async throws {
        let (alpha, t1) = (alpha, t1)
        try await backend.run { client in
            let created = try await client.updateWatermark(sourceID: alpha, timestamp: t1, status: .success)
            let wrongVersion = await thrown(StorageClientError.self) {
                try await client.deleteWatermark(sourceID: alpha, precondition: .version(9), leaseToken: nil)
            }
            if case .preconditionFailed? = wrongVersion {
            } else {
                Issue.record("got \(String(describing: wrongVersion))")
            }

            try await client.deleteWatermark(sourceID: alpha, precondition: .version(created.version), leaseToken: nil)
            let value3 = try await client.getWatermark(sourceID: alpha)
            #expect(value3 == nil)

            let again = await thrown(StorageClientError.self) {
                try await client.deleteWatermark(sourceID: alpha, precondition: nil, leaseToken: nil)
            }
            if case .notFound? = again {} else { Issue.record("got \(String(describing: again))") }

            // The reset took the next version (a `reset` run in the history); the recreation the one after.
            let history = try await client.history(sourceID: alpha, limit: nil)
            #expect(history.first?.status == .reset && history.first?.version == created.version + 1)
            let recreated = try await client.updateWatermark(sourceID: alpha, timestamp: t1, status: .success)
            #expect(recreated.version == created.version + 2)
        }
    }

    @Test(arguments: Backend.allCases)
    func listPagesAndFilters(backend: Backend) async throws {
        let clock = ManualClock()
        try await backend.run(clock: clock) { client in
            let recent = clock.now()
            let old = recent.adding(.seconds(-7200))
            for name in ["d", "a", "c"] {
                try await client.updateWatermark(sourceID: sid(name), timestamp: recent, status: .success)
            }
            try await client.updateWatermark(sourceID: sid("b"), timestamp: old, status: .success)
            try await client.updateWatermark(sourceID: sid("e"), timestamp: nil, status: .failed, errorMessage: "x")

            let first = try await client.listWatermarks(WatermarkQuery(limit: 2))
            #expect(first.watermarks.map(\.sourceID.rawValue) == ["a", "b"])
            #expect(first.nextCursor == "b")
            let second = try await client.listWatermarks(WatermarkQuery(limit: 2, after: sid("b")))
            #expect(second.watermarks.map(\.sourceID.rawValue) == ["c", "d"])
            let last = try await client.listWatermarks(WatermarkQuery(limit: 2, after: sid("d")))
            #expect(last.watermarks.map(\.sourceID.rawValue) == ["e"])
            #expect(last.nextCursor == nil)

            let failed = try await client.listWatermarks(WatermarkQuery(status: .failed))
            #expect(failed.watermarks.map(\.sourceID.rawValue) == ["e"])
            let stale = try await client.listWatermarks(WatermarkQuery(staleAfter: .seconds(3600)))
            #expect(stale.watermarks.map(\.sourceID.rawValue) == ["b", "e"])

            let badLimit = await thrown(StorageClientError.self) {
                _ = try await client.listWatermarks(WatermarkQuery(limit: 0))
            }
            #expect(badLimit?.code == "invalid_parameter")
        }
    }

    @Test(arguments: Backend.allCases)
    func historyIsNewestFirst(backend: Backend) async throws {
        let (alpha, t1, t2) = (alpha, t1, t2)
        try await backend.run { client in
            let missing = await thrown(StorageClientError.self) {
                _ = try await client.history(sourceID: alpha, limit: nil)
            }
            if case .notFound? = missing {} else { Issue.record("got \(String(describing: missing))") }

            try await client.updateWatermark(sourceID: alpha, timestamp: t1, status: .success, recordsCollected: 1)
            try await client.updateWatermark(sourceID: alpha, timestamp: nil, status: .failed, errorMessage: "boom")
            try await client.updateWatermark(sourceID: alpha, timestamp: t2, status: .success, recordsCollected: 3)
            let runs = try await client.history(sourceID: alpha, limit: nil)
            #expect(runs.map(\.version) == [3, 2, 1])
            #expect(runs[1].errorMessage == "boom")
            #expect(runs[1].lastSuccessfulTimestamp == t1)
            #expect(runs[0].recordsCollected == 3)
            #expect(try await client.history(sourceID: alpha, limit: 1).map(\.version) == [3])
            let badLimit = await thrown(StorageClientError.self) {
                _ = try await client.history(sourceID: alpha, limit: 0)
            }
            #expect(badLimit?.code == "invalid_parameter")
        }
    }

    @Test(arguments: Backend.allCases)
    func leasesFenceWriters(backend: Backend) async throws {
        let (alpha, t1, t2) = (alpha, t1, t2)
        let clock = ManualClock()
        try await backend.run(clock: clock) { client in
            // A source can be leased before its first watermark.
            let lease = try await client.acquireLease(sourceID: alpha, owner: "replica-a", ttl: .seconds(60))
            #expect(lease.fencingToken == 1)
            #expect(lease.owner == "replica-a")
            #expect(lease.expiresAt == clock.now().adding(.seconds(60)))

            let held = await thrown(StorageClientError.self) {
                _ = try await client.acquireLease(sourceID: alpha, owner: "replica-b", ttl: .seconds(60))
            }
            #expect(held?.code == "lease_held")

            let noToken = await thrown(StorageClientError.self) {
                try await client.updateWatermark(sourceID: alpha, timestamp: t1, status: .success)
            }
            #expect(noToken?.code == "lease_required")
            let wrongToken = await thrown(StorageClientError.self) {
                try await client.updateWatermark(sourceID: alpha, timestamp: t1, status: .success, leaseToken: 99)
            }
            #expect(wrongToken?.code == "stale_lease")
            let written = try await client.updateWatermark(
                sourceID: alpha, timestamp: t1, status: .success, leaseToken: lease.fencingToken
            )
            #expect(written.version == 1)

            clock.advance(.seconds(30))
            let renewed = try await client.acquireLease(sourceID: alpha, owner: "replica-a", ttl: .seconds(60))
            #expect(renewed.fencingToken == lease.fencingToken)
            #expect(renewed.expiresAt > lease.expiresAt)

            // After expiry another owner takes over with a new token; the old holder is fenced off.
            clock.advance(.seconds(61))
            let takeover = try await client.acquireLease(sourceID: alpha, owner: "replica-b", ttl: .seconds(60))
            #expect(takeover.fencingToken == 2)
            let fenced = await thrown(StorageClientError.self) {
                try await client.updateWatermark(
                    sourceID: alpha, timestamp: t2, status: .success, leaseToken: lease.fencingToken
                )
            }
            #expect(fenced?.code == "stale_lease")
            let fencedDelete = await thrown(StorageClientError.self) {
                try await client.deleteWatermark(sourceID: alpha, precondition: nil, leaseToken: lease.fencingToken)
            }
            #expect(fencedDelete?.code == "stale_lease")

            let staleRelease = await thrown(StorageClientError.self) {
                try await client.releaseLease(sourceID: alpha, token: lease.fencingToken)
            }
            #expect(staleRelease?.code == "stale_lease")
            try await client.releaseLease(sourceID: alpha, token: takeover.fencingToken)
            // Released: writes without a token work again, and a new grant gets a new token.
            try await client.updateWatermark(sourceID: alpha, timestamp: t2, status: .success)
            let next = try await client.acquireLease(sourceID: alpha, owner: "replica-a", ttl: .seconds(60))
            #expect(next.fencingToken == 3)

            let badTTL = await thrown(StorageClientError.self) {
                _ = try await client.acquireLease(sourceID: sid("other"), owner: "x", ttl: .milliseconds(500))
            }
            #expect(badTTL?.code == "invalid_body")
            let badOwner = await thrown(StorageClientError.self) {
                _ = try await client.acquireLease(sourceID: sid("other"), owner: "", ttl: .seconds(5))
            }
            #expect(badOwner?.code == "invalid_body")
        }
    }
}
