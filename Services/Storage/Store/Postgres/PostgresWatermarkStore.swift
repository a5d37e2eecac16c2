import Foundation
import Logging
import PostgresNIO
import PostgresSupport
import WatermarkCore
import WatermarkStores

/// The watermark store on PostgreSQL, for many stateless storage replicas on one database.
///
/// Every rule is held by the database, never in this process's memory: each write is one transaction that
/// first takes a transaction-scoped advisory lock on its source (so two replicas writing one source run one
/// after the other, also for a source that has no row yet), then reads the snapshot the rules need, applies
/// `WatermarkRules` and persists the plan. A 2xx is answered only after COMMIT returned. Serialization failures
/// and deadlocks are retried here, never surfaced as 500; a database that cannot be reached is 503 with the
/// cause, and the pool reconnects by itself when it is back. Nothing is cached: another replica may have
/// written since.
final class PostgresWatermarkStore: WatermarkStore {
    let client: PostgresClient
    let url: PostgresURL
    private let policy: WatermarkPolicy
    /// The instant the rules see: `nil` (the service) reads PostgreSQL's clock, after the source's lock, so that
    /// replicas whose own clocks differ agree on when a lease ends, on each write's `now` and on what is in the
    /// future; tests set their own.
    private let clock: (@Sendable () -> Timestamp)?
    private let logger: Logger
    /// Open once the migrations are applied (`PostgresDatabase`); tests open it themselves.
    let ready: ReadyGate
    /// The longest one operation may take, waiting for a connection included: beyond it the answer is 503.
    static let operationTimeout = Duration.seconds(5)

    init(
        client: PostgresClient, url: PostgresURL, policy: WatermarkPolicy, logger: Logger,
        clock: (@Sendable () -> Timestamp)? = nil, ready: ReadyGate = ReadyGate()
    ) {
        self.ready = ready
        self.client = client
        self.url = url
        self.policy = policy
        self.logger = logger
        self.clock = clock
    }

    // MARK: WatermarkStore

    func watermark(for sourceID: SourceID) async throws -> Watermark? {
        try await mappingErrors { [self] connection in
            try await PostgresTransaction(connection: connection, logger: logger).watermark(sourceID)
        }
    }

    func write(_ write: WatermarkWrite) async throws -> WriteOutcome {
        try await transact(locking: write.sourceID) { tx, now in
            let snapshot = try await tx.snapshot(write.sourceID, idempotencyKey: write.idempotencyKey)
            let plan = try WatermarkRules.apply(write, to: snapshot, now: now, policy: self.policy)
            try await tx.persist(plan)
            return plan.outcome
        }
    }

    func delete(
        _ sourceID: SourceID, precondition: WritePrecondition?, leaseToken: Int64?, attribution: Attribution
    ) async throws {
        try await transact(locking: sourceID) { tx, now in
            let snapshot = try await tx.snapshot(sourceID, idempotencyKey: nil)
            try await tx.persist(
                try WatermarkRules.delete(
                    sourceID, precondition: precondition, leaseToken: leaseToken, attribution: attribution,
                    to: snapshot, now: now, policy: self.policy))
        }
    }

    func list(_ query: WatermarkQuery) async throws -> WatermarkPage {
        // Staleness is counted in hours: this process's clock is close enough.
        let now = clock?() ?? Timestamp.now()
        let cutoff = query.staleAfter.map { WatermarkRules.staleCutoff(now: now, staleAfter: $0).sortableString }
        let rows = try await mappingErrors { [self] connection in
            try await PostgresTransaction(connection: connection, logger: logger).list(
                after: query.after, status: query.status, staleBefore: cutoff, limit: query.limit + 1)
        }
        return WatermarkPage(rows: rows, limit: query.limit)
    }

    /// The source's runs, newest first; a reset source answers them too (the newest is the reset).
    func history(for sourceID: SourceID, limit: Int) async throws -> [WatermarkRun] {
        let runs = try await mappingErrors { [self] connection in
            try await PostgresTransaction(connection: connection, logger: logger).history(sourceID, limit: limit)
        }
        if runs.isEmpty { throw WatermarkError.watermarkNotFound(sourceID) }
        return runs
    }

    func lease(for sourceID: SourceID) async throws -> Lease? {
        let (lease, now) = try await mappingErrors { [self] connection in
            let tx = PostgresTransaction(connection: connection, logger: logger)
            let lease = try await tx.lease(sourceID)
            if let clock = self.clock { return (lease, clock()) }
            return (lease, try await tx.databaseNow())
        }
        return lease.flatMap { $0.isLive(at: now) ? $0 : nil }
    }

    func acquireLease(for sourceID: SourceID, owner: String, ttl: Duration) async throws -> Lease {
        try await transact(locking: sourceID) { tx, now in
            let snapshot = try await tx.snapshot(sourceID, idempotencyKey: nil)
            let lease = try WatermarkRules.acquireLease(
                sourceID, owner: owner, ttl: ttl, to: snapshot, now: now, policy: self.policy)
            try await tx.save(lease)
            return lease
        }
    }

    func releaseLease(for sourceID: SourceID, token: Int64?) async throws {
        try await transact(locking: sourceID) { tx, now in
            let snapshot = try await tx.snapshot(sourceID, idempotencyKey: nil)
            if let ended = try WatermarkRules.releaseLease(sourceID, token: token, to: snapshot, now: now) {
                try await tx.save(ended)
            }
        }
    }

    func summary() async throws -> WatermarkSummary {
        let cutoff = WatermarkRules.staleCutoff(now: clock?() ?? Timestamp.now(), staleAfter: policy.staleAfter)
            .sortableString
        return try await mappingErrors { [self] connection in
            // The counts of migration v2-counts, kept by its trigger: a few rows and one index range within an
            // hour, whatever the number of watermarks.
            let hour = String(cutoff.prefix(13))
            let rows = try await connection.query(
                """
                SELECT (SELECT COALESCE(SUM(total), 0) FROM watermark_count)::BIGINT,
                       (SELECT COALESCE(SUM(failed), 0) FROM watermark_count)::BIGINT,
                       ((SELECT COALESCE(SUM(sources), 0) FROM success_hour WHERE hour < \(hour))
                        + (SELECT COUNT(*) FROM watermark
                           WHERE last_successful_timestamp >= \(hour) AND last_successful_timestamp < \(cutoff)))::BIGINT
                """, logger: logger)
            for try await (total, failed, stale) in rows.decode((Int, Int, Int).self) {
                return WatermarkSummary(total: total, failed: failed, stale: stale)
            }
            return WatermarkSummary(total: 0, failed: 0, stale: 0)
        }
    }

    /// The table answers a read, and the session may write: a standby that a failover left behind, or a database
    /// set `default_transaction_read_only`, answered every write with 503 while this said healthy (the SQLite store
    /// proves a write only after a failed one; here the setting says it without writing).
    func checkHealth() async throws {
        // Still connecting or migrating (up to the start's 15 s): unhealthy now, not after the probe gave up waiting.
        guard ready.isOpen else {
            throw WatermarkError.unavailable(
                ready.failed
                    ? "PostgreSQL at \(url.host):\(url.port) could not be prepared at start: the service is stopping"
                    : "PostgreSQL at \(url.host):\(url.port) is not ready: the service is still connecting to it and "
                        + "applying its migrations")
        }
        try await mappingErrors { [self] connection in
            let rows = try await connection.query(
                "SELECT current_setting('transaction_read_only'), EXISTS (SELECT 1 FROM watermark LIMIT 1)",
                logger: logger)
            for try await (readOnly, _) in rows.decode((String, Bool).self) where readOnly == "on" {
                throw WatermarkError.unavailable(
                    "PostgreSQL at \(url.host):\(url.port) takes no writes (transaction_read_only is on: a standby, "
                        + "or default_transaction_read_only)")
            }
        }
    }

    func info() async throws -> StoreInfo {
        try await mappingErrors { [self] connection in
            let rows = try await connection.query(
                """
                SELECT pg_database_size(current_database()), current_setting('server_version'),
                       current_setting('synchronous_commit')
                """, logger: logger)
            for try await (size, version, synchronous) in rows.decode((Int64, String, String).self) {
                return StoreInfo(
                    backend: "postgres", path: url.redacted, sizeBytes: size,
                    details: ["journal_mode": "wal", "server_version": version, "synchronous_commit": synchronous])
            }
            return StoreInfo(backend: "postgres", path: url.redacted, sizeBytes: 0, details: ["journal_mode": "wal"])
        }
    }

    // MARK: Plumbing

    /// How often a write that lost a serialization race or a deadlock is run again before it is a 503.
    static let maxAttempts = 8

    /// Runs `body` in one transaction that holds `sourceID`'s advisory lock, with the clock (PostgreSQL's, unless a
    /// test set one) read after the lock, so the `now` of two writes to a source follows their commit order.
    private func transact<T: Sendable>(
        locking sourceID: SourceID,
        _ body: @escaping @Sendable (PostgresTransaction, Timestamp) async throws -> T
    ) async throws -> T {
        var attempt = 1
        while true {
            do {
                return try await withDeadline(Self.operationTimeout, onTimeout: timedOut) { gate in
                    // Within the deadline: during the start (up to 15 s) an operation is 503 after 5 s, as others are.
                    try await self.ready.wait()
                    // Closed should the deadline pass in any of its statements, BEGIN and COMMIT included.
                    return try await self.client.withConnection { connection in
                        try await gate.transaction(connection, logger: self.logger) { closed in
                            let tx = PostgresTransaction(connection: connection, logger: self.logger, closed: closed)
                            let now: Timestamp
                            if let clock = self.clock {
                                try await tx.lock(sourceID)
                                now = clock()
                            } else {
                                now = try await tx.lockReadingClock(sourceID)
                            }
                            let result = try await body(tx, now)
                            // Answered 503 meanwhile, the transaction rolls back instead of committing after it.
                            try gate.enterCommit()
                            return result
                        }
                    }
                }
            } catch {
                let underlying = PostgresFailure.underlying(error)
                if attempt < Self.maxAttempts, PostgresFailure.isRetryable(underlying) {
                    logger.debug(
                        "Transaction retried", metadata: ["source_id": "\(sourceID)", "attempt": "\(attempt)"])
                    attempt += 1
                    try await Task.sleep(for: .milliseconds(Int64.random(in: 1...(5 * Int64(attempt)))))
                    continue
                }
                throw mapped(underlying)
            }
        }
    }

    /// Runs `body` on a connection of the pool within the operation's deadline, the connection closed should the
    /// deadline pass (see `withDeadline`), its errors mapped.
    private func mappingErrors<T: Sendable>(
        _ body: @escaping @Sendable (PostgresConnection) async throws -> T
    ) async throws -> T {
        do {
            return try await withDeadline(Self.operationTimeout, onTimeout: timedOut) { [client, ready] gate in
                try await ready.wait()
                return try await client.withConnection { connection in
                    try await gate.closing(connection) { _ in try await body(connection) }
                }
            }
        } catch {
            throw mapped(PostgresFailure.underlying(error))
        }
    }

    private var timedOut: @Sendable () -> any Error {
        { [url] in
            WatermarkError.unavailable(
                "PostgreSQL at \(url.host):\(url.port) did not answer within \(PostgresWatermarkStore.operationTimeout)"
            )
        }
    }

    /// Rule refusals pass through; database failures become 503 naming the cause (never the password).
    private func mapped(_ error: any Error) -> any Error {
        if error is WatermarkError || error is CancellationError { return error }
        let detail = PostgresFailure.describe(error, url: url)
        logger.error("Database operation failed", metadata: ["error": "\(detail)"])
        return WatermarkError.unavailable(detail)
    }
}
