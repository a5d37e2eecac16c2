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
    static let migrations = PostgresMigrations(ledger: "schema_migrations", lock: migrationLock, list: [
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
        )
    ])

    /// Applies the migrations not applied yet; returns the names it applied.
    @discardableResult
    static func migrate(_ client: PostgresClient, logger: Logger) async throws -> [String] {
        try await migrations.apply(client, logger: logger)
    }
}
