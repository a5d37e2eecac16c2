import Logging
import PostgresNIO
import ServiceLifecycle
import WatermarkCore

/// PostgreSQL as a service of the app's `ServiceGroup`: runs the client's connection pool, applies the
/// migrations at start (refusing to go on, so the process exits, when the database cannot be reached or
/// used within `startTimeout`), and stops the pool at graceful shutdown, after the server stopped.
///
/// Requests that arrive before the migrations are applied wait for them (`ReadyGate`), so the first answers
/// are right, not 503s of tables that are not there yet.
struct PostgresDatabaseService: Service {
    let store: PostgresWatermarkStore
    private let client: PostgresClient
    private let url: PostgresURL
    private let logger: Logger
    private let startTimeout: Duration

    init(url: PostgresURL, policy: WatermarkPolicy, logger: Logger, startTimeout: Duration = .seconds(15)) {
        var configuration = url.clientConfiguration
        configuration.options.maximumConnections = 20
        client = PostgresClient(configuration: configuration, backgroundLogger: logger)
        store = PostgresWatermarkStore(client: client, url: url, policy: policy, logger: logger)
        self.url = url
        self.logger = logger
        self.startTimeout = startTimeout
    }

    /// The database could not be used at start; the message says why, without the password.
    struct StartError: Error, CustomStringConvertible {
        let description: String
    }

    func run() async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await client.run() }
            do {
                try await migrate()
            } catch {
                store.ready.fail(error)
                throw error
            }
            store.ready.open()
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
            applied = try await withDeadline(startTimeout, onTimeout: unreachable) { [client, logger] in
                try await PostgresSchema.migrate(client, logger: logger)
            }
        } catch let error as StartError {
            throw error
        } catch {
            let detail = PostgresWatermarkStore.describe(PostgresWatermarkStore.underlying(error), url: url)
            throw StartError(description: "cannot use the database \(url.redacted): \(detail)")
        }
        logger.info(
            "Database ready",
            metadata: [
                "database": "\(url.redacted)", "migrations_applied": "\(applied.joined(separator: ","))",
                "ms": "\((ContinuousClock.now - started).milliseconds)",
            ])
    }

    private var unreachable: @Sendable () -> any Error {
        { [url, startTimeout] in
            StartError(
                description: "cannot reach the database \(url.redacted) within \(startTimeout) (is PostgreSQL up, "
                    + "and DATABASE_URL's host, port, user and password right?)")
        }
    }
}

extension PostgresDatabaseService: CustomStringConvertible {
    /// How the service lifecycle names it in its logs: the database, without the password.
    var description: String { "PostgresDatabaseService(\(url.redacted))" }
}
