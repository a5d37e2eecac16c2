import Hummingbird
import Logging
import ServiceSupport
import WatermarkCore

/// `POST /api/v1/sources/{source_id}/run`: asks for a run now (202), coalesced with one already requested. With
/// `COLLECTION_API_TOKEN` it needs one of its tokens (401 otherwise): anyone who reached the port could run any
/// source, disabled ones too, back to back, spending the feeds' rate limits and credentials.
struct SourcesController<Context: RequestContext>: Sendable {
    let board: SourceBoard
    var apiTokens: APITokens?

    var endpoints: RouteCollection<Context> {
        let routes = RouteCollection(context: Context.self)
        routes.post(":source_id/run", use: run)
        return routes
    }

    @Sendable func run(_ request: Request, context: Context) async throws -> EditedResponse<RunAccepted> {
        var caller: String?
        if let apiTokens {
            guard let presented = APITokens.bearer(request.headers[.authorization]),
                let name = apiTokens.name(of: presented)
            else {
                context.logger.notice("run refused: missing or wrong token", metadata: ["path": "\(request.uri.path)"])
                throw APIError(
                    .unauthorized, code: "unauthorized",
                    message: "asking for a run needs Authorization: Bearer <a token of COLLECTION_API_TOKEN>")
            }
            caller = name
        }
        let text = try context.parameters.require("source_id")
        guard let id = try? SourceID(text) else {
            throw APIError(
                .badRequest, code: "invalid_source_id",
                message: "\"\(text.prefix(140))\" is not a source id (1 to 128 of A-Z a-z 0-9 . _ : -)"
            )
        }
        switch await board.trigger(id) {
        case .accepted:
            context.logger.info("run requested", metadata: ["source_id": "\(id)", "caller": "\(caller ?? "-")"])
            return EditedResponse(status: .accepted, response: RunAccepted(sourceID: id.rawValue))
        case .alreadyRunning:
            throw APIError(
                .conflict, code: "already_running", message: "source \(id) is running; try again when it ends")
        case .unknownSource:
            throw APIError(.notFound, code: "source_not_found", message: "no source \(id) in the configuration")
        case .cannotRun(let reason):
            throw APIError(.conflict, code: "source_not_runnable", message: "source \(id) cannot run: \(reason)")
        }
    }
}

/// The body of an accepted run request.
struct RunAccepted: ResponseEncodable, Sendable {
    let sourceID: String
    let status = "accepted"

    enum CodingKeys: String, CodingKey {
        case status
        case sourceID = "source_id"
    }
}
