import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import WatermarkCore
import WatermarkStores

/// `/health`, `/status`, `/metrics` and `/openapi.yaml`: what operators, orchestrators and API clients look at.
struct SystemController<Context: RequestContext> {
    static var serviceVersion: String { "1.0.0" }

    let store: any WatermarkStore
    let metrics: StorageMetrics
    let startedAt: ContinuousClock.Instant
    let environment: StorageConfiguration.Environment
    /// `METRICS_SOURCE_LIMIT`: how many sources `/metrics` shows one by one (0: none).
    var metricsSourceLimit = 1000
    /// Whether a request may see data (a token, when the service has tokens): `/metrics` is open, but its
    /// per-source series name sources and their marks, so they are shown only to such a request.
    var mayRead: @Sendable (Request) -> Bool = { _ in true }
    /// The OpenAPI document for the running configuration, rendered once.
    let openAPIDocument: ByteBuffer

    /// `open`: the routes that never need a token (they carry no data); `protected`: the group behind the
    /// token, where `/status` goes.
    func addRoutes(open: some RouterMethods<Context>, protected: some RouterMethods<Context>) {
        open.get("health", use: health)
        open.get("metrics", use: metricsText)
        open.get("openapi.yaml", use: openAPI)
        protected.get("status", use: status)
    }

    /// 200 when the database answers (and, after a failed write, accepts a write again); 503 otherwise.
    ///
    /// `/health` needs no token, and what went wrong names the database (PostgreSQL's host, port and user, the SQLite
    /// file's path): with tokens configured, a request without one is told only that the database cannot be used.
    @Sendable func health(request: Request, context: Context) async throws -> EditedResponse<Health> {
        do {
            try await store.checkHealth()
            return EditedResponse(response: Health(status: "healthy"))
        } catch {
            let detail = (error as? WatermarkError)?.message ?? "\(error)"
            context.logger.warning("Health check failed", metadata: ["error": "\(detail)"])
            let shown = mayRead(request) ? detail : Self.undisclosedHealthError
            return EditedResponse(status: .serviceUnavailable, response: Health(status: "unhealthy", error: shown))
        }
    }

    static var undisclosedHealthError: String {
        "the database cannot be used (why is in the service's log, and in this answer to a request with a token)"
    }

    @Sendable func status(request: Request, context: Context) async throws -> Status {
        let uptime = ContinuousClock.now - startedAt
        return Status(
            version: Self.serviceVersion, environment: environment.rawValue,
            uptimeSeconds: uptime.components.seconds, database: try await store.info(),
            watermarks: try await store.summary()
        )
    }

    @Sendable func metricsText(request: Request, context: Context) async throws -> Response {
        // A failing database must not hide the request metrics: the counts are then left out.
        let summary = try? await store.summary()
        var buffers = [ByteBuffer(string: metrics.render(summary: summary))]
        if metricsSourceLimit > 0, mayRead(request) {
            let (store, limit) = (store, metricsSourceLimit)
            buffers.append(
                await metrics.renderSources { try? await store.list(WatermarkQuery(limit: limit)).watermarks })
        }
        let body = buffers
        return Response(
            status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
            body: .init(contentLength: body.reduce(0) { $0 + $1.readableBytes }) { writer in
                for buffer in body { try await writer.write(buffer) }
                try await writer.finish(nil)
            }
        )
    }

    /// The API description, open like `/health`: it says how to call the API, not what is stored.
    @Sendable func openAPI(request: Request, context: Context) async throws -> Response {
        Response(
            status: .ok, headers: [.contentType: OpenAPIDocument.contentType], body: .init(byteBuffer: openAPIDocument)
        )
    }
}

/// The body of `/health`.
struct Health: ResponseEncodable {
    let status: String
    var error: String?
}

/// The body of `/status`.
struct Status: ResponseEncodable {
    let service = "storage-service"
    let version: String
    let environment: String
    let uptimeSeconds: Int64
    let database: StoreInfo
    let watermarks: WatermarkSummary
    enum CodingKeys: String, CodingKey {
        case service, version, environment, database, watermarks
        case uptimeSeconds = "uptime_seconds"
    }
}
