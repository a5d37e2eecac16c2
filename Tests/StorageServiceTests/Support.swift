import Foundation
import GRDB
import Logging
import PostgresNIO
import PostgresSupport
import ServiceSupport
import Synchronization
import TestSupport
import Testing
import WatermarkCore
import WatermarkStores

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
            let (client, url) = try await PostgresDatabases.newDatabase()
            try await PostgresSchema.migrate(client, logger: .quiet)
            let store = PostgresWatermarkStore(
                client: client, url: url, policy: policy, logger: .quiet, clock: { clock.now() })
            store.ready.open()
            return store
        }
    }
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

/// What `body` answers, or "no answer within N s" when it has not answered by then (it is cancelled, and
/// `unblock` lets go of whatever it may wait for, which a cancellation does not end): a test of something that
/// should end fails, instead of hanging, when it does not.
func answer(
    within seconds: Int = 20, unblock: @escaping @Sendable () -> Void = {},
    _ body: @escaping @Sendable () async -> String
) async -> String {
    await withTaskGroup(of: String.self) { race in
        race.addTask { await body() }
        race.addTask {
            guard (try? await Task.sleep(for: .seconds(seconds))) != nil else { return "" }
            unblock()
            return "no answer within \(seconds) s"
        }
        defer { race.cancelAll() }
        return await race.next() ?? ""
    }
}
