import HTTPTypes
import Logging
import NIOConcurrencyHelpers
import Testing

@testable import ServiceSupport
@testable import StorageService

/// What a `StreamLogHandler` writes, kept in memory.
private final class Lines: TextOutputStream, Sendable {
    private let text = NIOLockedValueBox("")
    func write(_ string: String) { text.withLockedValue { $0 += string } }
    /// Each line without its timestamp (the first field), which differs between two handlers.
    var withoutTimestamps: [String] {
        text.withLockedValue { $0 }.split(separator: "\n").map {
            $0.split(separator: " ", maxSplits: 1).last.map(String.init) ?? ""
        }
    }
}

@Suite("Log lines and request headers")
struct LogAndHeaderTests {
    /// The deferred handler writes, for the same logger calls, the lines `StreamLogHandler` writes on its own: the
    /// logger's metadata, the event's (which wins on a shared key), sorted, and nothing below the level.
    @Test func deferredMetadataWritesStreamLogHandlersLines() {
        let plain = Lines()
        let deferred = Lines()
        var loggers = [
            Logger(label: "storage") { StreamLogHandler(label: $0, stream: plain, metadataProvider: nil) },
            Logger(label: "storage") {
                DeferredMetadataLogHandler(stream: StreamLogHandler(label: $0, stream: deferred, metadataProvider: nil))
            },
        ]
        for index in loggers.indices {
            loggers[index].logLevel = .info
            loggers[index][metadataKey: "hb.request.id"] = "42"
            loggers[index][metadataKey: "source_id"] = "feed-a"
            loggers[index].info("Watermark updated", metadata: ["version": "3", "source_id": "feed-b"])
            loggers[index].debug("not written")
            loggers[index][metadataKey: "hb.request.id"] = nil
            loggers[index].warning("Lease released")
        }
        #expect(deferred.withoutTimestamps == plain.withoutTimestamps)
        #expect(
            deferred.withoutTimestamps == [
                "info storage: hb.request.id=42 source_id=feed-b version=3 [StorageServiceTests] Watermark updated",
                "warning storage: source_id=feed-a [StorageServiceTests] Lease released",
            ])
        #expect(loggers[1][metadataKey: "source_id"] == "feed-a")
        #expect(loggers[1].logLevel == .info)
        // Small enough for a logger to hold inline (an existential's three words), so setting a key copies no box.
        #expect(MemoryLayout<DeferredMetadataLogHandler>.size <= 3 * MemoryLayout<Int>.size)
    }

    /// A metadata provider set on one copy of a logger adds its metadata to that copy's lines only.
    @Test func aMetadataProviderStaysWithItsCopy() {
        let lines = Lines()
        var handler = DeferredMetadataLogHandler(
            stream: StreamLogHandler(label: "storage", stream: lines, metadataProvider: nil))
        handler.logLevel = .info
        var traced = handler
        traced.metadataProvider = Logger.MetadataProvider { ["trace_id": "t1"] }
        Logger(label: "storage") { _ in traced }.info("one")
        Logger(label: "storage") { _ in handler }.info("two")
        #expect(
            lines.withoutTimestamps == [
                "info storage: trace_id=t1 [StorageServiceTests] one", "info storage: [StorageServiceTests] two",
            ])
        #expect(handler.metadataProvider == nil && traced.metadataProvider != nil)
    }

    /// A header sent once is its value; absent, nil; sent twice, the values joined as `HTTPFields` joins them.
    @Test func headerValuesAreReadAsHTTPFieldsJoinsThem() {
        var fields: HTTPFields = [.contentType: "application/json", .leaseToken: "7"]
        #expect(fields.value(.contentType) == "application/json")
        #expect(fields.value(.leaseToken) == "7")
        #expect(fields.value(.ifMatch) == nil)
        fields.append(HTTPField(name: .leaseToken, value: "8"))
        #expect(fields.value(.leaseToken) == "7, 8")
        #expect(fields.value(.leaseToken) == fields[.leaseToken])
    }
}
