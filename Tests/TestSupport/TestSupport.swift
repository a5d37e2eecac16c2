import Logging
import Synchronization
import WatermarkCore

/// What the test targets share: a clock moved by hand, literals for timestamps and source ids, and log
/// lines captured in memory (tests never bootstrap the logging system).

/// A clock the test moves by hand (lease expiry, staleness), shared by the code under test and the test.
package final class ManualClock: Sendable {
    private let current: Mutex<Timestamp>

    package init(_ start: Timestamp = Timestamp.now()) {
        current = Mutex(start)
    }

    package func now() -> Timestamp { current.withLock { $0 } }

    package func advance(_ duration: Duration) {
        current.withLock { $0 = $0.adding(duration) }
    }
}

extension Timestamp {
    /// A timestamp literal for tests.
    package static func at(_ text: String) -> Timestamp {
        do {
            return try Timestamp(rfc3339: text)
        } catch {
            fatalError("bad test timestamp \(text): \(error)")
        }
    }
}

/// A source id literal for tests.
package func sid(_ text: String) -> SourceID {
    do {
        return try SourceID(text)
    } catch {
        fatalError("bad test source id \(text)")
    }
}

extension Logger {
    /// A logger that drops everything, for tests that assert on answers, not on log output.
    package static let quiet = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
}

/// Log lines captured in memory, so a test can assert a message without bootstrapping logging.
package final class LogRecorder: Sendable {
    package struct Entry: Sendable {
        package var level: Logger.Level
        package var message: String
        package var metadata: [String: String]
    }

    private let entries = Mutex<[Entry]>([])

    package init() {}

    package var all: [Entry] { entries.withLock { $0 } }

    package func messages(at level: Logger.Level? = nil) -> [String] {
        all.filter { level == nil || $0.level == level }.map(\.message)
    }

    package func append(_ entry: Entry) { entries.withLock { $0.append(entry) } }

    /// A logger whose lines land here.
    package func logger(_ label: String = "test", level: Logger.Level = .trace) -> Logger {
        var logger = Logger(label: label) { _ in RecordingLogHandler(recorder: self) }
        logger.logLevel = level
        return logger
    }
}

package struct RecordingLogHandler: LogHandler {
    let recorder: LogRecorder
    package var metadata: Logger.Metadata = [:]
    package var logLevel: Logger.Level = .trace

    package subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    package func log(event: LogEvent) {
        var all = metadata
        if let extra = event.metadata { all.merge(extra) { $1 } }
        recorder.append(.init(level: event.level, message: "\(event.message)", metadata: all.mapValues { "\($0)" }))
    }
}
