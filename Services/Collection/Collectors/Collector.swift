import Foundation
import WatermarkCore

/// One data source type, seen from the run: "give me everything newer than `since`, one page at a time".
///
/// A collector is stateless between calls and commits nothing: the run writes the records to the sink,
/// fsyncs them and only then moves the watermark, so a collector that fails or is abandoned halfway leaves
/// nothing behind that could cause a gap.
protocol Collector: Sendable {
    /// Fetches one page. `since` is the watermark already moved back by the source's overlap; `cursor` is the
    /// `next` of the previous page (`nil` for the first one). A page with `next == nil` is the last.
    func fetchPage(since: Timestamp, cursor: String?) async throws(CollectorError) -> CollectorPage

    /// Called once the page's records, and those of every page before it, are on disk (fsynced): a collector that
    /// keeps its own progress (the drop folder's file ledger) records it now, never before, and moves aside the files
    /// the page found unreadable (`rejections`), returning them. The default does nothing.
    func pageCommitted(_ page: CollectorPage) throws(CollectorError) -> [RejectedFile]
}

extension Collector {
    func pageCommitted(_ page: CollectorPage) throws(CollectorError) -> [RejectedFile] { [] }
}

/// What one request to a source returned.
struct CollectorPage: Sendable {
    var records: [CollectedRecord]
    /// The source's own high-water mark for this page (TAXII `X-TAXII-Date-Added-Last`), when it gives one.
    var highWaterMark: Timestamp?
    /// The source's mark of the page's first record (TAXII `X-TAXII-Date-Added-First`), given only by a source
    /// whose pages come in ascending order of that mark. When it is later than the previous page's
    /// `highWaterMark`, no record of that instant is left to come, so the previous mark is a safe checkpoint.
    var firstMark: Timestamp?
    /// Opaque continuation for the next request; `nil` when this was the last page.
    var next: String?
    /// Files found unreadable (drop folder), to move aside in `pageCommitted`: moved at once, a file whose first
    /// pages were still waiting to be written left the folder, and a crash then lost those records with it.
    var rejections: [FileRejection] = []
    /// Oddities of the answer worth a warning that did not stop the page (a malformed header, say).
    var warnings: [String] = []
    /// What the collector records in `pageCommitted` (the identities of the drop-folder files the page finished).
    var progress: [FileIdentity] = []
    /// The page answers a request asked again after a failure (TAXII: by date, from where the source can go back
    /// to), not the next one the source said: the run counts such pages, to fail rather than loop when a failure
    /// repeats at the same place.
    var retried = false

    init(
        records: [CollectedRecord], highWaterMark: Timestamp? = nil, firstMark: Timestamp? = nil,
        next: String? = nil
    ) {
        self.records = records
        self.highWaterMark = highWaterMark
        self.firstMark = firstMark
        self.next = next
    }
}

/// A file found not to be valid records, as it was when it was read.
struct FileRejection: Sendable, Equatable {
    var identity: FileIdentity
    var reason: String
    /// The file ends before its last record does and has not changed for `settleTime`: left in place, not moved, for
    /// a writer may still hold it open and append to it.
    var cutShort = false
}

/// A file that could not be read as records, moved to the drop folder's `.rejected/`, or left in place when the
/// folder cannot be written (a read-only mount) and skipped while unchanged.
struct RejectedFile: Sendable, Equatable {
    var name: String
    /// Where it is now; `nil` when it could not be moved (`leftInPlace` says why).
    var movedTo: String?
    var reason: String
    var leftInPlace: String?
}

/// One record as the sink stores it.
struct CollectedRecord: Sendable, Equatable {
    /// The source's identifier of the object (STIX id, OTX pulse id, ...).
    var id: String
    /// Which version of the object this is (its `modified`, normalised); with `id` it makes the dedup key.
    var version: String
    /// The source's clock for this record: the instant the watermark may move to once it is written.
    var mark: Timestamp
    /// The original record as compact one-line JSON.
    var json: Data

    var key: RecordKey { RecordKey(id: id, version: version) }
}

extension CollectedRecord {
    /// A record versioned and marked by its timestamp `text`: RFC 3339, or a naive date-time read as UTC
    /// (OTX's `2024-01-01T12:00:00.123000`). `field` names where the text came from in the error.
    init(id: String, stamp text: String, json: Data, field: @autoclosure () -> String) throws(CollectorError) {
        let mark: Timestamp
        do {
            mark = try Timestamp(rfc3339: text.trimmingWhitespace(), assumeUTC: true)
        } catch {
            throw .malformed("\(field()): \(error)")
        }
        self.init(id: id, version: mark.description, mark: mark, json: json)
    }
}

/// "The same record": a source returning the boundary object again produces the same key.
///
/// Keys are the same when their bytes are: Swift's `String` equality is Unicode canonical equivalence (`é` as one
/// scalar equals `e` and a combining accent), where the dedup index and PostgreSQL's `"C"` keys tell them apart, as
/// the sources do. Compared as strings, the second of two such records in a page was dropped as a duplicate, and lost.
struct RecordKey: Hashable, Sendable {
    var id: String
    var version: String

    static func == (lhs: RecordKey, rhs: RecordKey) -> Bool {
        sameBytes(lhs.id, rhs.id) && sameBytes(lhs.version, rhs.version)
    }

    func hash(into hasher: inout Hasher) {
        Self.hashBytes(id, into: &hasher)
        Self.hashBytes(version, into: &hasher)
    }

    private static func sameBytes(_ lhs: String, _ rhs: String) -> Bool {
        lhs.utf8.count == rhs.utf8.count && lhs.utf8.elementsEqual(rhs.utf8)
    }

    /// The text's length, then its bytes: ("ab", "c") and ("a", "bc") hash apart.
    private static func hashBytes(_ text: String, into hasher: inout Hasher) {
        var text = text
        text.withUTF8 { bytes in
            hasher.combine(bytes.count)
            hasher.combine(bytes: UnsafeRawBufferPointer(bytes))
        }
    }
}

/// Why a page could not be fetched. The description is what ends up in the watermark's `error_message`, so it
/// says what happened and where, never a secret.
enum CollectorError: Error, Sendable, CustomStringConvertible, Equatable {
    /// The source answered with an HTTP error status (after retries for 429/5xx).
    case httpStatus(Int, url: String, detail: String)
    /// Connection refused, reset, DNS, TLS...
    case transport(url: String, detail: String)
    /// No answer within the source's timeout.
    case timeout(url: String, seconds: Int64)
    /// The answer (or a file) is not what the source type promises.
    case malformed(String)
    /// Rate limited longer than we are willing to wait inside one run.
    case rateLimited(url: String, retryAfterSeconds: Int64)
    /// A local file could not be read.
    case file(path: String, detail: String)

    var description: String {
        switch self {
        case .httpStatus(let status, let url, let detail):
            "HTTP \(status) from \(url)" + (detail.isEmpty ? "" : ": \(detail)")
        case .transport(let url, let detail): "request to \(url) failed: \(detail)"
        case .timeout(let url, let seconds): "request to \(url) timed out after \(seconds) s"
        case .malformed(let detail): "malformed payload: \(detail)"
        case .rateLimited(let url, let seconds):
            "rate limited by \(url): Retry-After \(seconds) s is longer than this run waits"
        case .file(let path, let detail): "cannot read \(path): \(detail)"
        }
    }
}
