import Foundation
import NIOHTTP1
import Testing

/// Tokens against the real process: every protected call without the right token is 401, the read token
/// cannot write (403), tokens never reach the logs, and `/health` and `/metrics` leak no data.
@Suite("Reliability: access", .serialized, .timeLimit(.minutes(2)))
struct AccessTests {
    static let apiToken = "api-TOKEN-7d1f0c2b9e4a"
    static let readToken = "read-TOKEN-5a8e3f6c1d0b"
    static let secretSource = "confidential-feed-4711"

    /// Every protected operation: method, path, body.
    static let protected: [(HTTPMethod, String, String?)] = [
        (.GET, "/status", nil),
        (.GET, "/api/v1/watermarks", nil),
        (.GET, "/api/v1/watermarks?limit=5&status=success", nil),
        (.GET, "/api/v1/watermarks/\(secretSource)", nil),
        (.PUT, "/api/v1/watermarks/\(secretSource)", #"{"timestamp":"2025-01-01T00:00:00Z","status":"success"}"#),
        (.DELETE, "/api/v1/watermarks/\(secretSource)", nil),
        (.GET, "/api/v1/watermarks/\(secretSource)/history", nil),
        (.POST, "/api/v1/watermarks/\(secretSource)/lease", #"{"owner":"x"}"#),
        (.DELETE, "/api/v1/watermarks/\(secretSource)/lease", nil),
        (.GET, "/api/v1", nil),
        (.GET, "/api/v1/unknown", nil),
        (.PATCH, "/api/v1/watermarks/\(secretSource)", "{}"),
    ]

    static let wrongCredentials: [[(String, String)]] = [
        [],
        [("Authorization", "Bearer wrong")],
        [("Authorization", "Bearer \(apiToken.dropLast())")],
        [("Authorization", "Bearer \(apiToken)x")],
        [("Authorization", "Bearer \(apiToken.uppercased())")],
        [("Authorization", "Basic \(Data("user:\(apiToken)".utf8).base64EncodedString())")],
        [("Authorization", apiToken)],
        [("Authorization", "Bearer")],
        [("X-Api-Token", apiToken)],
    ]

    @Test("without the right token every /api/v1 and /status call is 401; the read token cannot write")
    func tokens() async throws {
        let environment = [
            "STORAGE_API_TOKEN": Self.apiToken, "STORAGE_READ_TOKEN": Self.readToken, "LOG_LEVEL": "trace",
        ]
        try await withStorageService(environment: environment) { harness in
            let http = harness.http
            let write = [("Authorization", "Bearer \(Self.apiToken)")]
            let read = [("Authorization", "Bearer \(Self.readToken)")]
            let created = try await http.send(
                .PUT, "/api/v1/watermarks/\(Self.secretSource)",
                json: #"{"timestamp":"2025-01-01T00:00:00Z","status":"success","records_collected":99}"#, headers: write
            )
            #expect(created.status == 201)
            let stored = try await http.send(.GET, "/api/v1/watermarks/\(Self.secretSource)", headers: write)

            var refusals = 0
            for (method, path, body) in Self.protected {
                for credentials in Self.wrongCredentials {
                    let reply = try await http.send(method, path, json: body, headers: credentials)
                    #expect(reply.status == 401, "\(method) \(path) with \(credentials.map(\.0))")
                    #expect(reply.text.contains("\"unauthorized\""))
                    refusals += 1
                }
                // The read token reads, and is refused (403) for every change.
                let reply = try await http.send(method, path, json: body, headers: read)
                if method == .GET {
                    #expect(reply.status != 401 && reply.status != 403, "\(method) \(path): \(reply.status)")
                } else {
                    #expect(reply.status == 403, "\(method) \(path) with the read token: \(reply.status)")
                    #expect(reply.text.contains("\"forbidden\""))
                }
            }
            // Nothing refused changed anything.
            #expect(
                try await http.send(.GET, "/api/v1/watermarks/\(Self.secretSource)", headers: write).body == stored.body
            )

            // /health, /metrics and /openapi.yaml need no token and carry no data.
            for path in ["/health", "/metrics", "/openapi.yaml"] {
                let reply = try await http.send(.GET, path)
                #expect(reply.status == 200, "\(path)")
                for secret in [Self.secretSource, Self.apiToken, Self.readToken, harness.directory.path] {
                    #expect(!reply.text.contains(secret), "\(path) leaks \(secret)")
                }
            }
            // With a token (the read one will do), /metrics adds the per-source series, which name sources.
            let scraped = try await http.send(.GET, "/metrics", headers: read)
            #expect(scraped.text.contains(#"storage_watermark_timestamp_seconds{source_id="\#(Self.secretSource)"}"#))
            #expect(
                !(try await http.send(.GET, "/metrics", headers: [("Authorization", "Bearer nope")])).text
                    .contains(Self.secretSource))

            // Tokens never reach the log, at the most verbose level, whatever was sent. A last refused request
            // names a path of its own: once its line is in the log, so are the lines of every request before it.
            let fence = "/api/v1/watermarks/log-fence-\(UUID().uuidString)"
            #expect(try await http.send(.GET, fence).status == 401)
            try await waitUntil("the last request's line in the log", timeout: .seconds(10)) {
                harness.allLogs.contains(fence)
            }
            let log = harness.allLogs
            #expect(log.contains("Request refused"), "the refusals are logged")
            for secret in [Self.apiToken, Self.readToken, String(Self.apiToken.dropLast()), Self.apiToken.uppercased()]
            {
                #expect(!log.contains(secret), "the log contains a token")
            }
            #expect(!log.contains(Data("user:\(Self.apiToken)".utf8).base64EncodedString()))
            reportFigures("access", ["unauthorized_requests_refused": refusals])
        }
    }
}
