import Foundation
import GRDB
import WatermarkCore

// The model types as GRDB records: the Storage module teaches them to read and write their own rows, so no
// row type copies their fields. Rows are read by position, in the order of each record's `databaseSelection`
// (looking every column up by name through a decoder was most of a GET's database time).

/// Stored as `sortableString` (fixed width, nine fraction digits): text order in SQL is time order, and
/// nothing is lost to floating point.
extension Timestamp: DatabaseValueConvertible {
    public var databaseValue: DatabaseValue { sortableString.databaseValue }

    public static func fromDatabaseValue(_ dbValue: DatabaseValue) -> Timestamp? {
        String.fromDatabaseValue(dbValue).flatMap { try? Timestamp(rfc3339: $0) }
    }
}

extension SourceID: DatabaseValueConvertible {
    public var databaseValue: DatabaseValue { rawValue.databaseValue }

    public static func fromDatabaseValue(_ dbValue: DatabaseValue) -> SourceID? {
        String.fromDatabaseValue(dbValue).flatMap { try? SourceID($0) }
    }
}

extension RunStatus: DatabaseValueConvertible {}
extension HistoryStatus: DatabaseValueConvertible {}

/// `watermark`: the current state of one source.
extension Watermark: FetchableRecord, PersistableRecord {
    public static let databaseTableName = "watermark"

    public enum Columns {
        public static let sourceID = Column("source_id")
        public static let lastSuccessfulTimestamp = Column("last_successful_timestamp")
        public static let status = Column("status")
    }

    /// Every column, in the order `init(row:)` reads them.
    static let columnNames = [
        "source_id", "last_successful_timestamp", "last_run_timestamp", "status", "records_collected",
        "error_message", "version", "consecutive_failures", "created_at",
    ]
    public static var databaseSelection: [any SQLSelectable] { columnNames.map { Column($0) } }
    static let selectOne = "SELECT \(columnNames.joined(separator: ", ")) FROM watermark WHERE source_id = ?"
    private static let upsertSQL =
        WatermarkDatabase.insertSQL(into: databaseTableName, columnNames) + " ON CONFLICT (source_id) DO UPDATE SET "
        + columnNames.dropFirst().map { "\($0) = excluded.\($0)" }.joined(separator: ", ")

    public init(row: Row) throws {
        self.init(
            sourceID: try row.decode(atIndex: 0), lastSuccessfulTimestamp: try row.decode(atIndex: 1),
            lastRunTimestamp: try row.decode(atIndex: 2), status: try row.decode(atIndex: 3),
            recordsCollected: try row.decode(atIndex: 4), errorMessage: try row.decode(atIndex: 5),
            version: try row.decode(atIndex: 6), consecutiveFailures: try row.decode(atIndex: 7),
            createdAt: try row.decode(atIndex: 8))
    }

    /// The row `selectOne` stepped to (`SQLiteCall`), of the source it looked up.
    init(_ sourceID: SourceID, row call: borrowing SQLiteCall) throws {
        self.init(
            sourceID: sourceID, lastSuccessfulTimestamp: try call.timestamp(1),
            lastRunTimestamp: try call.required(call.timestamp(2), 2),
            status: try call.required(call.value(3, as: RunStatus.self), 3),
            recordsCollected: try call.required(call.int64(4), 4), errorMessage: call.text(5),
            version: try call.required(call.int64(6), 6), consecutiveFailures: try call.required(call.int64(7), 7),
            createdAt: try call.required(call.timestamp(8), 8))
    }

    public func encode(to container: inout PersistenceContainer) throws {
        container["source_id"] = sourceID
        container["last_successful_timestamp"] = lastSuccessfulTimestamp
        container["last_run_timestamp"] = lastRunTimestamp
        container["status"] = status
        container["records_collected"] = recordsCollected
        container["error_message"] = errorMessage
        container["version"] = version
        container["consecutive_failures"] = consecutiveFailures
        container["created_at"] = createdAt
    }

    /// Inserts the row or replaces the one of the same source with one statement prepared once per connection.
    /// GRDB's `save` built an UPDATE, then an INSERT, on every call: with decoding by name, two thirds of the
    /// single writer's CPU under concurrent PUTs. The count triggers fire as before (the insert trigger on a new
    /// source, the status trigger on a replaced one).
    func upsert(_ db: Database) throws {
        let call = try SQLiteCall(db, sql: Self.upsertSQL)
        try call.bind(
            sourceID, lastSuccessfulTimestamp, lastRunTimestamp, status.rawValue, recordsCollected, errorMessage,
            version, consecutiveFailures, createdAt)
        try call.run()
    }

    /// The columns a write changes when the status stays (source, status and creation are kept).
    private static let changingColumns = [
        "last_successful_timestamp", "last_run_timestamp", "records_collected", "error_message", "version",
        "consecutive_failures",
    ]
    private static let updateKeepingStatusSQL =
        "UPDATE watermark SET \(changingColumns.map { "\($0) = ?" }.joined(separator: ", ")) WHERE source_id = ?"

    /// Replaces the stored row of a source whose status and creation time stay as they are. A column an UPDATE
    /// assigns rewrites its index entries and fires its `UPDATE OF` triggers even when the value is the same:
    /// leaving `status` out spares the status index and the count row, two pages of a common write (a success
    /// after a success), each a random one when a million sources are written.
    func updateKeepingStatus(_ db: Database) throws {
        let call = try SQLiteCall(db, sql: Self.updateKeepingStatusSQL)
        try call.bind(
            lastSuccessfulTimestamp, lastRunTimestamp, recordsCollected, errorMessage, version, consecutiveFailures,
            sourceID)
        try call.run()
    }
}

/// `watermark_run`: one accepted update of a source (the source is the row's key, not a field of the run).
extension WatermarkRun: FetchableRecord, TableRecord {
    public static let databaseTableName = "watermark_run"

    public enum Columns {
        public static let sourceID = Column("source_id")
        public static let version = Column("version")
    }

    static let columnNames = [
        "version", "recorded_at", "status", "timestamp", "last_successful_timestamp", "records_collected",
        "error_message", "actor", "reason",
    ]
    public static var databaseSelection: [any SQLSelectable] { columnNames.map { Column($0) } }
    private static let insertSQL = WatermarkDatabase.insertSQL(into: databaseTableName, ["source_id"] + columnNames)

    public init(row: Row) throws {
        self.init(
            version: try row.decode(atIndex: 0), recordedAt: try row.decode(atIndex: 1),
            status: try row.decode(atIndex: 2), timestamp: try row.decode(atIndex: 3),
            lastSuccessfulTimestamp: try row.decode(atIndex: 4), recordsCollected: try row.decode(atIndex: 5),
            errorMessage: try row.decode(atIndex: 6), actor: try row.decode(atIndex: 7),
            reason: try row.decode(atIndex: 8))
    }

    /// Appends the run with a statement prepared once per connection, bound with SQLite's calls (`SQLiteCall`).
    func append(for sourceID: SourceID, to db: Database) throws {
        let call = try SQLiteCall(db, sql: Self.insertSQL)
        try call.bind(
            sourceID, version, recordedAt, status.rawValue, timestamp, lastSuccessfulTimestamp, recordsCollected,
            errorMessage, actor, reason)
        try call.run()
    }
}

/// `lease`: the last lease granted on a source (kept after expiry for its fencing counter).
extension Lease: PersistableRecord {
    public static let databaseTableName = "lease"

    static let selectOne = "SELECT source_id, owner, fencing_token, expires_at FROM lease WHERE source_id = ?"

    /// The row `selectOne` stepped to (`SQLiteCall`), of the source it looked up.
    init(_ sourceID: SourceID, row call: borrowing SQLiteCall) throws {
        self.init(
            sourceID: sourceID, owner: try call.required(call.text(1), 1),
            fencingToken: try call.required(call.int64(2), 2), expiresAt: try call.required(call.timestamp(3), 3))
    }

    public func encode(to container: inout PersistenceContainer) throws {
        container["source_id"] = sourceID
        container["owner"] = owner
        container["fencing_token"] = fencingToken
        container["expires_at"] = expiresAt
    }
}

/// `idempotency_key`: the first answer given to a key of a source, replayed to retries (the watermark as JSON).
extension IdempotencyRecord: FetchableRecord, TableRecord {
    public static let databaseTableName = "idempotency_key"

    public enum Columns {
        public static let sourceID = Column("source_id")
        public static let recordedAt = Column("recorded_at")
    }

    public static var databaseSelection: [any SQLSelectable] {
        [Column("key"), Column("fingerprint"), Column("response"), Column("created"), Column("recorded_at")]
    }
    static let selectOne =
        "SELECT key, fingerprint, response, created, recorded_at FROM idempotency_key WHERE source_id = ? AND key = ?"
    private static let upsertSQL =
        WatermarkDatabase.insertSQL(
            into: databaseTableName, ["source_id", "key", "fingerprint", "response", "created", "recorded_at"])
        + " ON CONFLICT (source_id, key) DO UPDATE SET fingerprint = excluded.fingerprint, "
        + "response = excluded.response, created = excluded.created, recorded_at = excluded.recorded_at"

    public init(row: Row) throws {
        let response: String = try row.decode(atIndex: 2)
        self.init(
            key: try row.decode(atIndex: 0), fingerprint: try row.decode(atIndex: 1),
            watermark: try JSONDecoder().decode(Watermark.self, from: Data(response.utf8)),
            created: try row.decode(atIndex: 3), recordedAt: try row.decode(atIndex: 4))
    }

    func save(for sourceID: SourceID, to db: Database) throws {
        let response = String(decoding: try JSONEncoder().encode(watermark), as: UTF8.self)
        try db.cachedStatement(sql: Self.upsertSQL).execute(arguments: [
            sourceID, key, fingerprint, response, created, recordedAt,
        ])
    }
}
