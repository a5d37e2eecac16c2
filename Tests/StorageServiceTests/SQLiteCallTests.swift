import Foundation
import GRDB
import TestSupport
import Testing
import WatermarkCore

@testable import StorageService

@Suite("SQLite calls of the write path")
struct SQLiteCallTests {
    /// Binds each kind of value as GRDB would store it: an empty text stays a text (a nil pointer would be NULL).
    @Test func bindsTextsNullsNumbersAndTimestamps() throws {
        let queue = try DatabaseQueue()
        try queue.write { db in
            try db.execute(sql: "CREATE TABLE t (a, b, c, d)")
            let insert = try SQLiteCall(db, sql: "INSERT INTO t VALUES (?, ?, ?, ?)")
            try insert.bind("", nil as String?, Int64.max, Timestamp.at("2026-12-05T10:00:00.5Z"))
            try insert.run()
            let row = try #require(try Row.fetchOne(db, sql: "SELECT typeof(a), a, b IS NULL, c, d FROM t"))
            #expect(row[0] as String == "text" && row[1] as String == "")
            #expect(row[2] as Bool && row[3] as Int64 == Int64.max)
            #expect(row[4] as String == Timestamp.at("2026-12-05T10:00:00.5Z").sortableString)

            let select = try SQLiteCall(db, sql: "SELECT a, b, c, d FROM t")
            #expect(try select.step())
            #expect(select.text(0) == "" && select.text(1) == nil && select.int64(1) == nil)
            #expect(select.int64(2) == Int64.max)
            #expect(try select.timestamp(3) == Timestamp.at("2026-12-05T10:00:00.5Z"))
            #expect(try !select.step())
        }
    }

    /// A value this service never writes (another hand changed the file) is an error naming the column, not a crash.
    @Test func aDamagedColumnIsAnErrorNamingIt() throws {
        let queue = try DatabaseQueue()
        try queue.write { db in
            try db.execute(sql: "CREATE TABLE t (stamp, status); INSERT INTO t VALUES ('yesterday', NULL)")
            let call = try SQLiteCall(db, sql: "SELECT stamp, status FROM t")
            #expect(try call.step())
            // `call` cannot be captured by `#expect(throws:)`'s closure (it is not copyable).
            do {
                _ = try call.timestamp(0)
                Issue.record("read 'yesterday' as a timestamp")
            } catch let error as DatabaseError {
                #expect(error.resultCode == .SQLITE_CORRUPT && error.message == "column stamp is not a timestamp")
            }
            do {
                _ = try call.required(call.text(1), 1)
                Issue.record("read NULL as a value")
            } catch let error as DatabaseError {
                #expect(error.message == "column status is NULL")
            }
        }
    }

    /// A failed step throws SQLite's error, and the statement can run again afterwards (it was reset).
    @Test func aFailedStepThrowsSQLitesErrorAndTheStatementRunsAgain() throws {
        let queue = try DatabaseQueue()
        try queue.write { db in
            try db.execute(sql: "CREATE TABLE t (k TEXT PRIMARY KEY)")
            for (key, fails) in [("a", false), ("a", true), ("b", false)] {
                let call = try SQLiteCall(db, sql: "INSERT INTO t VALUES (?)")
                try call.bind(key)
                do {
                    try call.run()
                    #expect(!fails, "a second 'a' was inserted")
                } catch let error as DatabaseError {
                    #expect(fails && error.resultCode.primaryResultCode == .SQLITE_CONSTRAINT)
                    #expect(error.message?.contains("UNIQUE") == true, "\(error)")
                }
            }
            #expect(try String.fetchAll(db, sql: "SELECT k FROM t ORDER BY k") == ["a", "b"])
        }
    }

    /// Through the store: a watermark whose row was damaged answers 503 `unavailable` saying which column, and a
    /// write to it changes nothing.
    @Test func theStoreAnswersUnavailableForADamagedRow() async throws {
        try await withTemporaryDirectory { folder in
            let store = try SQLiteWatermarkStore(path: folder + "/w.db", policy: WatermarkPolicy(), logger: .quiet)
            _ = try await store.write(
                WatermarkWrite(sourceID: sid("s"), update: .success(.at("2026-01-01T00:00:00Z"), records: 1)))
            try await store.writer.write { db in
                try db.execute(sql: "UPDATE watermark SET created_at = 'yesterday' WHERE source_id = 's'")
            }
            store.cache.forget(sid("s"))
            for attempt in ["read", "write"] {
                let error = await #expect(throws: WatermarkError.self, "\(attempt)") {
                    if attempt == "read" {
                        _ = try await store.watermark(for: sid("s"))
                    } else {
                        _ = try await store.write(
                            WatermarkWrite(
                                sourceID: sid("s"), update: .success(.at("2026-01-02T00:00:00Z"), records: 1)))
                    }
                }
                #expect(error?.statusCode == 503 && error?.code == "database_unavailable", "\(attempt)")
                #expect(error?.message.contains("column created_at is not a timestamp") == true, "\(attempt)")
            }
            let stored = try store.writer.read { db in
                try Row.fetchOne(db, sql: "SELECT version, created_at FROM watermark WHERE source_id = 's'")
            }
            let version: Int64? = stored?[0]
            let createdAt: String? = stored?[1]
            #expect(version == 1 && createdAt == "yesterday", "the refused write changed nothing")
            try store.close()
        }
    }
}
