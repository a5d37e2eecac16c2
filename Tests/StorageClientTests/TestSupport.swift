import Foundation
import Logging
import StorageClient
import Synchronization
import Testing
import WatermarkCore

/// A clock the test moves by hand (lease expiry, staleness), shared by the store and the test.
final class ManualClock: Sendable {
    private let current: Mutex<Timestamp>

    init(_ start: Timestamp = Timestamp.now()) {
        current = Mutex(start)
    }

    func now() -> Timestamp { current.withLock { $0 } }

    func advance(_ duration: Duration) {
        current.withLock { $0 = $0.adding(duration) }
    }
}

/// Log lines captured in memory, so a test can assert a message without bootstrapping logging.
final class LogRecorder: Sendable {
    struct Entry: Sendable {
        var level: Logger.Level
        var message: String
        var metadata: [String: String]
    }

    private let entries = Mutex<[Entry]>([])

    var all: [Entry] { entries.withLock { $0 } }

    func messages(at level: Logger.Level? = nil) -> [String] {
        all.filter { level == nil || $0.level == level }.map(\.message)
    }

    func append(_ entry: Entry) { entries.withLock { $0.append(entry) } }

    /// A logger whose lines land here.
    func logger(_ label: String = "test", level: Logger.Level = .trace) -> Logger {
        var logger = Logger(label: label) { _ in RecordingLogHandler(recorder: self) }
        logger.logLevel = level
        return logger
    }
}

struct RecordingLogHandler: LogHandler {
    let recorder: LogRecorder
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var all = metadata
        if let extra = event.metadata { all.merge(extra) { $1 } }
        recorder.append(
            .init(level: event.level, message: "\(event.message)", metadata: all.mapValues { "\($0)" })
        )
    }
}

/// A fresh folder under the system's temporary directory, removed after `body` (also when it throws).
func withTemporaryDirectory<T>(_ body: (String) async throws -> T) async throws -> T {
    let path = (NSTemporaryDirectory() as NSString).appendingPathComponent("storage-client-tests-\(UUID().uuidString)")
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try await body(path)
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

/// The `StorageClientError` that `body` threw, or `nil` when it did not throw one.
func storageError(_ body: () async throws -> Void) async -> StorageClientError? {
    do {
        try await body()
        return nil
    } catch let error as StorageClientError {
        return error
    } catch {
        Issue.record("expected a StorageClientError, got \(error)")
        return nil
    }
}
