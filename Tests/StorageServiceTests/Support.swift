import GRDB
import Logging
import Synchronization
import Testing
import WatermarkCore

@testable import StorageService

/// A clock the test moves by hand, for lease expiry and staleness.
final class ManualClock: Sendable {
    private let current: Mutex<Timestamp>

    init(_ start: Timestamp = Timestamp(seconds: 1_800_000_000)) {
        current = Mutex(start)
    }

    func now() -> Timestamp { current.withLock { $0 } }

    func advance(_ duration: Duration) {
        current.withLock { $0 = $0.adding(duration) }
    }
}

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

extension Timestamp {
    /// A timestamp literal for tests.
    static func at(_ text: String) -> Timestamp {
        do {
            return try Timestamp(rfc3339: text)
        } catch {
            fatalError("bad test timestamp \(text): \(error)")
        }
    }
}

func sid(_ text: String) -> SourceID {
    do {
        return try SourceID(text)
    } catch {
        fatalError("bad test source id \(text)")
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

extension Logger {
    /// A logger that drops everything: router tests assert on answers, not on log output.
    static let quiet = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
}
