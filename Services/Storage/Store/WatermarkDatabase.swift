import Foundation
import GRDB
import WatermarkCore

/// The SQLite schema and every row type. All SQL of the service lives in this folder.
///
/// Timestamps are stored as `Timestamp.sortableString` (fixed-width, nine fraction digits), so text
/// comparison in SQL is time comparison and nothing is lost to floating point.
enum WatermarkDatabase {
    /// Migrations are append-only: a shipped migration is never edited, a change is a new one.
    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.create(table: WatermarkRow.databaseTableName) { t in
                t.primaryKey("source_id", .text)
                t.column("last_successful_timestamp", .text)
                t.column("last_run_timestamp", .text).notNull()
                t.column("status", .text).notNull()
                t.column("records_collected", .integer).notNull()
                t.column("error_message", .text)
                t.column("version", .integer).notNull()
                t.column("consecutive_failures", .integer).notNull()
                t.column("created_at", .text).notNull()
            }
            try db.create(table: RunRow.databaseTableName) { t in
                t.column("source_id", .text).notNull()
                t.column("version", .integer).notNull()
                t.column("recorded_at", .text).notNull()
                t.column("status", .text).notNull()
                t.column("timestamp", .text)
                t.column("last_successful_timestamp", .text)
                t.column("records_collected", .integer).notNull()
                t.column("error_message", .text)
                t.primaryKey(["source_id", "version"])
            }
            try db.create(table: LeaseRow.databaseTableName) { t in
                t.primaryKey("source_id", .text)
                t.column("owner", .text).notNull()
                t.column("fencing_token", .integer).notNull()
                t.column("expires_at", .text).notNull()
            }
            try db.create(table: IdempotencyRow.databaseTableName) { t in
                t.column("source_id", .text).notNull()
                t.column("key", .text).notNull()
                t.column("fingerprint", .text).notNull()
                t.column("created", .boolean).notNull()
                t.column("response", .text).notNull()
                t.column("recorded_at", .text).notNull()
                t.primaryKey(["source_id", "key"])
            }
            try db.create(
                index: "idempotency_key_age", on: IdempotencyRow.databaseTableName,
                columns: ["source_id", "recorded_at"])
            try db.create(table: "health_probe") { t in
                t.primaryKey("id", .integer)
                t.column("checked_at", .text).notNull()
            }
        }
        migrator.registerMigration("v2-counts-and-filter-indexes") { db in
            // `/status` and `/metrics` read these counts on every scrape: kept by triggers in the write's own
            // transaction, so a scrape costs one row whatever the number of watermarks.
            try db.execute(
                sql: """
                    CREATE TABLE watermark_count (
                        id INTEGER PRIMARY KEY CHECK (id = 1),
                        total INTEGER NOT NULL,
                        failed INTEGER NOT NULL
                    );
                    INSERT INTO watermark_count (id, total, failed)
                        SELECT 1, COUNT(*), COALESCE(SUM(status = 'failed'), 0) FROM watermark;
                    CREATE TRIGGER watermark_count_insert AFTER INSERT ON watermark BEGIN
                        UPDATE watermark_count SET total = total + 1, failed = failed + (NEW.status = 'failed')
                        WHERE id = 1;
                    END;
                    CREATE TRIGGER watermark_count_delete AFTER DELETE ON watermark BEGIN
                        UPDATE watermark_count SET total = total - 1, failed = failed - (OLD.status = 'failed')
                        WHERE id = 1;
                    END;
                    CREATE TRIGGER watermark_count_status AFTER UPDATE OF status ON watermark BEGIN
                        UPDATE watermark_count
                        SET failed = failed + (NEW.status = 'failed') - (OLD.status = 'failed') WHERE id = 1;
                    END;
                    """)
            // The list's filters, with keyset paging on source_id: `status` walks (status, source_id) in order;
            // staleness (and the stale count) reads a range of last_successful_timestamp.
            try db.create(
                index: "watermark_status", on: WatermarkRow.databaseTableName, columns: ["status", "source_id"])
            try db.create(
                index: "watermark_last_success", on: WatermarkRow.databaseTableName,
                columns: ["last_successful_timestamp"])
        }
        migrator.registerMigration("v3-success-hours") { db in
            // The stale count of `/status` and `/metrics` (last success before now - STALE_AFTER_SECONDS, or
            // never): the cutoff moves with the clock, so no trigger can keep the count itself. Triggers keep
            // how many sources last succeeded in each hour instead ('' for never), and a scrape adds the hours
            // before the cutoff's hour to an index range within that one hour: a cost that grows with the
            // number of distinct hours, never with the number of sources (an index range over every stale
            // source was 1 ms a scrape at 10,000 stale sources, /status at 0.37 of its small-database rate).
            let hour = { (row: String) in "COALESCE(substr(\(row).last_successful_timestamp, 1, 13), '')" }
            let add = { (row: String) in
                "INSERT INTO success_hour (hour, sources) VALUES (\(hour(row)), 1) "
                    + "ON CONFLICT (hour) DO UPDATE SET sources = sources + 1;"
            }
            let remove = { (row: String) in
                "UPDATE success_hour SET sources = sources - 1 WHERE hour = \(hour(row)); "
                    + "DELETE FROM success_hour WHERE hour = \(hour(row)) AND sources = 0;"
            }
            try db.execute(
                sql: """
                    CREATE TABLE success_hour (hour TEXT PRIMARY KEY, sources INTEGER NOT NULL) WITHOUT ROWID;
                    INSERT INTO success_hour (hour, sources)
                        SELECT COALESCE(substr(last_successful_timestamp, 1, 13), ''), COUNT(*) FROM watermark
                        GROUP BY 1;
                    CREATE TRIGGER success_hour_insert AFTER INSERT ON watermark BEGIN \(add("NEW")) END;
                    CREATE TRIGGER success_hour_delete AFTER DELETE ON watermark BEGIN \(remove("OLD")) END;
                    CREATE TRIGGER success_hour_update AFTER UPDATE OF last_successful_timestamp ON watermark
                    WHEN \(hour("NEW")) IS NOT \(hour("OLD")) BEGIN \(remove("OLD")) \(add("NEW")) END;
                    """)
        }
        return migrator
    }

    /// `INSERT INTO table (columns) VALUES (?, ...)`: the rows written on every PUT bind their columns in this order.
    static func insertSQL(into table: String, _ columns: [String]) -> String {
        "INSERT INTO \(table) (\(columns.joined(separator: ", "))) VALUES (\(columns.map { _ in "?" }.joined(separator: ", ")))"
    }

    /// The stale count with the hour buckets of `v3-success-hours`: sources that never succeeded or last
    /// succeeded in an hour before the cutoff's, plus those of the cutoff's hour before the cutoff.
    static let summarySQL = """
        SELECT total, failed,
               (SELECT COALESCE(SUM(sources), 0) FROM success_hour WHERE hour < substr(?1, 1, 13))
               + (SELECT COUNT(*) FROM watermark
                  WHERE last_successful_timestamp >= substr(?1, 1, 13) AND last_successful_timestamp < ?1) AS stale
        FROM watermark_count WHERE id = 1
        """
}

extension Timestamp {
    /// Reads a stored column value back.
    init(stored text: String) throws {
        try self.init(rfc3339: text)
    }
}

/// A row of `watermark`: the current state of one source.
struct WatermarkRow: Codable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "watermark"

    var sourceID: String
    var lastSuccessfulTimestamp: String?
    var lastRunTimestamp: String
    var status: String
    var recordsCollected: Int64
    var errorMessage: String?
    var version: Int64
    var consecutiveFailures: Int64
    var createdAt: String

    enum CodingKeys: String, CodingKey {
        case sourceID = "source_id"
        case lastSuccessfulTimestamp = "last_successful_timestamp"
        case lastRunTimestamp = "last_run_timestamp"
        case status
        case recordsCollected = "records_collected"
        case errorMessage = "error_message"
        case version
        case consecutiveFailures = "consecutive_failures"
        case createdAt = "created_at"
    }

    enum Columns {
        static let sourceID = Column(CodingKeys.sourceID)
        static let lastSuccessfulTimestamp = Column(CodingKeys.lastSuccessfulTimestamp)
        static let status = Column(CodingKeys.status)
    }

    /// Every column, in the order `init(row:)` reads them (requests select them in this order).
    static let columnNames = [
        "source_id", "last_successful_timestamp", "last_run_timestamp", "status", "records_collected",
        "error_message", "version", "consecutive_failures", "created_at",
    ]
    static var databaseSelection: [any SQLSelectable] { columnNames.map { Column($0) } }
    static let selectOne = "SELECT \(columnNames.joined(separator: ", ")) FROM watermark WHERE source_id = ?"
    private static let upsertSQL =
        WatermarkDatabase.insertSQL(into: databaseTableName, columnNames) + " ON CONFLICT (source_id) DO UPDATE SET "
        + columnNames.dropFirst().map { "\($0) = excluded.\($0)" }.joined(separator: ", ")

    /// Reads the columns by position: the Decodable path looked each one up by name through a decoder.
    init(row: Row) throws {
        sourceID = row[0]
        lastSuccessfulTimestamp = row[1]
        lastRunTimestamp = row[2]
        status = row[3]
        recordsCollected = row[4]
        errorMessage = row[5]
        version = row[6]
        consecutiveFailures = row[7]
        createdAt = row[8]
    }

    /// Inserts the row or replaces the one of the same source with one statement prepared once per connection.
    /// GRDB's `save` encoded the record through `Encodable` and built an UPDATE, then an INSERT, on every call:
    /// with the row decoding, two thirds of the single writer's CPU under concurrent PUTs. The count triggers
    /// fire as before (the insert trigger on a new source, the status trigger on a replaced one).
    func upsert(_ db: Database) throws {
        try db.cachedStatement(sql: Self.upsertSQL).execute(arguments: [
            sourceID, lastSuccessfulTimestamp, lastRunTimestamp, status, recordsCollected, errorMessage, version,
            consecutiveFailures, createdAt,
        ])
    }

    init(_ watermark: Watermark) {
        sourceID = watermark.sourceID.rawValue
        lastSuccessfulTimestamp = watermark.lastSuccessfulTimestamp?.sortableString
        lastRunTimestamp = watermark.lastRunTimestamp.sortableString
        status = watermark.status.rawValue
        recordsCollected = watermark.recordsCollected
        errorMessage = watermark.errorMessage
        version = watermark.version
        consecutiveFailures = watermark.consecutiveFailures
        createdAt = watermark.createdAt.sortableString
    }

    func model() throws -> Watermark {
        guard let status = RunStatus(rawValue: status) else {
            throw DatabaseError(resultCode: .SQLITE_CORRUPT, message: "unknown status '\(status)' for \(sourceID)")
        }
        return Watermark(
            sourceID: try SourceID(sourceID),
            lastSuccessfulTimestamp: try lastSuccessfulTimestamp.map(Timestamp.init(stored:)),
            lastRunTimestamp: try Timestamp(stored: lastRunTimestamp),
            status: status,
            recordsCollected: recordsCollected,
            errorMessage: errorMessage,
            version: version,
            consecutiveFailures: consecutiveFailures,
            createdAt: try Timestamp(stored: createdAt)
        )
    }
}

/// A row of `watermark_run`: one accepted update.
struct RunRow: Codable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "watermark_run"

    var sourceID: String
    var version: Int64
    var recordedAt: String
    var status: String
    var timestamp: String?
    var lastSuccessfulTimestamp: String?
    var recordsCollected: Int64
    var errorMessage: String?

    enum CodingKeys: String, CodingKey {
        case sourceID = "source_id"
        case version
        case recordedAt = "recorded_at"
        case status, timestamp
        case lastSuccessfulTimestamp = "last_successful_timestamp"
        case recordsCollected = "records_collected"
        case errorMessage = "error_message"
    }

    enum Columns {
        static let sourceID = Column(CodingKeys.sourceID)
        static let version = Column(CodingKeys.version)
    }

    /// Every column, in the order `init(row:)` reads them.
    static let columnNames = [
        "source_id", "version", "recorded_at", "status", "timestamp", "last_successful_timestamp",
        "records_collected", "error_message",
    ]
    static var databaseSelection: [any SQLSelectable] { columnNames.map { Column($0) } }
    private static let insertSQL = WatermarkDatabase.insertSQL(into: databaseTableName, columnNames)

    init(row: Row) throws {
        sourceID = row[0]
        version = row[1]
        recordedAt = row[2]
        status = row[3]
        timestamp = row[4]
        lastSuccessfulTimestamp = row[5]
        recordsCollected = row[6]
        errorMessage = row[7]
    }

    /// Appends the run with a statement prepared once per connection (see `WatermarkRow.upsert`).
    func append(to db: Database) throws {
        try db.cachedStatement(sql: Self.insertSQL).execute(arguments: [
            sourceID, version, recordedAt, status, timestamp, lastSuccessfulTimestamp, recordsCollected, errorMessage,
        ])
    }

    init(_ run: WatermarkRun, sourceID: SourceID) {
        self.sourceID = sourceID.rawValue
        version = run.version
        recordedAt = run.recordedAt.sortableString
        status = run.status.rawValue
        timestamp = run.timestamp?.sortableString
        lastSuccessfulTimestamp = run.lastSuccessfulTimestamp?.sortableString
        recordsCollected = run.recordsCollected
        errorMessage = run.errorMessage
    }

    func model() throws -> WatermarkRun {
        guard let status = RunStatus(rawValue: status) else {
            throw DatabaseError(resultCode: .SQLITE_CORRUPT, message: "unknown status '\(status)' for \(sourceID)")
        }
        return WatermarkRun(
            version: version, recordedAt: try Timestamp(stored: recordedAt), status: status,
            timestamp: try timestamp.map(Timestamp.init(stored:)),
            lastSuccessfulTimestamp: try lastSuccessfulTimestamp.map(Timestamp.init(stored:)),
            recordsCollected: recordsCollected, errorMessage: errorMessage
        )
    }
}

/// A row of `lease`: the last lease granted on a source (kept after expiry for its fencing counter).
struct LeaseRow: Codable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "lease"

    var sourceID: String
    var owner: String
    var fencingToken: Int64
    var expiresAt: String

    enum CodingKeys: String, CodingKey {
        case sourceID = "source_id"
        case owner
        case fencingToken = "fencing_token"
        case expiresAt = "expires_at"
    }

    static var databaseSelection: [any SQLSelectable] {
        [Column("source_id"), Column("owner"), Column("fencing_token"), Column("expires_at")]
    }
    static let selectOne = "SELECT source_id, owner, fencing_token, expires_at FROM lease WHERE source_id = ?"

    init(row: Row) throws {
        sourceID = row[0]
        owner = row[1]
        fencingToken = row[2]
        expiresAt = row[3]
    }

    init(_ lease: Lease) {
        sourceID = lease.sourceID.rawValue
        owner = lease.owner
        fencingToken = lease.fencingToken
        expiresAt = lease.expiresAt.sortableString
    }

    func model() throws -> Lease {
        Lease(
            sourceID: try SourceID(sourceID), owner: owner, fencingToken: fencingToken,
            expiresAt: try Timestamp(stored: expiresAt)
        )
    }
}

/// A row of `idempotency_key`: the first answer given to a key, replayed to retries.
struct IdempotencyRow: Codable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "idempotency_key"

    var sourceID: String
    var key: String
    var fingerprint: String
    var created: Bool
    /// The watermark answered, as JSON.
    var response: String
    var recordedAt: String

    enum CodingKeys: String, CodingKey {
        case sourceID = "source_id"
        case key, fingerprint, created, response
        case recordedAt = "recorded_at"
    }

    enum Columns {
        static let sourceID = Column(CodingKeys.sourceID)
        static let key = Column(CodingKeys.key)
        static let recordedAt = Column(CodingKeys.recordedAt)
    }

    init(_ record: IdempotencyRecord, sourceID: SourceID) throws {
        self.sourceID = sourceID.rawValue
        key = record.key
        fingerprint = record.fingerprint
        created = record.created
        response = String(decoding: try JSONEncoder().encode(record.watermark), as: UTF8.self)
        recordedAt = record.recordedAt.sortableString
    }

    func model() throws -> IdempotencyRecord {
        IdempotencyRecord(
            key: key, fingerprint: fingerprint,
            watermark: try JSONDecoder().decode(Watermark.self, from: Data(response.utf8)), created: created,
            recordedAt: try Timestamp(stored: recordedAt)
        )
    }
}

/// One SQLite transaction as the rules need it: the snapshot of a source they read, and the plan they return
/// persisted (and the reads of the API).
///
/// The reads every request makes use statements prepared once per connection (`cachedStatement`): building and
/// preparing a query-interface request on each call was the largest cost of a GET after the thread hops
/// (about 13 % of the service's CPU under load, SQL generation and SQLite's authorizer callbacks).
struct SQLiteTransaction {
    let db: Database

    func watermark(_ sourceID: SourceID) throws -> Watermark? {
        try WatermarkRow.fetchOne(db.cachedStatement(sql: WatermarkRow.selectOne), arguments: [sourceID.rawValue])?
            .model()
    }

    func lease(_ sourceID: SourceID) throws -> Lease? {
        try LeaseRow.fetchOne(db.cachedStatement(sql: LeaseRow.selectOne), arguments: [sourceID.rawValue])?.model()
    }

    func latestVersion(_ sourceID: SourceID) throws -> Int64 {
        try Int64.fetchOne(
            db.cachedStatement(sql: "SELECT MAX(version) FROM watermark_run WHERE source_id = ?"),
            arguments: [sourceID.rawValue]
        ) ?? 0
    }

    func idempotencyRecord(_ sourceID: SourceID, key: String) throws -> IdempotencyRecord? {
        try IdempotencyRow.fetchOne(
            db.cachedStatement(sql: "SELECT * FROM idempotency_key WHERE source_id = ? AND key = ?"),
            arguments: [sourceID.rawValue, key]
        )?.model()
    }

    /// What the rules read about `sourceID`; the highest version is looked up only when there is no watermark.
    func snapshot(_ sourceID: SourceID, idempotencyKey: String?) throws -> WatermarkSnapshot {
        let watermark = try watermark(sourceID)
        return WatermarkSnapshot(
            watermark: watermark, lease: try lease(sourceID),
            latestVersion: try watermark?.version ?? latestVersion(sourceID),
            idempotencyRecord: try idempotencyKey.flatMap { try idempotencyRecord(sourceID, key: $0) })
    }

    mutating func persist(_ plan: WritePlan) throws {
        guard let changes = plan.changes else { return }
        let id = changes.watermark.sourceID
        try save(changes.watermark)
        try append(changes.run, for: id, keep: changes.keepRuns)
        if let record = changes.idempotencyRecord {
            try save(record, for: id, expiredBefore: changes.idempotencyExpiredBefore)
        }
    }

    mutating func persist(_ plan: DeletePlan) throws {
        try deleteWatermark(plan.sourceID)
        try deleteIdempotencyRecords(plan.sourceID)
    }

    mutating func save(_ watermark: Watermark) throws {
        try WatermarkRow(watermark).upsert(db)
    }

    mutating func deleteWatermark(_ sourceID: SourceID) throws {
        _ = try WatermarkRow.deleteOne(db, key: sourceID.rawValue)
    }

    mutating func append(_ run: WatermarkRun, for sourceID: SourceID, keep: Int) throws {
        try RunRow(run, sourceID: sourceID).append(to: db)
        // Versions of one source's runs are consecutive, so the oldest run to keep is known directly.
        try db.cachedStatement(sql: "DELETE FROM watermark_run WHERE source_id = ? AND version <= ?")
            .execute(arguments: [sourceID.rawValue, run.version - Int64(keep)])
    }

    mutating func save(_ lease: Lease) throws {
        try LeaseRow(lease).save(db)
    }

    mutating func save(_ record: IdempotencyRecord, for sourceID: SourceID, expiredBefore: Timestamp) throws {
        try IdempotencyRow(record, sourceID: sourceID).save(db)
        try IdempotencyRow
            .filter(IdempotencyRow.Columns.sourceID == sourceID.rawValue)
            .filter(IdempotencyRow.Columns.recordedAt < expiredBefore.sortableString)
            .deleteAll(db)
    }

    mutating func deleteIdempotencyRecords(_ sourceID: SourceID) throws {
        try IdempotencyRow.filter(IdempotencyRow.Columns.sourceID == sourceID.rawValue).deleteAll(db)
    }
}
