import Foundation
import Logging
import PostgresSupport
import ServiceSupport
import StorageClient
import WatermarkCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// Service-wide settings, read in one place through `Settings` (command-line flags over the environment).
///
/// Keys and defaults:
/// - `PORT` (8001), `HOST` (0.0.0.0): the HTTP port with `/health`, `/status`, `/metrics`, `POST /api/v1/sources/{id}/run`.
/// - `DATA_DIR` (`./data/collection`): the sink (`<source_id>/<day>.ndjson`) and `.state/` (last known watermarks,
///   queued updates).
/// - `SINK_URL` (none): `postgres://user:password@host:port/db` (also `postgresql://`, `?sslmode=`) writes the
///   records to the `records` table of that PostgreSQL instead of the NDJSON files, one sink for every replica
///   (`DATA_DIR/.state` is still used).
/// - `COLLECTION_CONFIG` (`./config/sources.json`): the sources file, see `SourcesFile`.
/// - `STORAGE_SERVICE_URL`, `STORAGE_API_TOKEN`, `STORAGE_TIMEOUT_SECONDS`: handed to the client library's factory
///   (no URL: the in-memory mock, refused with `ENVIRONMENT=production`).
/// - `ENVIRONMENT` (`development`), `LOG_LEVEL` (`info`).
/// - `MAX_CONCURRENT_RUNS` (2): runs of different sources at the same time.
/// - `INSTANCE_ID` (the host name and six hex digits kept in `DATA_DIR/.state/instance-id`): the lease owner. Stable
///   across restarts on the same host and `DATA_DIR`, so a restarted process resumes its own live leases at once
///   (a container re-created with a new host name waits for them to lapse: set `INSTANCE_ID` there); distinct per
///   replica and per `DATA_DIR`, so replicas, and two processes on one host with their own folders, exclude each
///   other.
/// - `REQUIRE_LEASE` (false): with `true` a source is never collected without its lease; while the storage cannot
///   be asked the run is skipped and retried soon (set it when several replicas run). With `false` a single
///   replica collects through a storage outage.
/// - `LEASE_TTL_SECONDS` (60): how long a source's lease lasts without renewal, so how soon another replica takes
///   over the sources of a replica that died (never shorter than twice the source's `timeout_seconds`).
/// - `LEASE_RENEW_SECONDS` (20, less than the TTL): how long after taking or renewing its lease a run renews it,
///   at the next page boundary.
/// - `REPLAY_INTERVAL_SECONDS` (30): how often queued watermark updates are replayed.
/// - `COLLECTION_API_TOKEN` (none): when set, `POST /api/v1/sources/{id}/run` needs `Authorization: Bearer <token>`
///   (a list `name:token,...` as `STORAGE_API_TOKEN`'s); the read-only routes stay open.
/// - `TLS_CERT_PATH`, `TLS_KEY_PATH` (none): serve the HTTP API over HTTPS with this PEM certificate chain and
///   unencrypted PEM key (both or neither). `STORAGE_CA_PATH` (none): a private CA the storage client trusts.
struct CollectionConfiguration: Sendable {
    var host: String = "0.0.0.0"
    /// Not storage's 8000, so both run side by side on one host (as `make run-all` does).
    var port: Int = 8001
    var dataDirectory: String = "./data/collection"
    var sourcesPath: String = "./config/sources.json"
    var logLevel: Logger.Level = .info
    var maxConcurrentRuns: Int = 2
    /// `INSTANCE_ID`, or the host name until `resolveInstanceID()` gives the default its `DATA_DIR`'s id.
    var instanceID: String = CollectionConfiguration.hostName()
    var instanceIDGiven = false
    var replayInterval: Duration = .seconds(30)
    var requireLease = false
    var leaseTTL: Duration = .seconds(60)
    var leaseRenewal: Duration = .seconds(20)
    /// `SINK_URL`: the shared PostgreSQL sink; `nil` writes NDJSON files under `DATA_DIR`.
    var sinkURL: PostgresURL?
    /// The certificate and key to serve HTTPS with; `nil` serves plain HTTP.
    var tls: TLSFiles?
    /// `COLLECTION_API_TOKEN`: the tokens that may ask for runs; `nil` lets anyone who reaches the port.
    var apiTokens: APITokens?

    var stateDirectory: String { Self.stateDirectory(of: dataDirectory) }

    /// `DATA_DIR/.state`: last known watermarks, queued updates, dead letters, drop-folder ledgers, dedup indexes.
    static func stateDirectory(of dataDirectory: String) -> String {
        (dataDirectory as NSString).appendingPathComponent(".state")
    }

    /// Refuses a drop folder where the service writes: the file sink's folder of a source (`DATA_DIR/<id>`), whose
    /// day files the folder's source would read back as bad records and move away, or `DATA_DIR/.state`; and a folder
    /// two sources read. Paths are compared absolute, with `..` and symbolic links resolved.
    func checkDropFolders(_ sources: [SourceConfiguration]) throws(ConfigurationError) {
        // Symbolic links resolved in the longest part of the path that exists (resolving gives up on a path with a
        // missing part: a DATA_DIR reached through a link, before its sink folders were made, went unresolved).
        func absolute(_ path: String) -> String {
            var existing = URL(fileURLWithPath: path).standardizedFileURL
            var missing: [String] = []
            while !FileManager.default.fileExists(atPath: existing.path), existing.path != "/" {
                missing.insert(existing.lastPathComponent, at: 0)
                existing.deleteLastPathComponent()
            }
            return missing.reduce(existing.resolvingSymlinksInPath().path) {
                ($0 as NSString).appendingPathComponent($1)
            }
        }
        var written = [(absolute(stateDirectory), "the service's state folder (DATA_DIR/.state)")]
        if sinkURL == nil {
            for source in sources {
                let folder = (dataDirectory as NSString).appendingPathComponent(source.id.rawValue)
                written.append(
                    (absolute(folder), "where the sink writes source \"\(source.id)\" (DATA_DIR/\(source.id))"))
            }
        }
        var readers: [String: SourceID] = [:]
        for source in sources {
            guard case .directory(let settings) = source.kind else { continue }
            let path = absolute(settings.path)
            for (folder, what) in written where path == folder || path.hasPrefix(folder + "/") {
                throw ConfigurationError(
                    "source \"\(source.id)\" field \"path\": \(settings.path) is in \(what): the source would read "
                        + "the service's own files; give a folder outside DATA_DIR/<source id> and DATA_DIR/.state")
            }
            // Two sources of one folder would each collect every file under its own id, and race to move the same
            // bad file aside. (A source that is not enabled reads nothing.)
            guard source.enabled else { continue }
            if let other = readers[path] {
                throw ConfigurationError(
                    "source \"\(source.id)\" field \"path\": \(settings.path) is the folder source \"\(other)\" "
                        + "reads: each file would be collected twice; give each source a folder of its own")
            }
            readers[path] = source.id
        }
    }

    /// Reads the keys above from `settings` (flags over the environment); malformed values are errors naming
    /// the variable.
    init(_ settings: Settings) throws(ConfigurationKeyError) {
        host = settings.string("HOST", default: host)
        port = try settings.int("PORT", default: port, in: 0...65_535)
        dataDirectory = settings.string("DATA_DIR", default: dataDirectory)
        sourcesPath = settings.string("COLLECTION_CONFIG", default: sourcesPath)
        logLevel = try settings.choice("LOG_LEVEL", default: logLevel, Logger.Level.allCases.map { ($0.rawValue, $0) })
        maxConcurrentRuns = try settings.int("MAX_CONCURRENT_RUNS", default: maxConcurrentRuns, in: 1...64)
        instanceIDGiven = settings.text("INSTANCE_ID") != nil
        instanceID = settings.string("INSTANCE_ID", default: instanceID)
        // The lease owner: one the storage refuses would fail every run of every source.
        guard WatermarkRules.isValidOwner(instanceID) else {
            throw ConfigurationKeyError(
                key: "INSTANCE_ID", message: "must be 1 to \(WatermarkRules.maxOwnerLength) printable characters")
        }
        requireLease = try settings.bool("REQUIRE_LEASE", default: requireLease)
        replayInterval = .seconds(try settings.int("REPLAY_INTERVAL_SECONDS", default: 30, in: 1...86_400))
        let ttl = try settings.int("LEASE_TTL_SECONDS", default: 60, in: 5...86_400)
        leaseTTL = .seconds(ttl)
        leaseRenewal = .seconds(try settings.int("LEASE_RENEW_SECONDS", default: max(1, ttl / 3), in: 1...(ttl - 1)))
        tls = try TLSFiles.from(settings)
        apiTokens = try settings.text("COLLECTION_API_TOKEN").map { text throws(ConfigurationKeyError) in
            try APITokens(parsing: text, key: "COLLECTION_API_TOKEN")
        }
        sinkURL = try settings.text("SINK_URL").map { text throws(ConfigurationKeyError) in
            try PostgresURL(text, key: "SINK_URL")
        }
    }

    static func hostName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        let host =
            gethostname(&buffer, buffer.count) == 0
            ? String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
        return host.isEmpty ? "collector" : host
    }

    /// Where the default owner came from.
    enum InstanceIDOrigin: Equatable {
        /// `INSTANCE_ID` was set.
        case given
        /// The `DATA_DIR`'s id, kept from an earlier start.
        case kept
        /// Made now: the first start on this `DATA_DIR` (leases an earlier version held as the bare host name
        /// lapse within their TTL), or `replaced` when the file held no valid id.
        case made(replaced: Bool)
    }

    /// Without `INSTANCE_ID`, the owner is the host name and six hex digits kept in `DATA_DIR/.state/instance-id`,
    /// made at the first start. The host name alone was shared by every process on the host: a `--once` run started
    /// from another folder (another `DATA_DIR`) while the service ran was granted the service's own lease and token
    /// as a renewal, collected the source into its own sink and moved the watermark past records the service's sink
    /// never got. The id keeps the owner across restarts, so a restarted process resumes its live leases; the host
    /// name stays in it, so a `DATA_DIR` copied to another machine (a snapshot, a template) is another owner there.
    /// Call once `DATA_DIR` is held.
    mutating func resolveInstanceID() throws -> InstanceIDOrigin {
        guard !instanceIDGiven else { return .given }
        let path = Self.instanceIDPath(of: dataDirectory)
        var replaced = false
        if let data = FileManager.default.contents(atPath: path) {
            let kept = String(decoding: data, as: UTF8.self).trimmingWhitespace()
            if kept.utf8.count == 6, kept.utf8.allSatisfy({ Self.hexDigits.contains($0) }) {
                instanceID = Self.owner(suffix: kept)
                return .kept
            }
            replaced = true
        }
        let suffix = String(String(UInt32.random(in: 0..<(1 << 24)) | (1 << 24), radix: 16).dropFirst())
        try FileManager.default.createDirectory(atPath: stateDirectory, withIntermediateDirectories: true)
        try DurableFile.write(Data((suffix + "\n").utf8), to: path)
        instanceID = Self.owner(suffix: suffix)
        return .made(replaced: replaced)
    }

    private static let hexDigits = Set("0123456789abcdef".utf8)

    private static func owner(suffix: String) -> String {
        String(hostName().prefix(WatermarkRules.maxOwnerLength - 7)) + "-" + suffix
    }

    static func instanceIDPath(of dataDirectory: String) -> String {
        (stateDirectory(of: dataDirectory) as NSString).appendingPathComponent("instance-id")
    }
}
