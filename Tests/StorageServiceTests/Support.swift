import GRDB
import Logging
import Synchronization
import TestSupport
import Testing
import WatermarkCore
import WatermarkStores

@testable import StorageService

/// The stores every rule test runs against: the in-memory one and SQLite (in memory, same SQL).
enum StoreKind: String, CaseIterable, CustomTestStringConvertible {
    case memory, sqlite

    var testDescription: String { rawValue }

    func make(clock: ManualClock, policy: WatermarkPolicy = WatermarkPolicy()) throws -> any WatermarkStore {
        switch self {
        case .memory:
            return MemoryWatermarkStore(policy: policy, clock: { clock.now() })
        case .sqlite:
            return try SQLiteWatermarkStore(
                writer: try DatabaseQueue(), policy: policy, logger: .quiet, clock: { clock.now() }
            )
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
