import ArgumentParser
import AsyncHTTPClient
import Foundation
import Hummingbird
import Logging
import NIOCore
import NIOHTTP1
import NIOSSL
import PostgresSupport
import Prometheus
import ServiceLifecycle
import ServiceSupport
import StorageClient
import UnixSignals
import WatermarkCore

/// `collection-service`: collects every configured source on its schedule, exactly once, into `DATA_DIR`.
///
/// `collection-service [--once]` serves (the default sub-command); `collection-service healthcheck --url ...`
/// probes a running instance for container healthchecks.
@main
struct CollectionServiceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "collection-service",
        abstract: "Incremental threat-intelligence collection driven by watermarks.",
        subcommands: [Serve.self, Healthcheck.self],
        defaultSubcommand: Serve.self
    )
}

/// Runs the service (or every source once with `--once`). Flags override the environment variables of
/// `CollectionConfiguration`.
struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve", abstract: "Run the scheduler and the HTTP API (default)."
    )

    @Option(help: "Address to bind (HOST, default 0.0.0.0).") var host: String?
    @Option(help: "HTTP port (PORT, default 8001).") var port: Int?
    @Option(name: .customLong("data-dir"), help: "Sink and local state (DATA_DIR).") var dataDir: String?
    @Option(name: .customLong("config"), help: "Sources file (COLLECTION_CONFIG).") var config: String?
    @Option(name: .customLong("log-level"), help: "LOG_LEVEL (info).") var logLevel: String?
    @Option(name: .customLong("max-concurrent-runs"), help: "MAX_CONCURRENT_RUNS (2).") var maxConcurrentRuns: Int?
    @Option(name: .customLong("instance-id"), help: "Lease owner (INSTANCE_ID, default the host name).")
    var instanceID: String?
    @Flag(help: "Run every enabled source once, print a summary, exit non-zero if any run failed.")
    var once = false

    /// One collection service per `DATA_DIR` (`ProcessLock` on `DATA_DIR/.state/lock`).
    static func holdDataDirectory(_ dataDirectory: String) throws -> ProcessLock {
        let state = CollectionConfiguration.stateDirectory(of: dataDirectory)
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
        return try ProcessLock(path: (state as NSString).appendingPathComponent("lock")) { holder in
            "DATA_DIR \(dataDirectory) is in use by another collection-service" + (holder.map { " (pid \($0))" } ?? "")
        }
    }

    func run() async throws {
        let flags: [String: String?] = [
            "HOST": host, "PORT": port.map(String.init), "DATA_DIR": dataDir, "COLLECTION_CONFIG": config,
            "LOG_LEVEL": logLevel, "MAX_CONCURRENT_RUNS": maxConcurrentRuns.map(String.init),
            "INSTANCE_ID": instanceID,
        ]
        let settings = Settings(flags: flags.compactMapValues { $0 })

        var configuration: CollectionConfiguration
        let sources: [SourceConfiguration]
        let tlsConfiguration: TLSConfiguration?
        do {
            configuration = try CollectionConfiguration(settings)
            sources = try SourcesFile.load(path: configuration.sourcesPath, settings: settings)
            try configuration.checkDropFolders(sources)
            tlsConfiguration = try configuration.tls?.serverConfiguration()
        } catch {
            ServiceStart.reportConfigurationError("collection-service", error)
            throw ExitCode(2)
        }
        ServiceStart.bootstrapLogging(level: configuration.logLevel, to: .standardOutput)
        var logger = Logger(label: "collection-service")
        logger.logLevel = configuration.logLevel
        let dataLock: ProcessLock
        do {
            dataLock = try Self.holdDataDirectory(configuration.dataDirectory)
        } catch {
            logger.critical("cannot hold DATA_DIR", metadata: ["error": "\(error)"])
            throw ExitCode(2)
        }
        defer { withExtendedLifetime(dataLock) {} }
        do {
            if case .made(let replaced) = try configuration.resolveInstanceID() {
                let path = CollectionConfiguration.instanceIDPath(of: configuration.dataDirectory)
                logger.notice(
                    replaced
                        ? "lease owner: the file held no valid id, a new one was made (leases of the old owner lapse)"
                        : "lease owner: made for this DATA_DIR (leases held under another owner lapse within their TTL)",
                    metadata: ["path": "\(path)", "instance_id": "\(configuration.instanceID)"])
            }
        } catch {
            logger.critical("cannot keep the lease owner in DATA_DIR", metadata: ["error": "\(error)"])
            throw ExitCode(2)
        }

        // The process's one HTTP client, for the storage and every source; shut down here, after both. Its
        // connect bound (10 s) serves every destination; each storage call has its own deadline of
        // STORAGE_TIMEOUT_SECONDS (the factory reads it) and each source request its source's timeout.
        let httpClient = HTTPClient(
            eventLoopGroup: HTTPClient.defaultEventLoopGroup,
            configuration: HTTPStorageClient.configuration(timeout: .seconds(30)))
        let storage: any StorageClient
        do {
            storage = try makeStorageClient(settings: settings, httpClient: httpClient, logger: logger)
        } catch {
            logger.critical("invalid storage configuration", metadata: ["error": "\(error)"])
            try? await httpClient.shutdown()
            throw ExitCode(2)
        }
        for source in sources where source.enabled {
            if let problem = source.staleThresholdProblem {
                logger.warning(
                    "stale threshold shorter than the time between runs",
                    metadata: ["source_id": "\(source.id)", "detail": "\(problem)"])
            }
        }
        if !(await storage.healthCheck()) {
            logger.warning("Storage Service health check failed - watermarks will not persist")
        }
        let registry = PrometheusCollectorRegistry()
        var exitCode: Int32 = 0
        do {
            let shared = buildSharedSink(configuration: configuration, logger: logger)
            let engine = try buildEngine(
                configuration: configuration, sources: sources, storage: storage, httpClient: httpClient,
                registry: registry, logger: logger, sink: shared?.1
            )
            logger.info(
                "collection service starting",
                metadata: [
                    "sources": "\(sources.count)", "data_dir": "\(configuration.dataDirectory)",
                    "instance_id": "\(configuration.instanceID)", "mode": "\(once ? "once" : "serve")",
                    "sink": "\(configuration.sinkURL?.redacted ?? "ndjson")",
                ]
            )
            if once {
                let reports = try await whileRunning(shared?.0) {
                    await stoppingOnSignal(engine: engine) {
                        let reports = await runOnce(
                            engine: engine, sources: sources, limit: configuration.maxConcurrentRuns)
                        await engine.maintain()
                        return reports
                    }
                }
                for report in reports { print(Self.summaryLine(report)) }
                // Stopped by a signal (runs abandoned at a page boundary) is not done either.
                exitCode = reports.contains(where: { $0.notCollected || $0.outcome == .abandoned }) ? 1 : 0
            } else {
                if configuration.apiTokens != nil, tlsConfiguration == nil,
                    settings.text("ENVIRONMENT")?.lowercased() == "production"
                {
                    logger.warning(
                        """
                        COLLECTION_API_TOKEN set without TLS: bearer tokens cross the network in clear text; set \
                        TLS_CERT_PATH and TLS_KEY_PATH, or put a TLS-terminating proxy on the same host in front of \
                        this service
                        """)
                }
                let app = try buildApplication(
                    configuration: configuration, engine: engine, registry: registry, logger: logger,
                    tlsConfiguration: tlsConfiguration, database: shared?.0)
                try await app.runService()
            }
        } catch {
            logger.critical("collection service failed", metadata: ["error": "\(error)"])
            exitCode = 1
        }
        try? await storage.shutdown()
        try? await httpClient.shutdown()
        if exitCode != 0 { throw ExitCode(exitCode) }
    }

    static func summaryLine(_ report: RunReport) -> String {
        var line = "\(report.sourceID) \(report.outcome.rawValue) records=\(report.recordsCollected)"
        line += " watermark=\(report.watermark.map { "\($0)" } ?? "none")"
        line += " duration_ms=\(report.duration.milliseconds)"
        if report.updateQueued { line += " update=queued" }
        if let error = report.errorMessage { line += " error=\"\(error)\"" }
        return line
    }
}

/// Runs `body` while `database` (the shared sink's, when there is one) runs, and stops it afterwards: `--once`
/// has no service group. A database that cannot be used fails the runs' sink with its reason.
func whileRunning<T: Sendable>(_ database: PostgresDatabase?, _ body: () async throws -> T) async throws -> T {
    guard let database else { return try await body() }
    return try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await database.run() }
        defer { group.cancelAll() }
        return try await body()
    }
}

/// Runs `body` (the `--once` runs) stopping them as the scheduler does at graceful shutdown when SIGTERM or SIGINT
/// comes: each run ends at its next page boundary, its watermark where its last checkpoint left it and its lease
/// released, and a replay of queued updates at its next delivery. Without it a `--once` process (a CronJob past its
/// deadline, a `timeout` wrapper) died at once, recorded nothing and left its leases held until their TTL, up to a
/// day, and the next job skipped those sources meanwhile.
func stoppingOnSignal<T: Sendable>(engine: CollectionEngine, _ body: () async -> T) async -> T {
    await withTaskGroup(of: Void.self) { group in
        let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint)
        group.addTask {
            for await signal in signals {
                // Ctrl-C again while the runs wind down ends the process at once, as an untrapped one would (what is
                // on disk is consistent at any instant; the leases held wait for their TTL). A SIGTERM again does
                // not: `timeout` sends its signal to the process and then to its group, the same one twice, and
                // orchestrators follow with SIGKILL.
                guard !engine.board.isStopping() else {
                    guard endsAtOnce(signal, stopping: true) else { continue }
                    engine.logger.notice("second interrupt: exiting now", metadata: ["signal": "\(signal)"])
                    exit(130)
                }
                engine.logger.notice(
                    "stopping: runs end at their next page, their watermarks at their last checkpoint",
                    metadata: ["signal": "\(signal)"])
                engine.board.stop()
                engine.manager.stopReplaying()
            }
        }
        defer { group.cancelAll() }
        return await body()
    }
}

/// Whether `signal` ends `--once` at once rather than stopping its runs: a second SIGINT (Ctrl-C again) while they stop.
func endsAtOnce(_ signal: UnixSignal, stopping: Bool) -> Bool {
    stopping && signal == .sigint
}

/// Runs every enabled source once, at most `limit` at a time, and returns the reports in configuration order.
/// Once shutdown began no source is started: each would still open its sink and take, then release, its lease (calls
/// to a storage that may be slow to answer) only to stop at once; it is reported abandoned, not run.
func runOnce(engine: CollectionEngine, sources: [SourceConfiguration], limit: Int) async -> [RunReport] {
    let enabled = sources.filter(\.enabled)
    var reports: [SourceID: RunReport] = [:]
    await withTaskGroup(of: RunReport.self) { group in
        var iterator = enabled.makeIterator()
        func next() -> SourceConfiguration? { engine.board.isStopping() ? nil : iterator.next() }
        for _ in 0..<max(1, limit) {
            guard let source = next() else { break }
            group.addTask { await engine.execute(source) }
        }
        while let report = await group.next() {
            reports[report.sourceID] = report
            if let source = next() { group.addTask { await engine.execute(source) } }
        }
    }
    let now = engine.clock()
    return enabled.map {
        reports[$0.id]
            ?? RunReport(
                sourceID: $0.id, outcome: .abandoned, startedAt: now, finishedAt: now,
                errorMessage: "not started: the process was stopping")
    }
}

/// `collection-service healthcheck --url http://127.0.0.1:8001/health`: exit 0 when the answer is 200, else 1.
/// For container healthchecks in images without curl.
struct Healthcheck: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "healthcheck", abstract: "Probe a running instance's /health; exit 0 when healthy, 1 otherwise."
    )

    @Option(help: "The health URL (https:// when the service serves TLS).")
    var url: String = "http://127.0.0.1:8001/health"
    @Option(help: "Seconds to wait for the answer.") var timeout: Int64 = 5
    @Option(help: "PEM file of a private CA to trust for an https:// URL.") var caPath: String?

    func run() async throws {
        let (healthy, line) = await HealthProbe.check(url: url, caPath: caPath, timeout: .seconds(max(1, timeout)))
        print(line)
        if !healthy { throw ExitCode(1) }
    }
}
