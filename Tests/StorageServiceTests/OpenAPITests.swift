import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import TestSupport
import Testing
import WatermarkCore

@testable import StorageService

/// The OpenAPI document against the router: every route is described, nothing described is missing,
/// every reference resolves, and `/openapi.yaml` serves the document without a token.
@Suite("OpenAPI document")
struct OpenAPITests {
    /// The `paths:` of the document as `METHOD path` pairs, read with a small line parser: paths are the
    /// keys indented by two spaces under `paths:`, operations the HTTP method keys four spaces in.
    static func documentedOperations(_ yaml: String) -> Set<String> {
        let methods: Set<String> = ["get", "put", "post", "delete", "patch", "head", "options", "trace"]
        var operations = Set<String>()
        var inPaths = false
        var currentPath: String?
        for line in yaml.split(separator: "\n", omittingEmptySubsequences: true) {
            let indent = line.prefix { $0 == " " }.count
            let key = line.trimmingCharacters(in: .whitespaces)
            if indent == 0 {
                inPaths = key == "paths:"
                currentPath = nil
                continue
            }
            guard inPaths, key.hasSuffix(":") else { continue }
            let name = String(key.dropLast())
            if indent == 2, name.hasPrefix("/") {
                currentPath = name
            } else if indent == 4, let currentPath, methods.contains(name) {
                operations.insert("\(name.uppercased()) \(currentPath)")
            }
        }
        return operations
    }

    /// The router's routes as `METHOD path`, with Hummingbird's `:name` parameters written `{name}`.
    static func routedOperations() throws -> Set<String> {
        let table = RouteTable()
        _ = buildRouter(
            configuration: StorageConfiguration(),
            store: MemoryWatermarkStore(policy: WatermarkPolicy()),
            metrics: StorageMetrics(),
            routes: table
        )
        var operations = Set<String>()
        for route in table.routes {
            let path = route.path.split(separator: "/").map { segment in
                segment.hasPrefix(":") ? "{\(segment.dropFirst())}" : String(segment)
            }
            for method in route.methods { operations.insert("\(method) /\(path.joined(separator: "/"))") }
        }
        return operations
    }

    /// Every document the service can serve: no token, an API token, an API and a read-only token.
    static let variants: [OpenAPIDocument.Variant] = [
        .init(authentication: false, readOnlyToken: false), .init(authentication: true, readOnlyToken: false),
        .init(authentication: true, readOnlyToken: true),
    ]

    @Test("every route is in the document and every documented operation is a route", arguments: variants)
    func routesMatchDocument(variant: OpenAPIDocument.Variant) throws {
        let documented = Self.documentedOperations(OpenAPIDocument.yaml(for: variant))
        let routed = try Self.routedOperations()
        #expect(!routed.isEmpty)
        #expect(routed.subtracting(documented).sorted() == [], "routes the document does not describe")
        #expect(documented.subtracting(routed).sorted() == [], "documented operations with no route")
        // The contract's endpoints are all there (guards the parser against reading nothing).
        for operation in [
            "GET /health", "GET /status", "GET /metrics", "GET /openapi.yaml", "GET /api/v1/watermarks",
            "GET /api/v1/watermarks/{source_id}", "PUT /api/v1/watermarks/{source_id}",
            "DELETE /api/v1/watermarks/{source_id}", "GET /api/v1/watermarks/{source_id}/history",
            "POST /api/v1/watermarks/{source_id}/lease", "DELETE /api/v1/watermarks/{source_id}/lease",
        ] {
            #expect(documented.contains(operation), "\(operation)")
        }
    }

    @Test("the parser notices a route missing from the document")
    func parserSeesDifferences() {
        let yaml = """
            openapi: 3.1.0
            paths:
              /health:
                get:
                  responses: {}
              /api/v1/watermarks/{source_id}:
                parameters: []
                put:
                  responses: {}
            components:
              schemas:
                get:
                  type: string
            """
        #expect(Self.documentedOperations(yaml) == ["GET /health", "PUT /api/v1/watermarks/{source_id}"])
    }

    @Test("every $ref names a component the document defines", arguments: variants)
    func referencesResolve(variant: OpenAPIDocument.Variant) throws {
        let yaml = OpenAPIDocument.yaml(for: variant)
        let regex = try NSRegularExpression(pattern: ##"\$ref: "#/components/([a-zA-Z]+)/([A-Za-z]+)""##)
        let matches = regex.matches(in: yaml, range: NSRange(yaml.startIndex..., in: yaml))
        #expect(matches.count > 20)
        let lines = yaml.split(separator: "\n").map(String.init)
        for match in matches {
            guard let kindRange = Range(match.range(at: 1), in: yaml),
                let nameRange = Range(match.range(at: 2), in: yaml)
            else { continue }
            let kind = String(yaml[kindRange])
            let name = String(yaml[nameRange])
            // Component sections are at two spaces, their entries at four.
            guard let section = lines.firstIndex(of: "  \(kind):") else {
                Issue.record("no components section '\(kind)'")
                continue
            }
            let entries = lines[(section + 1)...].prefix { $0.hasPrefix("    ") || $0.isEmpty }
            #expect(entries.contains { $0 == "    \(name):" || $0.hasPrefix("    \(name): ") }, "\(kind)/\(name)")
        }
    }

    @Test("the headers of the contract are described")
    func headersDescribed() {
        let yaml = OpenAPIDocument.yaml(for: .init(authentication: true, readOnlyToken: true))
        for header in ["ETag", "If-Match", "If-None-Match", "Idempotency-Key", "Lease-Token", "Idempotent-Replayed"] {
            #expect(yaml.contains(header), "\(header)")
        }
        for status in ["400", "401", "403", "404", "409", "412", "413", "415", "503"] {
            #expect(yaml.contains("\"\(status)\":"), "\(status)")
        }
    }

    /// The response statuses an operation declares, by `METHOD path`, read like `documentedOperations`.
    static func declaredStatuses(_ yaml: String) -> [String: Set<String>] {
        var statuses: [String: Set<String>] = [:]
        var path: String?
        var operation: String?
        var inPaths = false
        for line in yaml.split(separator: "\n") {
            let indent = line.prefix { $0 == " " }.count
            let key = line.trimmingCharacters(in: .whitespaces)
            if indent == 0 { inPaths = key == "paths:" }
            guard inPaths else { continue }
            if indent == 2 { path = String(key.dropLast()) }
            if indent == 4 { operation = path.map { "\(key.dropLast().uppercased()) \($0)" } }
            if indent == 8, let operation, key.hasPrefix("\""), let end = key.dropFirst().firstIndex(of: "\"") {
                statuses[operation, default: []].insert(String(key[key.index(after: key.startIndex)..<end]))
            }
        }
        return statuses
    }

    @Test("the Timestamp pattern and the service's parser agree on what they refuse beyond date-time")
    func timestampPatternMatchesParser() throws {
        let yaml = OpenAPIDocument.yaml(for: .init(authentication: false, readOnlyToken: false))
        let line = try #require(
            yaml.split(separator: "\n").first { $0.contains("pattern: '^[0-9]{4}-") && $0.contains("[0-5][0-9]") })
        let pattern = String(line.split(separator: "'")[1])
        let regex = try NSRegularExpression(pattern: pattern)
        func matches(_ text: String) -> Bool {
            regex.firstMatch(in: text, range: NSRange(text.startIndex..., in: text)) != nil
        }
        for valid in [
            "2020-01-01T00:00:00Z", "2020-01-01t00:00:00z", "2020-01-01T00:00:00.123456789+05:30",
            "2020-01-01T00:00:00-00:00", "0000-01-01T00:00:00Z", "9999-12-31T23:59:59.999999999Z",
        ] {
            #expect(matches(valid) && (try? Timestamp(rfc3339: valid)) != nil, "\(valid)")
        }
        // date-time allows these; the service does not, and neither does the pattern.
        for refused in ["2020-12-31T23:59:60Z", "2020-01-01T00:00:00.1234567891Z"] {
            #expect(!matches(refused) && (try? Timestamp(rfc3339: refused)) == nil, "\(refused)")
        }
    }

    @Test("without a token the document requires no authentication and declares no 401 or 403")
    func documentWithoutToken() {
        let yaml = OpenAPIDocument.yaml(for: .init(authentication: false, readOnlyToken: false))
        #expect(yaml.contains("\nsecurity: []\n"))
        #expect(!yaml.contains("\n  - bearer: []"))
        #expect(yaml.contains("accepts requests without\n    authentication"))
        #expect(!yaml.contains("\"401\""))
        #expect(!yaml.contains("\"403\""))
        #expect(!yaml.contains("# when:"))
        let statuses = Self.declaredStatuses(yaml)
        #expect(statuses["DELETE /api/v1/watermarks/{source_id}"] == ["204", "400", "404", "409", "412", "503"])
    }

    @Test("with a token bearer auth is required; 403 is declared only with a read-only token")
    func documentWithTokens() {
        let api = OpenAPIDocument.yaml(for: .init(authentication: true, readOnlyToken: false))
        #expect(api.contains("\nsecurity:\n  - bearer: []\n"))
        #expect(!api.contains("\nsecurity: []\n"))
        #expect(!api.contains("accepts requests without"))
        #expect(!api.contains("\"403\""))
        #expect(!api.contains("# when:"))
        let apiStatuses = Self.declaredStatuses(api)
        #expect(apiStatuses["GET /status"] == ["200", "401", "503"])
        #expect(apiStatuses["GET /health"] == ["200", "503"])
        let read = OpenAPIDocument.yaml(for: .init(authentication: true, readOnlyToken: true))
        #expect(read.contains("STORAGE_READ_TOKEN (GET and HEAD only; else 403)"))
        let readStatuses = Self.declaredStatuses(read)
        #expect(
            readStatuses["PUT /api/v1/watermarks/{source_id}"]
                == ["200", "201", "400", "401", "403", "409", "412", "413", "415", "503"])
        #expect(readStatuses["GET /api/v1/watermarks/{source_id}"] == ["200", "400", "401", "404", "503"])
        // A read-only token without an API token cannot be configured; the variant folds it away.
        #expect(OpenAPIDocument.Variant(authentication: false, readOnlyToken: true).readOnlyToken == false)
    }

    @Test("GET /openapi.yaml serves the document of the running configuration, without a token")
    func served() async throws {
        var configuration = StorageConfiguration()
        configuration.host = "127.0.0.1"
        configuration.port = 0
        configuration.apiToken = "write-secret"
        let expected = OpenAPIDocument.yaml(for: .init(configuration))
        let app = try await buildApplication(
            configuration: configuration, store: MemoryWatermarkStore(policy: WatermarkPolicy()),
            logger: Logger(label: "test")
        )
        try await app.test(.router) { client in
            let response = try await client.execute(uri: "/openapi.yaml", method: .get)
            #expect(response.status == .ok)
            #expect(response.headers[.contentType] == "application/yaml")
            #expect(String(buffer: response.body) == expected)
            #expect(String(buffer: response.body).contains("\nsecurity:\n  - bearer: []\n"))
            #expect(String(buffer: response.body).hasPrefix("openapi: 3.1.0\n"))
            let wrongMethod = try await client.execute(uri: "/openapi.yaml", method: .post)
            #expect(wrongMethod.status == .methodNotAllowed)
            #expect(wrongMethod.headers[.allow] == "GET, HEAD")
        }
    }

    @Test("a service without a token serves the document that requires none")
    func servedWithoutToken() async throws {
        var configuration = StorageConfiguration()
        configuration.host = "127.0.0.1"
        configuration.port = 0
        let app = try await buildApplication(
            configuration: configuration, store: MemoryWatermarkStore(policy: WatermarkPolicy()),
            logger: Logger(label: "test")
        )
        try await app.test(.router) { client in
            let response = try await client.execute(uri: "/openapi.yaml", method: .get)
            #expect(response.status == .ok)
            let body = String(buffer: response.body)
            #expect(body == OpenAPIDocument.yaml(for: .init(authentication: false, readOnlyToken: false)))
            #expect(body.contains("\nsecurity: []\n"))
            // What the document says holds: an API call without a token is served.
            let list = try await client.execute(uri: "/api/v1/watermarks", method: .get)
            #expect(list.status == .ok)
        }
    }
}
