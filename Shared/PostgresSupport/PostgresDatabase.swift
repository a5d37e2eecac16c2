import Logging
import PostgresNIO
import ServiceLifecycle
import Synchronization
import WatermarkCore

/// Versioned, append-only migrations of one schema, recorded in their own ledger table and applied under their
/// own transaction-scoped advisory lock: processes starting at the same moment apply each one once (the first
/// takes the lock and migrates, the others wait and find nothing left to do), and two schemas can share a
/// database without mistaking each other's migrations.
package struct PostgresMigrations: Sendable {
    package var ledger: String
    package var lock: Int64
    /// Name and statements of each migration, oldest first. A shipped migration is never edited.
    package var list: [(name: String, statements: [PostgresQuery])]

    package init(ledger: String, lock: Int64, list: [(name: String, statements: [PostgresQuery])]) {
        self.ledger = ledger
        self.lock = lock
        self.list = list
    }

    /// Applies the migrations not applied yet, in one transaction; returns the names it applied.
    @discardableResult
    package func apply(_ client: PostgresClient, logger: Logger) async throws -> [String] {
        try await client.withTransaction(logger: logger) { connection in
            // A replica waits for another's migrations however long they take, and a slow start between two
            // statements is not a frozen client: neither is bound by the session's timeouts (`sessionTimeout`). The
            // migrations' own statements are bound below.
            try await connection.query("SET LOCAL lock_timeout = 0", logger: logger)
            try await connection.query("SET LOCAL idle_in_transaction_session_timeout = 0", logger: logger)
            try await connection.query("SELECT pg_advisory_xact_lock(\(lock))", logger: logger)
            try await connection.query(
                "CREATE TABLE IF NOT EXISTS \(unescaped: ledger) (name TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)",
                logger: logger)
            var applied = Set<String>()
            for try await name in try await connection.query("SELECT name FROM \(unescaped: ledger)", logger: logger)
                .decode(String.self)
            {
                applied.insert(name)
            }
            var done: [String] = []
            for migration in list where !applied.contains(migration.name) {
                // A migration's lock on a table waits 5 s at most: queued behind a long transaction (a nightly
                // pg_dump, a report), its ACCESS EXCLUSIVE request held every write and read of that table on every
                // replica behind it for as long. The start then fails and is tried again by the restart.
                try await connection.query("SET LOCAL lock_timeout = '5s'", logger: logger)
                for statement in migration.statements { try await connection.query(statement, logger: logger) }
                try await connection.query(
                    "INSERT INTO \(unescaped: ledger) (name, applied_at) VALUES (\(migration.name), now())",
                    logger: logger)
                done.append(migration.name)
            }
            return done
        }
    }
}

/// A PostgreSQL database as a service of the app's `ServiceGroup`: runs the client's connection pool, applies
/// the migrations at start (refusing to go on, so the process exits, when the database cannot be reached or
/// used within `startTimeout`), and stops the pool at graceful shutdown, after the services that use it.
///
/// Work that arrives before the migrations are applied waits for them (`ready`), so the first answers are
/// right, not errors of tables that are not there yet.
package struct PostgresDatabase: Service, CustomStringConvertible {
    package let client: PostgresClient
    package let url: PostgresURL
    package let ready: ReadyGate
    private let migrations: PostgresMigrations
    private let logger: Logger
    private let startTimeout: Duration

    /// - Parameter sessionTimeout: how long a statement of this process may wait for a lock, and a transaction of
    ///   its sit idle, before PostgreSQL ends it: a little over the callers' own deadline. A caller that gives up
    ///   only cancels its task; postgres-nio does not cancel the query on the server, which went on waiting (or
    ///   held its locks, its client frozen) with the pool's connection, until one stuck lock had parked every
    ///   connection of every replica.
    package init(
        url: PostgresURL, migrations: PostgresMigrations, maximumConnections: Int, sessionTimeout: Duration,
        logger: Logger, ready: ReadyGate = ReadyGate(), startTimeout: Duration = .seconds(15)
    ) {
        client = PostgresClient(
            configuration: Self.clientConfiguration(
                url: url, maximumConnections: maximumConnections, sessionTimeout: sessionTimeout),
            backgroundLogger: logger)
        self.url = url
        self.ready = ready
        self.migrations = migrations
        self.logger = logger
        self.startTimeout = startTimeout
    }

    /// How long a connection stays open in the pool unused before the pool closes it.
    package static let idleConnectionTimeout = Duration.seconds(10)

    /// The client of `url` with a pool of up to `maximumConnections`, opened on demand, closed after
    /// `idleConnectionTimeout` unused, and no keep-alive.
    ///
    /// postgres-nio 1.33's pool starts a timer each time a connection comes back to it unused: a keep-alive (30 s by
    /// default) and an idle timeout (60 s). The next request cancels them, but a cancelled `Task.sleep` is only freed
    /// at the end of the sleep it was asked for (swiftlang/swift#60441), with the tasks that wait for it. So under a
    /// steady load of fewer concurrent requests than connections, every request left about 1 KiB behind for a minute:
    /// `GET`s at one connection grew the storage service's RSS from 66 to 135 MiB in 30 s (2.0k req/s), at eight
    /// connections from 98 to 276 MiB (5.0k req/s), still growing. Without the keep-alive and with a 10 s idle timeout:
    /// 67 MiB from the tenth second on at one connection; at eight, 108 MiB after 10 s and 125 after a minute; and the
    /// requests are no slower (2.1k and 5.2k req/s; p50 0.456 and 1.48 ms against 0.490 and 1.54). The keep-alive is
    /// not needed: a connection PostgreSQL closes (a restart, `pg_terminate_backend`) leaves the pool when it is
    /// closed, and one unused for 10 s is closed before a firewall or NAT would forget it. The timeout is twice the
    /// readiness probe's period (5 s, `deploy/k8s`), so probes of an idle replica reuse one connection; 5 s kept less
    /// (60 and 89 MiB) but made a load after a pause of 5 s open its connections again (`make bench`: `GET /health` p99
    /// 0.82 s on two replicas after the hello world's 4 s). Opening the whole pool at start instead (minimum = maximum,
    /// no timer at all) left a replica that never recovered from a PostgreSQL restart (README, ninth and tenth rounds).
    package static func clientConfiguration(
        url: PostgresURL, maximumConnections: Int, sessionTimeout: Duration
    ) -> PostgresClient.Configuration {
        var configuration = url.clientConfiguration
        configuration.options.maximumConnections = maximumConnections
        configuration.options.keepAliveBehavior = nil
        configuration.options.connectionIdleTimeout = idleConnectionTimeout
        let milliseconds = String(max(1, sessionTimeout.milliseconds))
        configuration.options.additionalStartupParameters += [
            ("lock_timeout", milliseconds), ("idle_in_transaction_session_timeout", milliseconds),
            // A commit answered before its WAL is flushed (`off`, a common tuning of a role or a database) is lost
            // with a crash of the server, after the service acknowledged the write, or the sink let the watermark
            // move past its records. The sessions' own parameter outranks the role's and the database's (so
            // `remote_apply` is lowered to `on` too: a commit still waits for synchronous standbys to flush it, not
            // to apply it, which only matters to reads from a standby, and the services read from the primary).
            ("synchronous_commit", "on"),
        ]
        return configuration
    }

    /// How the service lifecycle names it in its logs: the database, without the password.
    package var description: String { "PostgresDatabase(\(url.redacted))" }

    /// The database could not be used at start; the message says why, without the password.
    package struct StartError: Error, CustomStringConvertible {
        package let description: String
    }

    package func run() async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await client.run() }
            do {
                try await migrate()
            } catch {
                ready.fail(error)
                throw error
            }
            ready.open()
            // Until shutdown, or cancellation when another service failed: the pool stops either way.
            try? await gracefulShutdown()
            group.cancelAll()
        }
        logger.info("Database closed", metadata: ["database": "\(url.redacted)"])
    }

    private func migrate() async throws {
        let started = ContinuousClock.now
        let applied: [String]
        do {
            applied = try await withDeadline(startTimeout, onTimeout: unreachable) {
                [client, logger, migrations, url] in
                try await Self.checkEncoding(client, url: url, logger: logger)
                return try await migrations.apply(client, logger: logger)
            }
        } catch let error as StartError {
            throw error
        } catch {
            let detail = PostgresFailure.describe(PostgresFailure.underlying(error), url: url)
            throw StartError(description: "cannot use the database \(url.redacted): \(detail)")
        }
        logger.info(
            "Database ready",
            metadata: [
                "database": "\(url.redacted)", "migrations_applied": "\(applied.joined(separator: ","))",
                "ms": "\((ContinuousClock.now - started).milliseconds)",
            ])
    }

    /// Refuses a database that cannot store every text the services are given: created with a single-byte encoding
    /// (LATIN1, WIN1252...), it answered an update whose error message or reason held a character outside it
    /// (from a feed's text, say) with 503 for ever, where SQLite stores it, and the collectors' failed runs were
    /// never recorded. UTF8 stores any text; SQL_ASCII stores the bytes as they come.
    private static func checkEncoding(_ client: PostgresClient, url: PostgresURL, logger: Logger) async throws {
        let rows = try await client.query("SHOW server_encoding", logger: logger)
        var encoding = ""
        for try await value in rows.decode(String.self) { encoding = value }
        guard encoding == "UTF8" || encoding == "SQL_ASCII" else {
            throw StartError(
                description: "the database \(url.redacted) stores text as \(encoding), which cannot hold every "
                    + "character of the data: use a database created with ENCODING 'UTF8'")
        }
    }

    private var unreachable: @Sendable () -> any Error {
        { [url, startTimeout] in
            StartError(
                description: "cannot reach the database \(url.redacted) within \(startTimeout) (is PostgreSQL up, "
                    + "and \(url.key)'s host, port, user and password right?)")
        }
    }
}

/// What postgres-nio's errors mean to the services.
package enum PostgresFailure {
    /// The error a transaction's closure (or its BEGIN or COMMIT) threw, out of postgres-nio's wrapper.
    package static func underlying(_ error: any Error) -> any Error {
        guard let transaction = error as? PostgresTransactionError else { return error }
        return transaction.closureError ?? transaction.commitError ?? transaction.beginError ?? error
    }

    /// 40001 (serialization failure) and 40P01 (deadlock): the transaction may simply run again.
    package static func isRetryable(_ error: any Error) -> Bool {
        guard let error = error as? PSQLError, let state = error.serverInfo?[.sqlState] else { return false }
        return state == "40001" || state == "40P01"
    }

    /// What went wrong, from PostgreSQL's own message where there is one; PSQLError's description is generic
    /// on purpose, and its debug description may hold the query.
    package static func describe(_ error: any Error, url: PostgresURL) -> String {
        guard let error = error as? PSQLError else { return "PostgreSQL at \(url.host):\(url.port): \(error)" }
        if let info = error.serverInfo {
            return "PostgreSQL \(info[.sqlState] ?? "?"): \(info[.message] ?? "error")"
        }
        switch error.code {
        case .connectionError, .serverClosedConnection, .clientClosedConnection, .uncleanShutdown, .poolClosed:
            return "PostgreSQL at \(url.host):\(url.port) cannot be reached (\(error.code))"
        default:
            return "PostgreSQL at \(url.host):\(url.port): \(error.code)"
        }
    }
}

extension DeadlineGate {
    /// Runs `body` on `connection`, which is closed should the deadline pass first (`onExpiry`): a connection whose
    /// server vanished without a reset (a failover that takes the primary's address away) is never answered, and the
    /// pool gives its slot back only once it is closed; TCP notices after about 15 minutes, and until then every
    /// request of a replica with a full pool waited for a slot and was answered 503.
    ///
    /// The deadline's caller is answered, and `body`'s outcome passed on, only once the connection has finished
    /// closing, which the pool sees first (it asked to be told before). Answered before, the caller's next request
    /// waited in the pool's queue for the slot, and the pool, told of the close, did not open a connection for it;
    /// handed back before, the connection went back to the pool as idle, was lent again, and the next query on it
    /// was never answered (postgres-nio 1.33 sends it without a promise for the write, which a closed channel drops).
    /// Once this returns, the deadline no longer touches the connection (another request may have it by then).
    package func closing<T>(
        _ connection: PostgresConnection, _ body: (_ closed: @escaping @Sendable () -> Bool) async throws -> T
    ) async throws -> T {
        let use = Mutex(ConnectionUse.inUse)
        onExpiry {
            let close = use.withLock { use in
                guard use == .inUse else { return false }
                use = .closing
                return true
            }
            return close ? connection.close() as EventLoopFuture<Void> : nil
        }
        let closed: @Sendable () -> Bool = { use.withLock { $0 } == .closing }
        func finish() async {
            let closing = use.withLock { use in
                defer { use = .done }
                return use == .closing
            }
            if closing { try? await connection.closeFuture.get() }
        }
        do {
            let value = try await body(closed)
            await finish()
            return value
        } catch {
            await finish()
            throw error
        }
    }

    /// A transaction on `connection` under `closing`: BEGIN, `body`, COMMIT, or ROLLBACK when `body` throws, unless
    /// the connection is closed (by the deadline, or by the server): postgres-nio's `withTransaction` sent its ROLLBACK
    /// on the closed connection, which was never answered, and its task waited for ever.
    package func transaction<T>(
        _ connection: PostgresConnection, logger: Logger,
        _ body: (_ closed: @escaping @Sendable () -> Bool) async throws -> T
    ) async throws -> T {
        try await closing(connection) { closed in
            try await connection.query("BEGIN", logger: logger)
            let value: T
            do {
                value = try await body(closed)
            } catch {
                if !closed(), !connection.isClosed { try? await connection.query("ROLLBACK", logger: logger) }
                throw error
            }
            // Closed by the deadline meanwhile: a COMMIT sent now would never be answered (the body checks `closed`
            // before each of its statements too).
            if closed() { throw CancellationError() }
            // A COMMIT that fails has ended the transaction: nothing to roll back.
            try await connection.query("COMMIT", logger: logger)
            return value
        }
    }
}

/// Where `DeadlineGate.closing` stands with its connection.
private enum ConnectionUse { case inUse, closing, done }
