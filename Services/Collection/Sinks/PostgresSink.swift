import Foundation
import Logging
import PostgresNIO
import PostgresSupport
import WatermarkCore

/// `SINK_URL=postgres://...`: the records of every source in one PostgreSQL table, shared by every collection
/// replica. "Already written" is a fact of the table itself: its primary key is (source_id, id, version), and
/// each page is one transaction of `INSERT ... ON CONFLICT DO NOTHING`, so a record sent again (after a crash,
/// or by the replica that took a source over) is dropped by the database, whichever replica sends it. The
/// runner moves the watermark only after `write` returned, that is after `COMMIT`.
///
/// Each row keeps the record's text exactly as the source sent it (`raw`, line breaks removed) and the same as
/// `jsonb` (`record`) for queries; `jsonb` cannot hold a `\u0000` or a lone surrogate escape, so such a record
/// has `record` null and only its `raw`. Marks and collection times are the sortable text of the storage
/// (nanoseconds kept); `seq` orders rows by arrival.
struct PostgresSink: Sink {
    let client: PostgresClient
    let url: PostgresURL
    let ready: ReadyGate
    let logger: Logger
    /// The longest one page's transaction may take before the run fails (and retries from its last checkpoint).
    var operationTimeout = Self.defaultOperationTimeout
    static let defaultOperationTimeout = Duration.seconds(60)

    /// The sink's schema, in its own ledger and under its own lock: it may share a database with the storage.
    static let migrations = PostgresMigrations(
        ledger: "sink_schema_migrations", lock: 0x5741_5445_524D_5331,
        list: [
            (
                "v1",
                [
                    """
                    CREATE TABLE records (
                        source_id TEXT COLLATE "C" NOT NULL,
                        id TEXT COLLATE "C" NOT NULL,
                        version TEXT COLLATE "C" NOT NULL,
                        mark TEXT COLLATE "C" NOT NULL,
                        collected_at TEXT COLLATE "C" NOT NULL,
                        record JSONB,
                        raw TEXT NOT NULL,
                        seq BIGINT GENERATED ALWAYS AS IDENTITY,
                        PRIMARY KEY (source_id, id, version)
                    )
                    """,
                    "CREATE INDEX records_source_seq ON records (source_id, seq)",
                ]
            )
        ])

    /// Records per statement: the arrays travel as 6 parameters whatever their length; this bounds one message.
    static let chunkRecords = 2_000
    /// Bytes of records' text per statement: PostgreSQL refuses a message or an array over 1 GB, and 2,000 records
    /// of 512 KiB (OTX pulses of a few MB each, STIX objects carrying files) crossed it; the same page failed the
    /// same way at every run and the source's watermark never moved again.
    static let chunkBytes = 64 << 20

    /// `rows` in statements of at most `records` rows and `bytes` bytes of text (a row larger alone is a statement
    /// of its own).
    static func chunks<Row>(_ rows: [Row], records: Int, bytes: Int, size: (Row) -> Int) -> [ArraySlice<Row>] {
        var chunks: [ArraySlice<Row>] = []
        var start = rows.startIndex
        var total = 0
        for index in rows.indices {
            let rowSize = size(rows[index])
            if index > start, index - start >= records || total + rowSize > bytes {
                chunks.append(rows[start..<index])
                (start, total) = (index, 0)
            }
            total += rowSize
        }
        if start < rows.endIndex { chunks.append(rows[start...]) }
        return chunks
    }

    func open(_ source: SourceID) async throws(SinkError) -> any SinkWriter {
        do {
            try await ready.wait()
        } catch {
            throw SinkError(path: url.redacted, operation: "open", detail: "\(error)")
        }
        return Writer(sink: self, source: source)
    }

    struct Writer: SinkWriter {
        let sink: PostgresSink
        let source: SourceID

        func write(_ records: [CollectedRecord], collectedAt: Timestamp) async throws(SinkError) -> [CollectedRecord] {
            var seen = Set<RecordKey>()
            let page = records.filter { seen.insert($0.key).inserted }
            guard !page.isEmpty else { return [] }
            var rows: [(id: String, version: String, mark: String, raw: String, jsonb: Bool)] = []
            rows.reserveCapacity(page.count)
            for record in page {
                guard let raw = String(validating: record.json, as: UTF8.self) else {
                    throw SinkError(
                        path: sink.url.redacted, operation: "write",
                        detail: "record \(record.id) (\(record.version)) is not UTF-8")
                }
                let key = PostgresSink.storedKey(record.key)
                rows.append((key.id, key.version, record.mark.sortableString, raw, PostgresSink.jsonbCanHold(raw)))
            }
            let inserted = try await sink.insert(rows, source: source, collectedAt: collectedAt)
            return page.filter { inserted.contains(PostgresSink.storedKey($0.key)) }
        }

        /// Every page is committed as it is written: nothing to do at a checkpoint or at the end.
        func checkpoint() async throws(SinkError) {}
        func finish() async throws(SinkError) {}
    }

    /// Inserts `rows` in one transaction and returns the keys the table did not hold. Deadlocks between replicas
    /// inserting the same keys (rows are inserted in key order, so they are rare) and serialization failures are
    /// retried; anything else fails the page, whose records the next run sends again.
    private func insert(
        _ rows: [(id: String, version: String, mark: String, raw: String, jsonb: Bool)], source: SourceID,
        collectedAt: Timestamp
    ) async throws(SinkError) -> Set<RecordKey> {
        let chunks = Self.chunks(rows, records: Self.chunkRecords, bytes: Self.chunkBytes) {
            $0.raw.utf8.count + $0.id.utf8.count + $0.version.utf8.count + $0.mark.utf8.count
        }.map { Array($0) }
        var attempt = 1
        while true {
            do {
                return try await withDeadline(
                    operationTimeout,
                    onTimeout: { [url, operationTimeout] in
                        SinkError(
                            path: url.redacted, operation: "write",
                            detail: "PostgreSQL did not commit the page within \(operationTimeout)")
                    }
                ) { [client, logger] gate in
                    // A connection the deadline gave up on is closed, so that the pool can open another.
                    try await client.withConnection { connection in
                        try await gate.transaction(connection, logger: logger) { closed in
                            var inserted = Set<RecordKey>()
                            for chunk in chunks {
                                // Closed by the deadline: a statement sent now would never be answered.
                                if closed() { throw CancellationError() }
                                let query = Self.insertQuery(chunk, source: source, collectedAt: collectedAt)
                                for try await (id, version) in try await connection.query(query, logger: logger)
                                    .decode((String, String).self)
                                {
                                    inserted.insert(RecordKey(id: id, version: version))
                                }
                            }
                            return inserted
                        }
                    }
                }
            } catch let error as SinkError {
                throw error
            } catch {
                let underlying = PostgresFailure.underlying(error)
                if attempt < 5, PostgresFailure.isRetryable(underlying) {
                    attempt += 1
                    continue
                }
                throw SinkError(
                    path: url.redacted, operation: "write", detail: PostgresFailure.describe(underlying, url: url))
            }
        }
    }

    private static func insertQuery(
        _ rows: [(id: String, version: String, mark: String, raw: String, jsonb: Bool)], source: SourceID,
        collectedAt: Timestamp
    ) -> PostgresQuery {
        let (ids, versions, marks, raws, jsonb) = (
            rows.map(\.id), rows.map(\.version), rows.map(\.mark), rows.map(\.raw), rows.map(\.jsonb)
        )
        return """
            INSERT INTO records (source_id, id, version, mark, collected_at, raw, record)
            SELECT \(source.rawValue), t.id, t.version, t.mark, \(collectedAt.sortableString), t.raw,
                   CASE WHEN t.jsonb THEN t.raw::jsonb END
            FROM unnest(\(ids)::text[], \(versions)::text[], \(marks)::text[], \(raws)::text[], \(jsonb)::bool[])
                 AS t(id, version, mark, raw, jsonb)
            ORDER BY t.id, t.version
            ON CONFLICT (source_id, id, version) DO NOTHING
            RETURNING id, version
            """
    }

    /// A record's key as the table keeps it. `text` cannot hold a NUL: an id (or a version) with the escape `\u0000`
    /// in the source's JSON has it decoded, and its insert failed the page on every run, the source stopped for
    /// good. Such a key is kept with each NUL written as that escape, six characters; a key without one is kept as
    /// it is (an id holding those six characters as text would be taken for it, which no real source sends).
    static func storedKey(_ key: RecordKey) -> RecordKey {
        func stored(_ text: String) -> String {
            text.utf8.contains(0) ? text.replacingOccurrences(of: "\u{0}", with: "\\u0000") : text
        }
        return RecordKey(id: stored(key.id), version: stored(key.version))
    }

    /// Whether `jsonb` can hold this JSON text: it refuses the escape `\u0000` and surrogate escapes that are not
    /// a high one followed by a low one, and a number beyond what `numeric` holds (`1e1000000` overflows it). A
    /// number is taken as beyond when its exponent or its digits pass a thousand, far within `numeric`'s limits
    /// and far beyond any real record. Such a record is kept as its text only: refused by the cast, it failed its
    /// page on every run and the source stopped for good.
    static func jsonbCanHold(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        /// The value of the `\uXXXX` escape at `at`, if there is one.
        func escape(at index: Int) -> UInt16? {
            guard index + 5 < bytes.count, bytes[index] == UInt8(ascii: "\\"), bytes[index + 1] == UInt8(ascii: "u")
            else { return nil }
            return UInt16(String(decoding: bytes[(index + 2)...(index + 5)], as: UTF8.self), radix: 16)
        }
        func isDigit(_ index: Int) -> Bool {
            index < bytes.count && bytes[index] >= UInt8(ascii: "0") && bytes[index] <= UInt8(ascii: "9")
        }
        var index = 0
        var inString = false
        while index < bytes.count {
            let byte = bytes[index]
            if !inString {
                if byte == UInt8(ascii: "\"") {
                    inString = true
                } else if byte == UInt8(ascii: "-") || isDigit(index) {
                    // The digits, then an exponent: how far the decimal point moves.
                    var digits = 0
                    while isDigit(index)
                        || (index < bytes.count
                            && (bytes[index] == UInt8(ascii: ".") || bytes[index] == UInt8(ascii: "-")))
                    {
                        if isDigit(index) { digits += 1 }
                        index += 1
                    }
                    var exponentDigits = 0
                    if index < bytes.count, bytes[index] | 0x20 == UInt8(ascii: "e") {
                        index += 1
                        if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") {
                            index += 1
                        }
                        var exponent = 0
                        while isDigit(index) {
                            exponentDigits += 1
                            if exponentDigits <= 6 { exponent = exponent * 10 + Int(bytes[index] - UInt8(ascii: "0")) }
                            index += 1
                        }
                        if exponentDigits > 6 || exponent > 1_000 { return false }
                    }
                    if digits > 1_000 { return false }
                    continue
                }
                index += 1
                continue
            }
            if byte == UInt8(ascii: "\"") {
                inString = false
                index += 1
                continue
            }
            guard byte == UInt8(ascii: "\\") else {
                index += 1
                continue
            }
            guard let value = escape(at: index) else {
                index += 2  // another escape: \\, \", \n, ...
                continue
            }
            switch value {
            case 0, 0xDC00...0xDFFF:
                return false
            case 0xD800...0xDBFF:
                guard let low = escape(at: index + 6), (0xDC00...0xDFFF).contains(low) else { return false }
                index += 12
            default:
                index += 6
            }
        }
        return true
    }
}
