import Foundation
import GRDB
import Logging
import PostgresNIO
import ServiceSupport
import Synchronization
import TestSupport
import Testing
import WatermarkCore
import WatermarkStores
import PostgresSupport

@testable import StorageService

/// The stores every rule test runs against: the in-memory one, SQLite (in memory, same SQL) and PostgreSQL (a
/// real server, a database per store; the suite needs the `.postgres` trait).
enum StoreKind: String, CaseIterable, CustomTestStringConvertible {
    case memory, sqlite, postgres

    var testDescription: String { rawValue }

    func make(clock: ManualClock, policy: WatermarkPolicy = WatermarkPolicy()) async throws -> any WatermarkStore {
        switch self {
        case .memory:
            return MemoryWatermarkStore(policy: policy, clock: { clock.now() })
        case .sqlite:
            return try SQLiteWatermarkStore(
                writer: try DatabaseQueue(), policy: policy, logger: .quiet, clock: { clock.now() }
            )
        case .postgres:
            guard let postgres = PostgresStores.current else {
                throw PostgresTestServer.Failure(description: "a PostgreSQL store needs the suite's .postgres trait")
            }
            return try await postgres.make(clock: clock, policy: policy)
        }
    }
}

/// The PostgreSQL server of a suite, and the stream of clients its scope runs (a `PostgresClient` serves
/// queries only while its `run()` runs).
struct PostgresStores: Sendable {
    @TaskLocal static var current: PostgresStores?

    let server: PostgresTestServer
    let clients: AsyncStream<PostgresClient>.Continuation
    /// Connected to the `postgres` database, to create the stores' databases (with SQL, not a blocking psql).
    let admin: PostgresClient

    /// A store on a new, migrated database of the suite's server.
    func make(clock: ManualClock, policy: WatermarkPolicy) async throws -> PostgresWatermarkStore {
        let name = "store_" + UUID().uuidString.prefix(8).lowercased()
        try await admin.query("CREATE DATABASE \(unescaped: name)")
        let url = try PostgresURL(server.url(database: name))
        let client = PostgresClient(configuration: url.clientConfiguration, backgroundLogger: .quiet)
        clients.yield(client)
        try await PostgresSchema.migrate(client, logger: .quiet)
        let store = PostgresWatermarkStore(
            client: client, url: url, policy: policy, logger: .quiet, clock: { clock.now() })
        store.ready.open()
        return store
    }
}

/// Starts a PostgreSQL server for the suite, runs the clients of its stores, and stops everything when the suite
/// ends, also when it fails.
struct PostgresSuite: SuiteTrait, TestScoping {
    var isRecursive: Bool { false }

    func provideScope(
        for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void
    ) async throws {
        let server = try await PostgresTestServer.started()
        let (stream, continuation) = AsyncStream.makeStream(of: PostgresClient.self)
        let admin = PostgresClient(
            configuration: try PostgresURL(server.url()).clientConfiguration, backgroundLogger: .quiet)
        continuation.yield(admin)
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    await withDiscardingTaskGroup { running in
                        for await client in stream { running.addTask { await client.run() } }
                    }
                }
                let stores = PostgresStores(server: server, clients: continuation, admin: admin)
                try await PostgresStores.$current.withValue(stores) { try await function() }
                continuation.finish()
                group.cancelAll()
            }
        } catch {
            await server.stopped()
            throw error
        }
        await server.stopped()
    }
}

extension Trait where Self == PostgresSuite {
    /// A real PostgreSQL for the suite's `StoreKind.postgres` stores.
    static var postgres: Self { PostgresSuite() }
}

/// Runs `body` and returns the code of the `WatermarkError` it threw, or nil when it did not throw.
func refusal(_ body: () async throws -> Void) async -> String? {
    do {
        try await body()
        return nil
    } catch let error as WatermarkError {
        return error.code
    } catch {
        return "unexpected: \(error)"
    }
}

extension StorageConfiguration {
    /// The settings of `environment` alone, without command-line flags.
    init(_ environment: [String: String]) throws(ConfigurationKeyError) {
        try self.init(Settings(environment: environment))
    }
}
