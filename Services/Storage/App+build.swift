import HTTPServerSupport
import HTTPTypes
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import Logging
import NIOCore
import ServiceLifecycle
import ServiceSupport
import WatermarkCore
import WatermarkStores

/// Builds the storage service: tests call this too, so they run exactly the app that ships.
///
/// - Parameters:
///   - services: run by the app's `ServiceGroup` before the server and stopped after it (the database).
///   - tlsConfiguration: serve HTTPS with it (`TLSFiles.serverConfiguration()`); `nil` serves plain HTTP.
///   - onServerRunning: called with the bound port once the server listens (useful with port 0, which picks
///     a free one).
package func buildApplication(
    configuration: StorageConfiguration,
    store: any WatermarkStore,
    services: [any Service] = [],
    logger: Logger,
    tlsConfiguration: TLSConfiguration? = nil,
    onServerRunning: @escaping @Sendable (Int) async -> Void = { _ in }
) async throws -> some ApplicationProtocol {
    let router = buildRouter(configuration: configuration, store: store, metrics: StorageMetrics())
    let http = HTTPServerBuilder.http1(
        configuration: .init(
            additionalChannelHandlers: [
                RequestReadTimeoutHandler(timeout: .seconds(Int64(configuration.requestTimeoutSeconds))),
                UnparsableRequestAnswer(),
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
        services: services,
        onServerRunning: { channel in await onServerRunning(channel.localAddress?.port ?? configuration.port) },
        logger: logger
    )
}

/// The routes and middleware. Middleware order, outermost first: metrics and the access log see every
/// answer; the error middleware turns every failure into the contract's JSON; auth, on the group of the
/// routes that need a token, runs before any of their handlers reads input.
func buildRouter(
    configuration: StorageConfiguration, store: any WatermarkStore, metrics: StorageMetrics,
    routes: RouteTable = RouteTable()
) -> Router<StorageRequestContext> {
    let router = Router(context: StorageRequestContext.self, options: .autoGenerateHeadEndpoints)
    router.add(middleware: RequestMetricsMiddleware(metrics: metrics))
    router.add(middleware: ErrorMiddleware(routes: routes))
    let recorder = RecordingRouter(router, table: routes)
    // Everything with data sits in one group behind the token; /health, /metrics and /openapi.yaml stay out.
    let auth = AuthMiddleware<StorageRequestContext>(
        apiTokens: configuration.apiTokens, readToken: configuration.readToken)
    let protectedRoutes = RouteTable()
    let protected = RecordingRouter(recorder.group().add(middleware: auth), table: protectedRoutes)
    SystemController<StorageRequestContext>(
        store: store, metrics: metrics, startedAt: .now, environment: configuration.environment,
        metricsSourceLimit: configuration.metricsSourceLimit, mayRead: { auth.mayRead($0) },
        openAPIDocument: ByteBuffer(string: OpenAPIDocument.yaml(for: .init(configuration)))
    ).addRoutes(open: recorder, protected: protected)
    protected.addRoutes(
        WatermarkController<StorageRequestContext>(
            store: store, cacheEntries: configuration.readCacheEntries
        ).endpoints,
        atPath: "/api/v1/watermarks"
    )
    refuseUnknownBehindToken(router: router, auth: auth, protectedRoutes: protectedRoutes)
    return router
}

/// Below /api/v1, and on the protected paths, an unknown path or method is refused by the token first, so a
/// caller without it learns nothing of which exist; with it, the error middleware answers 404 or 405. These
/// responders only throw, and are not in the route table that answers `Allow`.
private func refuseUnknownBehindToken(
    router: Router<StorageRequestContext>, auth: AuthMiddleware<StorageRequestContext>, protectedRoutes: RouteTable
) {
    let unknown = router.group().add(middleware: auth)
    let methods: [HTTPRequest.Method] = [.get, .head, .put, .post, .delete, .patch, .options, .trace, .connect]
    let refuse: @Sendable (Request, StorageRequestContext) async throws -> Response = { _, _ in
        throw HTTPError(.notFound)
    }
    for method in methods {
        for path: RouterPath in ["api/v1", "api/v1/**"] { unknown.on(path, method: method, use: refuse) }
    }
    // The router matches a known path before its method and does not fall back to the wildcard.
    for route in protectedRoutes.routes {
        for method in methods where !route.methods.contains(method.rawValue) {
            if method == .head, route.methods.contains("GET") { continue }  // generated from GET
            unknown.on(RouterPath(stringLiteral: route.path), method: method, use: refuse)
        }
    }
}
