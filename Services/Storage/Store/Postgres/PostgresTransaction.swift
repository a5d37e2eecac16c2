import Foundation
import Logging
import PostgresNIO
import WatermarkCore

/// The statements of the PostgreSQL store on one connection (inside a transaction for writes): the snapshot
/// the rules read, the plan they return persisted, and the reads of the API. The SQL mirrors
/// `SQLiteTransaction`; timestamps travel as `Timestamp.sortableString`.
struct PostgresTransaction {
    let connection: PostgresConnection
    let logger: Logger
    /// Whether the operation's deadline closed the connection (`DeadlineGate.closing`): a statement sent on it then
    /// is never answered (postgres-nio drops the write of a closed channel), and the operation's task waited for ever.
    var closed: @Sendable () -> Bool = { false }

    /// `query` on the connection, unless the deadline has closed it.
    private func statement(_ query: PostgresQuery) async throws -> PostgresRowSequence {
        if closed() { throw CancellationError() }
        return try await connection.query(query, logger: logger)
    }

    private static let watermarkColumns = """
        source_id, last_successful_timestamp, last_run_timestamp, status, records_collected, error_message, \
        version, consecutive_failures, created_at
        """
    private typealias WatermarkRow = (String, String?, String, String, Int64, String?, Int64, Int64, String)

    /// Serialises every write of `sourceID` across replicas until the transaction ends, also while the source has
    /// no row to lock.
    func lock(_ sourceID: SourceID) async throws {
        try await statement(
            "SELECT pg_advisory_xact_lock(hashtextextended(\(sourceID.rawValue), 0))")
    }

    /// Takes the lock as `lock` does and then reads PostgreSQL's clock (`clock_timestamp()`, the instant of the call,
    /// where `now()` is the transaction's start): one round trip, the lock's row made before the clock is read.
    func lockReadingClock(_ sourceID: SourceID) async throws -> Timestamp {
        try await instant(
            """
            SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
            FROM (SELECT pg_advisory_xact_lock(hashtextextended(\(sourceID.rawValue), 0))) AS locked
            """)
    }

    /// PostgreSQL's clock now.
    func databaseNow() async throws -> Timestamp {
        try await instant("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
    }

    private func instant(_ query: PostgresQuery) async throws -> Timestamp {
        for try await text in try await statement(query).decode(String.self) {
            return try Timestamp(rfc3339: text)
        }
        throw WatermarkError.unavailable("PostgreSQL did not tell its clock")
    }

    func watermark(_ sourceID: SourceID) async throws -> Watermark? {
        let rows = try await statement(
            "SELECT \(unescaped: Self.watermarkColumns) FROM watermark WHERE source_id = \(sourceID.rawValue)")
        for try await row in rows.decode(WatermarkRow.self) { return try Self.watermark(row) }
        return nil
    }

    func list(after: SourceID?, status: RunStatus?, staleBefore cutoff: String?, limit: Int) async throws
        -> [Watermark]
    {
        // One statement for every filter: an absent filter is a NULL parameter (planned per execution, so each
        // filter still uses its index with keyset paging on source_id).
        let query: PostgresQuery = """
            SELECT \(unescaped: Self.watermarkColumns) FROM watermark
            WHERE (\(after?.rawValue)::text IS NULL OR source_id > \(after?.rawValue))
              AND (\(status?.rawValue)::text IS NULL OR status = \(status?.rawValue))
              AND (\(cutoff)::text IS NULL OR last_successful_timestamp IS NULL OR last_successful_timestamp < \(cutoff))
            ORDER BY source_id LIMIT \(limit)
            """
        var page: [Watermark] = []
        for try await row in try await statement(query).decode(WatermarkRow.self) {
            page.append(try Self.watermark(row))
        }
        return page
    }

    func history(_ sourceID: SourceID, limit: Int) async throws -> [WatermarkRun] {
        let rows = try await statement(
            """
            SELECT version, recorded_at, status, "timestamp", last_successful_timestamp, records_collected,
                   error_message, actor, reason
            FROM watermark_run WHERE source_id = \(sourceID.rawValue) ORDER BY version DESC LIMIT \(limit)
            """)
        var runs: [WatermarkRun] = []
        for try await (version, recordedAt, status, timestamp, lastSuccess, records, message, actor, reason)
            in rows.decode((Int64, String, String, String?, String?, Int64, String?, String?, String?).self)
        {
            runs.append(
                WatermarkRun(
                    version: version, recordedAt: try Self.timestamp(recordedAt), status: try Self.status(status),
                    timestamp: try timestamp.map(Self.timestamp),
                    lastSuccessfulTimestamp: try lastSuccess.map(Self.timestamp), recordsCollected: records,
                    errorMessage: message, actor: actor, reason: reason))
        }
        return runs
    }

    /// What the rules read about `sourceID`; the highest version is looked up only when there is no watermark.
    func snapshot(_ sourceID: SourceID, idempotencyKey: String?) async throws -> WatermarkSnapshot {
        let watermark = try await watermark(sourceID)
        var latestVersion = watermark?.version ?? 0
        if watermark == nil {
            let rows = try await statement(
                "SELECT COALESCE(MAX(version), 0) FROM watermark_run WHERE source_id = \(sourceID.rawValue)")
            for try await version in rows.decode(Int64.self) { latestVersion = version }
        }
        var record: IdempotencyRecord?
        if let idempotencyKey { record = try await self.idempotencyRecord(sourceID, key: idempotencyKey) }
        return WatermarkSnapshot(
            watermark: watermark, lease: try await lease(sourceID), latestVersion: latestVersion,
            idempotencyRecord: record)
    }

    func lease(_ sourceID: SourceID) async throws -> Lease? {
        let rows = try await statement(
            "SELECT owner, fencing_token, expires_at FROM lease WHERE source_id = \(sourceID.rawValue)")
        for try await (owner, token, expiresAt) in rows.decode((String, Int64, String).self) {
            return Lease(
                sourceID: sourceID, owner: owner, fencingToken: token, expiresAt: try Self.timestamp(expiresAt))
        }
        return nil
    }

    func idempotencyRecord(_ sourceID: SourceID, key: String) async throws -> IdempotencyRecord? {
        let rows = try await statement(
            """
            SELECT fingerprint, response, created, recorded_at FROM idempotency_key
            WHERE source_id = \(sourceID.rawValue) AND key = \(key)
            """)
        for try await (fingerprint, response, created, recordedAt) in rows.decode((String, String, Bool, String).self) {
            return IdempotencyRecord(
                key: key, fingerprint: fingerprint,
                watermark: try JSONDecoder().decode(Watermark.self, from: Data(response.utf8)), created: created,
                recordedAt: try Self.timestamp(recordedAt))
        }
        return nil
    }

    // MARK: Persisting plans

    func persist(_ plan: WritePlan) async throws {
        guard let changes = plan.changes else { return }
        let id = changes.watermark.sourceID
        try await save(changes.watermark)
        try await append(changes.run, for: id, keep: changes.keepRuns)
        if let record = changes.idempotencyRecord {
            try await save(record, for: id, expiredBefore: changes.idempotencyExpiredBefore)
        }
    }

    func persist(_ plan: DeletePlan) async throws {
        let id = plan.sourceID.rawValue
        try await statement("DELETE FROM watermark WHERE source_id = \(id)")
        try await append(plan.run, for: plan.sourceID, keep: plan.keepRuns)
    }

    func save(_ watermark: Watermark) async throws {
        try await statement(
            """
            INSERT INTO watermark (\(unescaped: Self.watermarkColumns))
            VALUES (\(watermark.sourceID.rawValue), \(watermark.lastSuccessfulTimestamp?.sortableString),
                    \(watermark.lastRunTimestamp.sortableString), \(watermark.status.rawValue),
                    \(watermark.recordsCollected), \(watermark.errorMessage), \(watermark.version),
                    \(watermark.consecutiveFailures), \(watermark.createdAt.sortableString))
            ON CONFLICT (source_id) DO UPDATE SET
                last_successful_timestamp = excluded.last_successful_timestamp,
                last_run_timestamp = excluded.last_run_timestamp, status = excluded.status,
                records_collected = excluded.records_collected, error_message = excluded.error_message,
                version = excluded.version, consecutive_failures = excluded.consecutive_failures,
                created_at = excluded.created_at
            """)
    }

    /// Appends the run and drops the runs beyond the newest `keep` (versions are consecutive: one range delete).
    func append(_ run: WatermarkRun, for sourceID: SourceID, keep: Int) async throws {
        try await statement(
            """
            INSERT INTO watermark_run (source_id, version, recorded_at, status, "timestamp",
                                       last_successful_timestamp, records_collected, error_message, actor, reason)
            VALUES (\(sourceID.rawValue), \(run.version), \(run.recordedAt.sortableString), \(run.status.rawValue),
                    \(run.timestamp?.sortableString), \(run.lastSuccessfulTimestamp?.sortableString),
                    \(run.recordsCollected), \(run.errorMessage), \(run.actor), \(run.reason))
            """)
        try await statement(
            "DELETE FROM watermark_run WHERE source_id = \(sourceID.rawValue) AND version <= \(run.version - Int64(keep))"
        )
    }

    func save(_ lease: Lease) async throws {
        try await statement(
            """
            INSERT INTO lease (source_id, owner, fencing_token, expires_at)
            VALUES (\(lease.sourceID.rawValue), \(lease.owner), \(lease.fencingToken), \(lease.expiresAt.sortableString))
            ON CONFLICT (source_id) DO UPDATE SET owner = excluded.owner, fencing_token = excluded.fencing_token,
                expires_at = excluded.expires_at
            """)
    }

    func save(_ record: IdempotencyRecord, for sourceID: SourceID, expiredBefore: Timestamp) async throws {
        let response = String(decoding: try JSONEncoder().encode(record.watermark), as: UTF8.self)
        try await statement(
            """
            INSERT INTO idempotency_key (source_id, key, fingerprint, created, response, recorded_at)
            VALUES (\(sourceID.rawValue), \(record.key), \(record.fingerprint), \(record.created), \(response),
                    \(record.recordedAt.sortableString))
            ON CONFLICT (source_id, key) DO UPDATE SET fingerprint = excluded.fingerprint,
                created = excluded.created, response = excluded.response, recorded_at = excluded.recorded_at
            """)
        try await statement(
            """
            DELETE FROM idempotency_key
            WHERE source_id = \(sourceID.rawValue) AND recorded_at < \(expiredBefore.sortableString)
            """)
    }

    // MARK: Rows

    private static func watermark(_ row: WatermarkRow) throws -> Watermark {
        Watermark(
            sourceID: try SourceID(row.0), lastSuccessfulTimestamp: try row.1.map(timestamp),
            lastRunTimestamp: try timestamp(row.2), status: try status(row.3), recordsCollected: row.4,
            errorMessage: row.5, version: row.6, consecutiveFailures: row.7, createdAt: try timestamp(row.8))
    }

    private static func timestamp(_ text: String) throws -> Timestamp {
        try Timestamp(rfc3339: text)
    }

    private static func status<Status: RawRepresentable<String>>(_ text: String) throws -> Status {
        guard let status = Status(rawValue: text) else {
            throw WatermarkError.unavailable("the database holds an unknown status '\(text.prefix(32))'")
        }
        return status
    }
}
