import Foundation
import Logging

/// What both services do the same way before they serve: refuse a configuration that cannot work, and set up
/// swift-log to write one line per event.
public enum ServiceStart {
    public enum Stream: Sendable {
        case standardOutput, standardError
    }

    /// `<service>: configuration error: <error>` on standard error: logging is not set up yet, and the message
    /// must reach whoever started the process (the caller then exits with status 2).
    public static func reportConfigurationError(_ service: String, _ error: any Error) {
        FileHandle.standardError.write(Data("\(service): configuration error: \(error)\n".utf8))
    }

    /// Bootstraps swift-log once for the process: every logger writes to `stream` at `level` and above.
    public static func bootstrapLogging(level: Logger.Level, to stream: Stream) {
        LoggingSystem.bootstrap { label in
            var handler =
                switch stream {
                case .standardOutput: StreamLogHandler.standardOutput(label: label)
                case .standardError: StreamLogHandler.standardError(label: label)
                }
            handler.logLevel = level
            return handler
        }
    }
}
