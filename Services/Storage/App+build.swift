import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import Logging
import NIOCore
import WatermarkCore

/// Builds the storage service: tests call this too, so they run exactly the app that ships.
///
/// - Parameters:
///   - tlsConfiguration: serve HTTPS with it (`TLSFiles.serverConfiguration()`); `nil` serves plain HTTP.
///   - onServerRunning: called with the bound port once the server listens (useful with port 0, which picks
///     a free one).
package func buildApplication(
    configuration: StorageConfiguration,
    store: any WatermarkStore,
    logger: Logger,
    tlsConfiguration: TLSConfiguration? = nil,
    onServerRunning: @escaping @Sendable (Int) async -> Void = { _ in }
) async throws -> some ApplicationProtocol {
    let router = buildRouter(configuration: configuration, store: store, metrics: StorageMetrics())
    let http = HTTPServerBuilder.http1(
        configuration: .init(
            additionalChannelHandlers: [
                RequestReadTimeoutHandler(timeout: .seconds(Int64(configuration.requestTimeoutSeconds)))
            ],
            idleTimeout: .seconds(Int64(configuration.idleTimeoutSeconds))
        )
    )
    return Application(
        router: router,
        server: try tlsConfiguration.map { try .tls(http, tlsConfiguration: $0) } ?? http,
        configuration: ApplicationConfiguration(
            address: .hostname(configuration.host, port: configuration.port),
            serverName: "storage-service",
            availableConnectionsDelegate: MaximumAvailableConnections(configuration.maxConnections, logger: logger)
        ),
        onServerRunning: { channel in await onServerRunning(channel.localAddress?.port ?? configuration.port) },
        logger: logger
    )
}

/// The routes and middleware. Middleware order, outermost first: metrics and the access log see every
/// answer; the error middleware turns every failure into the contract's JSON; auth runs before any
/// handler reads input.
func buildRouter(
    configuration: StorageConfiguration, store: any WatermarkStore, metrics: StorageMetrics,
    routes: RouteTable = RouteTable()
) -> Router<StorageRequestContext> {
    let router = Router(context: StorageRequestContext.self, options: .autoGenerateHeadEndpoints)
    router.add(middleware: RequestMetricsMiddleware(metrics: metrics))
    router.add(middleware: ErrorMiddleware(routes: routes))
    router.add(middleware: AuthMiddleware(apiToken: configuration.apiToken, readToken: configuration.readToken))
    let recorder = RecordingRouter(router: router, table: routes)
    SystemController<StorageRequestContext>(
        store: store, metrics: metrics, startedAt: .now, environment: configuration.environment,
        openAPIDocument: ByteBuffer(string: OpenAPIDocument.yaml(for: .init(configuration)))
    ).addRoutes(to: recorder)
    recorder.addRoutes(
        WatermarkController<StorageRequestContext>(
            store: store, maxBodySize: configuration.maxBodySize, cacheEntries: configuration.readCacheEntries
        ).endpoints,
        atPath: "/api/v1/watermarks"
    )
    return router
}
