import AsyncHTTPClient
import HTTPServerSupport
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import Logging
import PostgresSupport
import Prometheus
import ServiceLifecycle
import ServiceSupport
import StorageClient
import WatermarkCore

/// Builds the engine (board, runner, collectors, manager, metrics) for the given sources.
func buildEngine(
    configuration: CollectionConfiguration, sources: [SourceConfiguration], storage: any StorageClient,
    httpClient: HTTPClient, registry: PrometheusCollectorRegistry, logger: Logger,
    retry: RetryPolicy = .source, sink: (any Sink)? = nil
) throws -> CollectionEngine {
    let manager = try WatermarkManager(
        client: storage, stateDirectory: configuration.stateDirectory, logger: logger
    )
    let board = SourceBoard(sources: sources)
    let metrics = CollectionMetrics(registry: registry)
    for source in sources { metrics.register(source) }
    let runner = CollectionRunner(
        manager: manager, sink: sink ?? NDJSONFileSink(dataDirectory: configuration.dataDirectory),
        owner: configuration.instanceID, logger: logger, requireLease: configuration.requireLease,
        leaseTTL: configuration.leaseTTL, leaseRenewal: configuration.leaseRenewal, isStopping: { board.isStopping() },
        leaseHeld: { metrics.setLeaseHeld($0, $1) }, untilStopping: { await board.stopping.wait() }
    )
    return CollectionEngine(
        board: board, runner: runner, manager: manager, metrics: metrics,
        makeCollector: { source in
            CollectionEngine.collector(
                for: source, httpClient: httpClient, stateDirectory: configuration.stateDirectory, logger: logger,
                retry: retry)
        },
        logger: logger, startedAt: Timestamp.now()
    )
}

/// The shared sink selected by `SINK_URL`: its database, to run as a service, and the sink on it.
func buildSharedSink(configuration: CollectionConfiguration, logger: Logger) -> (PostgresDatabase, PostgresSink)? {
    guard let url = configuration.sinkURL else { return nil }
    let database = PostgresDatabase(
        url: url, migrations: PostgresSink.migrations, maximumConnections: configuration.maxConcurrentRuns + 2,
        sessionTimeout: PostgresSink.defaultOperationTimeout + .seconds(2), logger: logger)
    return (database, PostgresSink(client: database.client, url: url, ready: database.ready, logger: logger))
}

/// The HTTP application with the scheduler (and the shared sink's database) as services.
///
/// - Parameter tlsConfiguration: serve HTTPS with it (`TLSFiles.serverConfiguration()`); `nil` serves plain HTTP.
func buildApplication(
    configuration: CollectionConfiguration, engine: CollectionEngine, registry: PrometheusCollectorRegistry,
    logger: Logger, schedulerConfiguration: CollectionScheduler.Configuration? = nil,
    tlsConfiguration: TLSConfiguration? = nil, database: PostgresDatabase? = nil
) throws -> some ApplicationProtocol {
    let router = buildRouter(
        engine: engine, registry: registry, instanceID: configuration.instanceID, apiTokens: configuration.apiTokens)
    let scheduler = CollectionScheduler(
        engine: engine,
        configuration: schedulerConfiguration
            ?? CollectionScheduler.Configuration(
                maxConcurrentRuns: configuration.maxConcurrentRuns,
                maintenanceInterval: configuration.replayInterval
            )
    )
    // A request that is not valid HTTP/1.1 is answered with the contract's JSON error, as every other one.
    let http = HTTPServerBuilder.http1(configuration: .init(additionalChannelHandlers: [UnparsableRequestAnswer()]))
    return Application(
        router: router,
        server: try tlsConfiguration.map { try .tls(http, tlsConfiguration: $0) } ?? http,
        configuration: ApplicationConfiguration(
            address: .hostname(configuration.host, port: configuration.port), serverName: "collection-service"
        ),
        // Started in this order and stopped in the reverse one: the shared sink's database outlives the runs.
        services: (database.map { [$0] } ?? []) + [scheduler],
        onServerRunning: { channel in
            logger.info(
                "Collection service listening",
                metadata: [
                    "host": "\(configuration.host)", "port": "\(channel.localAddress?.port ?? configuration.port)",
                    "instance_id": "\(configuration.instanceID)",
                    "scheme": "\(tlsConfiguration == nil ? "http" : "https")",
                ]
            )
        },
        logger: logger
    )
}

func buildRouter(
    engine: CollectionEngine, registry: PrometheusCollectorRegistry, instanceID: String, apiTokens: APITokens? = nil
) -> Router<BasicRequestContext> {
    // HEAD wherever GET is, as the storage answers; a known path asked with another method is 405 with Allow (the
    // routes are recorded as they are added, so the table cannot disagree with the router).
    let router = Router(context: BasicRequestContext.self, options: .autoGenerateHeadEndpoints)
    let routes = RouteTable()
    router.add(middleware: JSONErrorMiddleware(routes: routes))
    let recorder = RecordingRouter(router, table: routes)
    recorder.addRoutes(StatusController(engine: engine, registry: registry, instanceID: instanceID).endpoints)
    recorder.addRoutes(DashboardController(engine: engine, instanceID: instanceID).endpoints)
    recorder.addRoutes(
        SourcesController(board: engine.board, apiTokens: apiTokens).endpoints, atPath: "/api/v1/sources")
    return router
}
