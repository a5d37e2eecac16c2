import Logging
import PostgresSupport
import ServiceSupport
import WatermarkCore

/// Everything the storage service can be told at start-up, read in one place.
///
/// Each key is an environment variable, and a command-line flag of the same name in kebab case
/// overrides it (`DATABASE_PATH` / `--database-path`):
///
/// | key | default | meaning |
/// |---|---|---|
/// | `PORT` | 8000 | TCP port (0 picks a free one) |
/// | `HOST` | 0.0.0.0 | address to bind |
/// | `DATABASE_PATH` | data/watermarks.db | SQLite file; its folder is created |
/// | `DATABASE_URL` | none | `postgres://user:password@host:5432/db[?sslmode=...]`: PostgreSQL instead of SQLite |
/// | `STORAGE_API_TOKEN` | none | bearer token for `/api/v1/*` and `/status`, or named tokens `name:token,...` (the history records the name) |
/// | `STORAGE_READ_TOKEN` | none | second token that may only read |
/// | `LOG_LEVEL` | info | trace, debug, info, notice, warning, error, critical |
/// | `ENVIRONMENT` | development | development or production |
/// | `FUTURE_TOLERANCE_SECONDS` | 300 | how far ahead of the clock a success timestamp may be |
/// | `HISTORY_RETENTION` | 1000 | runs kept per source |
/// | `STALE_AFTER_SECONDS` | 7200 | last-success age counted as stale in `/status` and `/metrics` |
/// | `IDLE_TIMEOUT_SECONDS` | 60 | idle connections are closed after this |
/// | `REQUEST_TIMEOUT_SECONDS` | 30 | a request must arrive in full (head to end of body) within this, or its connection is closed |
/// | `MAX_CONNECTIONS` | 512 | connections served at once (an accept pass under way may take 3 more); more wait |
/// | `METRICS_SOURCE_LIMIT` | 1000 | sources `/metrics` shows one by one (watermark, last run, failures), the first by id; 0 for none |
/// | `READ_CACHE_ENTRIES` | 5000 | watermarks (and their JSON) kept in memory for reads; 0 turns the cache off |
/// | `TLS_CERT_PATH` | none | PEM certificate chain: serve HTTPS (with `TLS_KEY_PATH`; both or neither) |
/// | `TLS_KEY_PATH` | none | PEM private key of that certificate (unencrypted) |
package struct StorageConfiguration: Sendable {
    package enum Environment: String, Sendable {
        case development, production
    }

    package var host = "0.0.0.0"
    package var port = 8000
    package var databasePath = "data/watermarks.db"
    /// PostgreSQL instead of the SQLite file, for several replicas on one database.
    var databaseURL: PostgresURL?
    /// The write tokens, each with the name the audit trail records.
    package var apiTokens: APITokens?
    package var readToken: String?
    package var logLevel = Logger.Level.info
    package var environment = Environment.development
    package var policy = WatermarkPolicy()
    package var idleTimeoutSeconds = 60
    /// Slow-body (slowloris) defence: the idle timeout counts every trickled byte as activity.
    package var requestTimeoutSeconds = 30
    package var maxConnections = 512
    /// Watermarks kept in memory for GETs, each with its JSON: bounds the memory whatever the number of sources
    /// (about 1 KiB an entry); a read past it costs one indexed SQLite lookup. 5,000: at a million sources a
    /// cache of 10,000 held 5 MiB more for no more hits (random reads miss either way), and put the peak RSS
    /// over 64 MiB.
    package var readCacheEntries = 5000
    /// Per-source series on `/metrics`: bounded, so a scrape costs the same at any number of sources.
    package var metricsSourceLimit = 1000
    /// The certificate and key to serve HTTPS with; `nil` serves plain HTTP.
    package var tls: TLSFiles?

    package init() {}

    /// Reads the settings (command-line flags laid over the environment). Invalid values are refused with a
    /// message that names the key and what is allowed.
    package init(_ settings: Settings) throws(ConfigurationKeyError) {
        host = settings.string("HOST", default: host)
        port = try settings.int("PORT", default: port, in: 0...65_535)
        databasePath = settings.string("DATABASE_PATH", default: databasePath)
        databaseURL = try settings.text("DATABASE_URL").map { text throws(ConfigurationKeyError) in
            try PostgresURL(text)
        }
        apiTokens = try settings.text("STORAGE_API_TOKEN").map { text throws(ConfigurationKeyError) in
            try APITokens(parsing: text)
        }
        readToken = settings.text("STORAGE_READ_TOKEN")
        logLevel = try settings.choice("LOG_LEVEL", default: logLevel, Logger.Level.allCases.map { ($0.rawValue, $0) })
        environment = try settings.choice(
            "ENVIRONMENT", default: environment, [("development", .development), ("production", .production)]
        )
        policy.futureTolerance = .seconds(try settings.int("FUTURE_TOLERANCE_SECONDS", default: 300, in: 0...86_400))
        policy.historyRetention = try settings.int("HISTORY_RETENTION", default: 1000, in: 1...1_000_000)
        policy.staleAfter = .seconds(try settings.int("STALE_AFTER_SECONDS", default: 7200, in: 1...31_536_000))
        idleTimeoutSeconds = try settings.int("IDLE_TIMEOUT_SECONDS", default: idleTimeoutSeconds, in: 1...86_400)
        requestTimeoutSeconds = try settings.int(
            "REQUEST_TIMEOUT_SECONDS", default: requestTimeoutSeconds, in: 1...86_400)
        maxConnections = try settings.int("MAX_CONNECTIONS", default: maxConnections, in: 1...100_000)
        readCacheEntries = try settings.int("READ_CACHE_ENTRIES", default: readCacheEntries, in: 0...10_000_000)
        metricsSourceLimit = try settings.int("METRICS_SOURCE_LIMIT", default: metricsSourceLimit, in: 0...100_000)
        tls = try TLSFiles.from(settings)
        if let apiTokens, let readToken, apiTokens.contains(readToken) {
            throw ConfigurationKeyError(key: "STORAGE_READ_TOKEN", message: "must differ from STORAGE_API_TOKEN")
        }
        if readToken != nil, apiTokens == nil {
            throw ConfigurationKeyError(
                key: "STORAGE_READ_TOKEN", message: "needs STORAGE_API_TOKEN: without it every caller may write")
        }
    }
}
