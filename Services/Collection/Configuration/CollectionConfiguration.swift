import Foundation
import Logging
import ServiceSupport
import WatermarkCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// Service-wide settings, read in one place from the environment (command-line flags override them).
///
/// Keys and defaults:
/// - `PORT` (8000), `HOST` (0.0.0.0): the HTTP port with `/health`, `/status`, `/metrics`, `POST /api/v1/sources/{id}/run`.
/// - `DATA_DIR` (`./data/collection`): the sink (`<source_id>/<day>.ndjson`) and `.state/` (last known watermarks,
///   queued updates).
/// - `COLLECTION_CONFIG` (`./config/sources.json`): the sources file, see `SourcesFile`.
/// - `STORAGE_SERVICE_URL`, `STORAGE_API_TOKEN`, `STORAGE_TIMEOUT_SECONDS`: handed to the client library's factory
///   (no URL: the in-memory mock, refused with `ENVIRONMENT=production`).
/// - `ENVIRONMENT` (`development`), `LOG_LEVEL` (`info`).
/// - `MAX_CONCURRENT_RUNS` (2): runs of different sources at the same time.
/// - `INSTANCE_ID` (the host name): the lease owner. Stable across restarts, so a restarted process resumes its
///   own live leases at once; distinct per replica, so replicas exclude each other.
/// - `REQUIRE_LEASE` (false): with `true` a source is never collected without its lease; while the storage cannot
///   be asked the run is skipped and retried soon (set it when several replicas run). With `false` a single
///   replica collects through a storage outage.
/// - `REPLAY_INTERVAL_SECONDS` (30): how often queued watermark updates are replayed.
/// - `TLS_CERT_PATH`, `TLS_KEY_PATH` (none): serve the HTTP API over HTTPS with this PEM certificate chain and
///   unencrypted PEM key (both or neither). `STORAGE_CA_PATH` (none): a private CA the storage client trusts.
struct CollectionConfiguration: Sendable {
    var host: String = "0.0.0.0"
    var port: Int = 8000
    var dataDirectory: String = "./data/collection"
    var sourcesPath: String = "./config/sources.json"
    var logLevel: Logger.Level = .info
    var maxConcurrentRuns: Int = 2
    var instanceID: String = CollectionConfiguration.defaultInstanceID()
    var replayInterval: Duration = .seconds(30)
    var requireLease = false
    /// The certificate and key to serve HTTPS with; `nil` serves plain HTTP.
    var tls: TLSFiles?
    /// The whole environment, for the storage client factory and the sources' credentials.
    var environment: [String: String] = [:]

    var stateDirectory: String { Self.stateDirectory(of: dataDirectory) }

    /// `DATA_DIR/.state`: last known watermarks, queued updates, dead letters, drop-folder ledgers, dedup indexes.
    static func stateDirectory(of dataDirectory: String) -> String {
        (dataDirectory as NSString).appendingPathComponent(".state")
    }

    init() {}

    /// Reads the keys above from `environment`; malformed values are errors naming the variable.
    init(environment: [String: String]) throws(ConfigurationError) {
        self.environment = environment
        if let host = environment["HOST"], !host.isEmpty { self.host = host }
        if let text = environment["PORT"] { port = try Self.integer("PORT", text, 0...65_535) }
        if let dir = environment["DATA_DIR"], !dir.isEmpty { dataDirectory = dir }
        if let path = environment["COLLECTION_CONFIG"], !path.isEmpty { sourcesPath = path }
        if let level = environment["LOG_LEVEL"], !level.isEmpty { logLevel = try Self.level(level) }
        if let text = environment["MAX_CONCURRENT_RUNS"] {
            maxConcurrentRuns = try Self.integer("MAX_CONCURRENT_RUNS", text, 1...64)
        }
        if let id = environment["INSTANCE_ID"], !id.isEmpty { instanceID = id }
        if let text = environment["REQUIRE_LEASE"], !text.isEmpty {
            switch text.lowercased() {
            case "true", "1", "yes": requireLease = true
            case "false", "0", "no": requireLease = false
            default: throw ConfigurationError("REQUIRE_LEASE=\(text): must be true or false")
            }
        }
        if let text = environment["REPLAY_INTERVAL_SECONDS"] {
            replayInterval = .seconds(try Self.integer("REPLAY_INTERVAL_SECONDS", text, 1...86_400))
        }
        do {
            tls = try TLSFiles.from(environment)
        } catch {
            throw ConfigurationError(error.description)
        }
    }

    static func integer(_ name: String, _ text: String, _ range: ClosedRange<Int>) throws(ConfigurationError) -> Int {
        guard let value = Int(text.trimmingCharacters(in: .whitespaces)), range.contains(value) else {
            throw ConfigurationError(
                "\(name)=\(text): must be a whole number from \(range.lowerBound) to \(range.upperBound)")
        }
        return value
    }

    static func level(_ text: String) throws(ConfigurationError) -> Logger.Level {
        guard let level = Logger.Level(rawValue: text.lowercased()) else {
            throw ConfigurationError(
                "LOG_LEVEL=\(text): must be one of trace, debug, info, notice, warning, error, critical"
            )
        }
        return level
    }

    static func defaultInstanceID() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        let host =
            gethostname(&buffer, buffer.count) == 0
            ? String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : "collector"
        return host
    }
}
