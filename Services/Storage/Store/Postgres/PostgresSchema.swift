import Logging
import PostgresNIO
import PostgresSupport

/// The PostgreSQL schema: the same tables and indexes as SQLite's, timestamps as the same fixed-width sortable
/// text (nanoseconds round-trip exactly, and text order is time order), and every text key in the "C"
/// collation so ordering (keyset paging, time ranges) is by bytes, as in SQLite, whatever the database's
/// locale.
///
/// Migrations are versioned and append-only. They run in one transaction under a transaction-scoped advisory
/// lock, so replicas starting at the same moment apply each one once: the first takes the lock and migrates,
/// the others wait for it and then find nothing left to do.
enum PostgresSchema {
    /// The key of the advisory lock that serialises migrations (any fixed number unlikely to collide).
    static let migrationLock: Int64 = 0x5741_5445_524D_4B31

    /// The migrations, oldest first, recorded in `schema_migrations`. A shipped migration is never edited.
    static let migrations = PostgresMigrations(
        ledger: "schema_migrations", lock: migrationLock,
        list: [
            (
                "v1",
                [
                    """
                    CREATE TABLE watermark (
                        source_id TEXT COLLATE "C" PRIMARY KEY,
                        last_successful_timestamp TEXT COLLATE "C",
                        last_run_timestamp TEXT NOT NULL,
                        status TEXT NOT NULL,
                        records_collected BIGINT NOT NULL,
                        error_message TEXT,
                        version BIGINT NOT NULL,
                        consecutive_failures BIGINT NOT NULL,
                        created_at TEXT NOT NULL
                    )
                    """,
                    """
                    CREATE TABLE watermark_run (
                        source_id TEXT COLLATE "C" NOT NULL,
                        version BIGINT NOT NULL,
                        recorded_at TEXT NOT NULL,
                        status TEXT NOT NULL,
                        "timestamp" TEXT,
                        last_successful_timestamp TEXT,
                        records_collected BIGINT NOT NULL,
                        error_message TEXT,
                        PRIMARY KEY (source_id, version)
                    )
                    """,
                    """
                    CREATE TABLE lease (
                        source_id TEXT COLLATE "C" PRIMARY KEY,
                        owner TEXT NOT NULL,
                        fencing_token BIGINT NOT NULL,
                        expires_at TEXT COLLATE "C" NOT NULL
                    )
                    """,
                    """
                    CREATE TABLE idempotency_key (
                        source_id TEXT COLLATE "C" NOT NULL,
                        key TEXT NOT NULL,
                        fingerprint TEXT NOT NULL,
                        created BOOLEAN NOT NULL,
                        response TEXT NOT NULL,
                        recorded_at TEXT COLLATE "C" NOT NULL,
                        PRIMARY KEY (source_id, key)
                    )
                    """,
                    "CREATE INDEX idempotency_key_age ON idempotency_key (source_id, recorded_at)",
                    "CREATE INDEX watermark_status ON watermark (status, source_id)",
                    "CREATE INDEX watermark_last_success ON watermark (last_successful_timestamp)",
                ]
            ),
            (
                // `/status` and `/metrics` read these counts on every scrape, as SQLite's do: kept by a trigger in the
                // write's own transaction, so a scrape costs a few rows whatever the number of watermarks (counting the
                // table was 11 scrapes a second at a million). The stale count's cutoff moves with the clock, so the
                // trigger keeps how many sources last succeeded in each hour ('' for never) and a scrape adds the
                // hours before the cutoff's to an index range within that hour. Each count is split over 16 buckets
                // by source id, so that replicas writing different sources seldom wait for the same counter row; the
                // trigger runs only when a row comes, goes, or changes status or hour of last success.
                "v2-counts",
                [
                    """
                    CREATE TABLE watermark_count (
                        bucket INTEGER PRIMARY KEY, total BIGINT NOT NULL, failed BIGINT NOT NULL
                    )
                    """,
                    countSources,
                    """
                    CREATE TABLE success_hour (
                        hour TEXT COLLATE "C" NOT NULL, bucket INTEGER NOT NULL, sources BIGINT NOT NULL,
                        PRIMARY KEY (hour, bucket)
                    )
                    """,
                    countSuccessHours,
                    countsFunction(replacing: false, pruning: false),
                    """
                    CREATE TRIGGER watermark_counts_change AFTER INSERT OR DELETE ON watermark
                    FOR EACH ROW EXECUTE FUNCTION watermark_counts()
                    """,
                    """
                    CREATE TRIGGER watermark_counts_update AFTER UPDATE ON watermark FOR EACH ROW
                    WHEN (OLD.status IS DISTINCT FROM NEW.status
                          OR substr(OLD.last_successful_timestamp, 1, 13) IS DISTINCT FROM
                             substr(NEW.last_successful_timestamp, 1, 13))
                    EXECUTE FUNCTION watermark_counts()
                    """,
                ]
            ),
            (
                // The audit trail: who made each change (lease owner or token name) and why (X-Reason).
                "v3-audit",
                ["ALTER TABLE watermark_run ADD COLUMN actor TEXT, ADD COLUMN reason TEXT"]
            ),
            (
                // v2 counted the rows before its triggers existed, and nothing held writers off meanwhile: a write
                // committed by a replica of the version before (a rolling upgrade) between the count and the
                // trigger's creation was never counted, and the counts stayed off by it for good. The counts are
                // taken again with the table locked against writes (SHARE ROW EXCLUSIVE: writers wait, readers do
                // not) and the triggers in place, so no write falls between them. Waiting for that lock at most
                // 5 s: queued behind a long transaction or a VACUUM, it held every writer of every replica behind it
                // for as long (the start then fails, and is retried by the restart).
                "v4-recount",
                [
                    "SET LOCAL lock_timeout = '5s'",
                    "LOCK TABLE watermark IN SHARE ROW EXCLUSIVE MODE",
                    // Back to waiting as long as it takes for what follows (`apply` bounds each later migration's
                    // waits again).
                    "SET LOCAL lock_timeout = 0",
                    "DELETE FROM watermark_count",
                    countSources,
                    "DELETE FROM success_hour",
                    countSuccessHours,
                ]
            ),
            (
                // success_hour kept a row for every hour (and bucket) a source last succeeded in, also once no source
                // was left in it: one more row for each hour a success landed in, which every scrape of every replica
                // summed (SQLite's trigger deletes such a row). The trigger now deletes the row it empties; the writes
                // to one bucket wait for each other on its watermark_count row, which the trigger updates first.
                "v5-success-hour-prune",
                [
                    countsFunction(replacing: true, pruning: true),
                    "DELETE FROM success_hour WHERE sources = 0",
                ]
            ),
        ])

    /// The trigger function that keeps the counts: v2's (its statements as shipped), and v5's, which also deletes the
    /// success_hour row it took the last source from. One text, so that the two cannot drift apart.
    private static func countsFunction(replacing: Bool, pruning: Bool) -> PostgresQuery {
        let prune =
            pruning
            ? """

                        DELETE FROM success_hour
                        WHERE hour = COALESCE(substr(OLD.last_successful_timestamp, 1, 13), '')
                          AND bucket = hashtext(OLD.source_id) & 15 AND sources = 0;
            """ : ""
        let create = replacing ? "CREATE OR REPLACE" : "CREATE"
        return PostgresQuery(
            unsafeSQL: """
                \(create) FUNCTION watermark_counts() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF TG_OP IN ('UPDATE', 'DELETE') THEN
                        UPDATE watermark_count
                        SET total = total - 1, failed = failed - (OLD.status = 'failed')::int
                        WHERE bucket = hashtext(OLD.source_id) & 15;
                        UPDATE success_hour SET sources = sources - 1
                        WHERE hour = COALESCE(substr(OLD.last_successful_timestamp, 1, 13), '')
                          AND bucket = hashtext(OLD.source_id) & 15;\(prune)
                    END IF;
                    IF TG_OP IN ('INSERT', 'UPDATE') THEN
                        UPDATE watermark_count
                        SET total = total + 1, failed = failed + (NEW.status = 'failed')::int
                        WHERE bucket = hashtext(NEW.source_id) & 15;
                        INSERT INTO success_hour (hour, bucket, sources)
                        VALUES (COALESCE(substr(NEW.last_successful_timestamp, 1, 13), ''),
                                hashtext(NEW.source_id) & 15, 1)
                        ON CONFLICT (hour, bucket) DO UPDATE SET sources = success_hour.sources + 1;
                    END IF;
                    RETURN NULL;
                END
                $$
                """)
    }

    /// The sources of each of the 16 buckets, in all and failed, from the rows (v2, and again in v4).
    private static let countSources: PostgresQuery = """
        INSERT INTO watermark_count (bucket, total, failed)
        SELECT b, COUNT(w.source_id), COUNT(w.source_id) FILTER (WHERE w.status = 'failed')
        FROM generate_series(0, 15) AS b
        LEFT JOIN watermark w ON (hashtext(w.source_id) & 15) = b
        GROUP BY b
        """

    /// The sources that last succeeded in each hour, per bucket, from the rows (v2, and again in v4).
    private static let countSuccessHours: PostgresQuery = """
        INSERT INTO success_hour (hour, bucket, sources)
        SELECT COALESCE(substr(last_successful_timestamp, 1, 13), ''), hashtext(source_id) & 15, COUNT(*)
        FROM watermark GROUP BY 1, 2
        """

    /// Applies the migrations not applied yet; returns the names it applied.
    @discardableResult
    static func migrate(_ client: PostgresClient, logger: Logger) async throws -> [String] {
        try await migrations.apply(client, logger: logger)
    }
}
