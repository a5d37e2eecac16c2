import Foundation
import GRDB
import WatermarkCore

/// The SQLite schema and its fixed statements. All SQL of the service lives in this folder: the records of the
/// model are in `Records.swift`, the transaction the rules run in is `SQLiteTransaction`.
///
/// Timestamps are stored as `Timestamp.sortableString` (fixed-width, nine fraction digits), so text
/// comparison in SQL is time comparison and nothing is lost to floating point.
enum WatermarkDatabase {
    /// Migrations are append-only: a shipped migration is never edited, a change is a new one.
    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.create(table: "watermark") { t in
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
            try db.create(table: "watermark_run") { t in
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
            try db.create(table: "lease") { t in
                t.primaryKey("source_id", .text)
                t.column("owner", .text).notNull()
                t.column("fencing_token", .integer).notNull()
                t.column("expires_at", .text).notNull()
            }
            try db.create(table: "idempotency_key") { t in
                t.column("source_id", .text).notNull()
                t.column("key", .text).notNull()
                t.column("fingerprint", .text).notNull()
                t.column("created", .boolean).notNull()
                t.column("response", .text).notNull()
                t.column("recorded_at", .text).notNull()
                t.primaryKey(["source_id", "key"])
            }
            try db.create(
                index: "idempotency_key_age", on: "idempotency_key",
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
                index: "watermark_status", on: "watermark", columns: ["status", "source_id"])
            try db.create(
                index: "watermark_last_success", on: "watermark",
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
        migrator.registerMigration("v4-audit") { db in
            // The audit trail: who made each change (lease owner or token name) and why (X-Reason). Runs from
            // before have neither.
            try db.alter(table: "watermark_run") { t in
                t.add(column: "actor", .text)
                t.add(column: "reason", .text)
            }
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
