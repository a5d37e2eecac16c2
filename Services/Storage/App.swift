import ArgumentParser
import Foundation
import Hummingbird
import Logging
import NIOCore
import NIOHTTP1
import NIOSSL
import PostgresSupport
import ServiceLifecycle
import ServiceSupport
import WatermarkCore
import WatermarkStores

/// The process's entry: the malloc arenas are limited before any thread but this one allocates.
@main
enum StorageServiceMain {
    static func main() async {
        MallocArenas.limitToCores()
        await StorageServiceCommand.main()
    }
}

/// `storage-service`: serves watermarks over HTTP from a SQLite file (`serve`, the default), checks a running
/// instance for container health checks (`healthcheck`), fills a database for load tests (`seed`), or prints
/// the OpenAPI document it serves (`openapi`).
struct StorageServiceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "storage-service",
        abstract: "Keeps, per data source, the instant up to which data was collected.",
        subcommands: [Serve.self, HealthCheck.self, Seed.self, PrintOpenAPI.self],
        defaultSubcommand: Serve.self
    )
}

/// Runs the service until SIGTERM or SIGINT, then stops accepting, finishes in-flight requests,
/// closes the database and exits 0.
struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve the watermark API. Every flag overrides the environment variable of the same name."
    )

    @Option(help: "PORT: TCP port (default 8000; 0 picks a free one).") var port: String?
    @Option(help: "HOST: address to bind (default 0.0.0.0).") var host: String?
    @Option(help: "DATABASE_PATH: SQLite file (default data/watermarks.db).") var databasePath: String?
    @Option(help: "STORAGE_API_TOKEN: bearer token (prefer the environment: flags show in ps).") var apiToken: String?
    @Option(help: "STORAGE_READ_TOKEN: read-only bearer token.") var readToken: String?
    @Option(help: "LOG_LEVEL: trace, debug, info, notice, warning, error, critical.") var logLevel: String?
    @Option(help: "ENVIRONMENT: development or production.") var environment: String?
    @Option(help: "FUTURE_TOLERANCE_SECONDS (default 300).") var futureToleranceSeconds: String?
    @Option(help: "HISTORY_RETENTION: runs kept per source (default 1000).") var historyRetention: String?
    @Option(help: "STALE_AFTER_SECONDS (default 7200).") var staleAfterSeconds: String?
    @Option(help: "IDLE_TIMEOUT_SECONDS (default 60).") var idleTimeoutSeconds: String?
    @Option(help: "REQUEST_TIMEOUT_SECONDS: time for a whole request to arrive (default 30).")
    var requestTimeoutSeconds: String?
    @Option(help: "MAX_CONNECTIONS (default 512).") var maxConnections: String?
    @Option(help: "READ_CACHE_ENTRIES: watermarks kept in memory for reads (default 5000; 0 turns it off).")
    var readCacheEntries: String?
    @Option(help: "METRICS_SOURCE_LIMIT: sources /metrics shows one by one (default 1000; 0 for none).")
    var metricsSourceLimit: String?
    @Option(help: "TLS_CERT_PATH: PEM certificate chain; with --tls-key-path serves HTTPS.") var tlsCertPath: String?
    @Option(help: "TLS_KEY_PATH: PEM private key of the certificate.") var tlsKeyPath: String?
    @Option(
        help: """
            DATABASE_URL: postgres://user:password@host:port/db selects PostgreSQL (prefer the environment \
            variable: a flag's password shows in the process list).
            """)
    var databaseURL: String?

    func run() async throws {
        let flags: [String: String?] = [
            "PORT": port, "HOST": host, "DATABASE_PATH": databasePath, "STORAGE_API_TOKEN": apiToken,
            "STORAGE_READ_TOKEN": readToken, "LOG_LEVEL": logLevel, "ENVIRONMENT": environment,
            "FUTURE_TOLERANCE_SECONDS": futureToleranceSeconds, "HISTORY_RETENTION": historyRetention,
            "STALE_AFTER_SECONDS": staleAfterSeconds, "IDLE_TIMEOUT_SECONDS": idleTimeoutSeconds,
            "REQUEST_TIMEOUT_SECONDS": requestTimeoutSeconds, "MAX_CONNECTIONS": maxConnections,
            "READ_CACHE_ENTRIES": readCacheEntries, "METRICS_SOURCE_LIMIT": metricsSourceLimit,
            "TLS_CERT_PATH": tlsCertPath, "TLS_KEY_PATH": tlsKeyPath,
            "DATABASE_URL": databaseURL,
        ]
        let settings = Settings(flags: flags.compactMapValues { $0 })

        let configuration: StorageConfiguration
        let tlsConfiguration: TLSConfiguration?
        do {
            configuration = try StorageConfiguration(settings)
            tlsConfiguration = try configuration.tls?.serverConfiguration()
        } catch {
            ServiceStart.reportConfigurationError("storage-service", error)
            throw ExitCode(2)
        }
        ServiceStart.bootstrapLogging(level: configuration.logLevel, to: .standardError)
        let logger = Logger(label: "storage-service")

        let store: any WatermarkStore
        let database: any Service
        let databaseName: String
        if let url = configuration.databaseURL {
            let postgres = PostgresDatabase(
                url: url, migrations: PostgresSchema.migrations, maximumConnections: 20,
                sessionTimeout: PostgresWatermarkStore.operationTimeout + .seconds(2), logger: logger)
            let pgStore = PostgresWatermarkStore(
                client: postgres.client, url: url, policy: configuration.policy, logger: logger, ready: postgres.ready)
            (store, database, databaseName) = (pgStore, postgres, url.redacted)
        } else {
            do {
                let sqlite = try SQLiteDatabaseService(
                    path: configuration.databasePath, policy: configuration.policy,
                    cacheCapacity: configuration.readCacheEntries, logger: logger)
                (store, database, databaseName) = (sqlite.store, sqlite, configuration.databasePath)
            } catch {
                logger.critical(
                    "Cannot open the database",
                    metadata: ["path": "\(configuration.databasePath)", "error": "\(error)"])
                throw ExitCode(1)
            }
        }
        if configuration.apiTokens == nil {
            let level: Logger.Level = configuration.environment == .production ? .warning : .info
            logger.log(level: level, "No STORAGE_API_TOKEN set: the API is open to every caller")
        } else if configuration.environment == .production, tlsConfiguration == nil {
            logger.warning(
                """
                STORAGE_API_TOKEN set without TLS: bearer tokens cross the network in clear text; set TLS_CERT_PATH \
                and TLS_KEY_PATH, or put a TLS-terminating proxy on the same host in front of this service
                """)
        }
        let app = try await buildApplication(
            configuration: configuration, store: store, services: [database], logger: logger,
            tlsConfiguration: tlsConfiguration
        ) { port in
            logger.info(
                "Storage service listening",
                metadata: [
                    "host": "\(configuration.host)", "port": "\(port)", "database": "\(databaseName)",
                    "environment": "\(configuration.environment.rawValue)",
                    "auth": "\(configuration.apiTokens == nil ? "off" : "bearer")",
                    "tokens": "\(configuration.apiTokens?.names.joined(separator: ",") ?? "")",
                    "scheme": "\(tlsConfiguration == nil ? "http" : "https")",
                ]
            )
        }
        do {
            try await app.runService()
        } catch let error as PostgresDatabase.StartError {
            logger.critical("Cannot use the database", metadata: ["error": "\(error)"])
            throw ExitCode(1)
        }
        logger.info("Storage service stopped")
    }
}

/// Exits 0 when `/health` answers 200, 1 otherwise: a health check for images without curl.
struct HealthCheck: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "healthcheck", abstract: "Check a running storage service's /health."
    )

    @Option(help: "The health URL (https:// when the service serves TLS).") var url = "http://127.0.0.1:8000/health"
    @Option(help: "Seconds to wait for the answer.") var timeoutSeconds: Int64 = 5
    @Option(help: "PEM file of a private CA to trust for an https:// URL.") var caPath: String?

    func run() async throws {
        let (healthy, line) = await HealthProbe.check(
            url: url, caPath: caPath, timeout: .seconds(max(1, timeoutSeconds)))
        print(line)
        guard healthy else { throw ExitCode(1) }
    }
}

/// Fills a database with many watermarks and their history (`WatermarkSeeder`), to see the service at scale.
struct Seed: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Load many watermarks and history rows into a database (for load tests; not while it is served)."
    )

    @Option(help: "DATABASE_PATH: SQLite file to fill (created if missing).") var databasePath = "data/watermarks.db"
    @Option(help: "How many watermarks.") var sources = 1_000_000
    @Option(help: "How many history rows in all (spread evenly over the sources).") var history = 10_000_000
    @Option(help: "Source ids are this prefix and a number.") var prefix = "seed-"

    func validate() throws {
        guard sources >= 0, history >= 0 else { throw ValidationError("--sources and --history must be >= 0") }
    }

    func run() throws {
        let started = ContinuousClock.now
        do {
            try SQLiteDatabaseService.createFolder(for: databasePath)
            let lock = try ProcessLock(path: databasePath + ".lock") { holder in
                "database \(databasePath) is in use by another storage-service process"
                    + (holder.map { " (pid \($0))" } ?? "") + "; stop it or use another DATABASE_PATH"
            }
            try WatermarkSeeder(sources: sources, history: history, prefix: prefix).seed(path: databasePath) {
                print("seed: \($0)")
            }
            withExtendedLifetime(lock) {}
        } catch {
            FileHandle.standardError.write(Data("storage-service seed: \(error)\n".utf8))
            throw ExitCode(1)
        }
        let size = (try? FileManager.default.attributesOfItem(atPath: databasePath)[.size] as? Int) ?? 0
        print(
            "seed: \(sources) watermarks and \(history) history rows in \(databasePath) "
                + "(\(size / 1_048_576) MiB) in \(ContinuousClock.now - started)")
    }
}

/// Prints the OpenAPI document `serve` answers at `/openapi.yaml` with the same environment: for linters and
/// client generators, without starting a server.
struct PrintOpenAPI: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "openapi",
        abstract: "Print the OpenAPI document served with this environment (STORAGE_API_TOKEN, STORAGE_READ_TOKEN)."
    )

    func run() throws {
        let configuration: StorageConfiguration
        do {
            configuration = try StorageConfiguration(Settings())
        } catch {
            ServiceStart.reportConfigurationError("storage-service openapi", error)
            throw ExitCode(2)
        }
        print(OpenAPIDocument.yaml(for: .init(configuration)), terminator: "")
    }
}
