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
            let lines =
                switch stream {
                case .standardOutput: StreamLogHandler.standardOutput(label: label)
                case .standardError: StreamLogHandler.standardError(label: label)
                }
            var handler = DeferredMetadataLogHandler(stream: lines)
            handler.logLevel = level
            return handler
        }
    }
}

/// swift-log's `StreamLogHandler`, with the logger's metadata kept here and handed to it only when a line is written.
///
/// `StreamLogHandler` renders all of its metadata to text (sorted, joined) each time one key is set. Hummingbird sets
/// the request id on the logger of every request, so every request paid for rendering a line that, below the log
/// level, is never written: 3.4 % of the request threads' CPU under PUTs at 64 connections (`perf`). The lines are
/// the same: the metadata goes with each event, which `StreamLogHandler` merges and renders as it did its own.
///
/// The handler is three words (the shared `StreamLogHandler`, the metadata, the level), so a logger holds it inline:
/// setting a key on a request's copy of the logger then copies no boxed handler.
struct DeferredMetadataLogHandler: LogHandler {
    /// Shared by every copy; replaced, never changed, when a copy sets its metadata provider.
    private final class Lines: Sendable {
        let stream: StreamLogHandler
        init(_ stream: StreamLogHandler) { self.stream = stream }
    }

    private var lines: Lines
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level

    init(stream: StreamLogHandler) {
        lines = Lines(stream)
        logLevel = stream.logLevel
    }

    var metadataProvider: Logger.MetadataProvider? {
        get { lines.stream.metadataProvider }
        set {
            var stream = lines.stream
            stream.metadataProvider = newValue
            lines = Lines(stream)
        }
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var event = event
        if !metadata.isEmpty {
            // The event's own metadata wins over the logger's, as in `StreamLogHandler`.
            event.metadata = metadata.merging(event.metadata ?? [:]) { _, explicit in explicit }
        }
        lines.stream.log(event: event)
    }
}
