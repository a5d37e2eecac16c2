import GRDB
import WatermarkCore

/// One SQLite transaction as the rules need it: the snapshot of a source they read, and the plan they return
/// persisted (and the reads of the API).
///
/// The reads every request makes use statements prepared once per connection (`cachedStatement`): building and
/// preparing a query-interface request on each call was the largest cost of a GET after the thread hops
/// (about 13 % of the service's CPU under load, SQL generation and SQLite's authorizer callbacks).
struct SQLiteTransaction {
    let db: Database

    func watermark(_ sourceID: SourceID) throws -> Watermark? {
        try row(Watermark.selectOne, of: sourceID) { try Watermark(sourceID, row: $0) }
    }

    func lease(_ sourceID: SourceID) throws -> Lease? {
        try row(Lease.selectOne, of: sourceID) { try Lease(sourceID, row: $0) }
    }

    /// The row `sql` finds for `sourceID` (its one parameter), made into a value by `make`; nil when there is none.
    private func row<T>(_ sql: String, of sourceID: SourceID, _ make: (borrowing SQLiteCall) throws -> T) throws -> T? {
        let call = try SQLiteCall(db, sql: sql)
        try call.bind(sourceID)
        return try call.step() ? make(call) : nil
    }

    func latestVersion(_ sourceID: SourceID) throws -> Int64 {
        try Int64.fetchOne(
            db.cachedStatement(sql: "SELECT MAX(version) FROM watermark_run WHERE source_id = ?"),
            arguments: [sourceID]
        ) ?? 0
    }

    func idempotencyRecord(_ sourceID: SourceID, key: String) throws -> IdempotencyRecord? {
        try IdempotencyRecord.fetchOne(
            db.cachedStatement(sql: IdempotencyRecord.selectOne), arguments: [sourceID, key])
    }

    /// What the rules read about `sourceID`; the highest version is looked up only when there is no watermark.
    func snapshot(_ sourceID: SourceID, idempotencyKey: String?) throws -> WatermarkSnapshot {
        let watermark = try watermark(sourceID)
        return WatermarkSnapshot(
            watermark: watermark, lease: try lease(sourceID),
            latestVersion: try watermark?.version ?? latestVersion(sourceID),
            idempotencyRecord: try idempotencyKey.flatMap { try idempotencyRecord(sourceID, key: $0) })
    }

    /// Writes the plan's rows; `previous` is the watermark the plan was made from (the snapshot's).
    mutating func persist(_ plan: WritePlan, replacing previous: Watermark?) throws {
        guard let changes = plan.changes else { return }
        let id = changes.watermark.sourceID
        if let previous, previous.status == changes.watermark.status, previous.createdAt == changes.watermark.createdAt
        {
            try changes.watermark.updateKeepingStatus(db)
        } else {
            try save(changes.watermark)
        }
        try append(changes.run, for: id, keep: changes.keepRuns)
        if let record = changes.idempotencyRecord {
            try save(record, for: id, expiredBefore: changes.idempotencyExpiredBefore)
        }
    }

    mutating func persist(_ plan: DeletePlan) throws {
        try deleteWatermark(plan.sourceID)
        try append(plan.run, for: plan.sourceID, keep: plan.keepRuns)
    }

    mutating func save(_ watermark: Watermark) throws {
        try watermark.upsert(db)
    }

    mutating func deleteWatermark(_ sourceID: SourceID) throws {
        _ = try Watermark.deleteOne(db, key: sourceID)
    }

    mutating func append(_ run: WatermarkRun, for sourceID: SourceID, keep: Int) throws {
        try run.append(for: sourceID, to: db)
        // Versions of one source's runs are consecutive from 1, so the oldest run to keep is known directly, and a
        // source with no more runs than it keeps has none to drop.
        guard run.version > Int64(keep) else { return }
        let call = try SQLiteCall(db, sql: "DELETE FROM watermark_run WHERE source_id = ? AND version <= ?")
        try call.bind(sourceID, run.version - Int64(keep))
        try call.run()
    }

    mutating func save(_ lease: Lease) throws {
        try lease.save(db)
    }

    mutating func save(_ record: IdempotencyRecord, for sourceID: SourceID, expiredBefore: Timestamp) throws {
        try record.save(for: sourceID, to: db)
        try IdempotencyRecord
            .filter(IdempotencyRecord.Columns.sourceID == sourceID)
            .filter(IdempotencyRecord.Columns.recordedAt < expiredBefore)
            .deleteAll(db)
    }
}
