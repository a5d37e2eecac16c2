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

    @Test("every route is in the document and every documented operation is a route")
    func routesMatchDocument() throws {
        let documented = Self.documentedOperations(OpenAPIDocument.yaml)
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

    @Test("every $ref names a component the document defines")
    func referencesResolve() throws {
        let yaml = OpenAPIDocument.yaml
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
        for header in ["ETag", "If-Match", "If-None-Match", "Idempotency-Key", "Lease-Token", "Idempotent-Replayed"] {
            #expect(OpenAPIDocument.yaml.contains(header), "\(header)")
        }
        for status in ["400", "401", "403", "404", "409", "412", "413", "415", "503"] {
            #expect(OpenAPIDocument.yaml.contains("\"\(status)\":"), "\(status)")
        }
    }

    @Test("GET /openapi.yaml serves the document as YAML, without a token even when tokens are set")
    func served() async throws {
        var configuration = StorageConfiguration()
        configuration.host = "127.0.0.1"
        configuration.port = 0
        configuration.apiToken = "write-secret"
        let app = try await buildApplication(
            configuration: configuration, store: MemoryWatermarkStore(policy: WatermarkPolicy()),
            logger: Logger(label: "test")
        )
        try await app.test(.router) { client in
            let response = try await client.execute(uri: "/openapi.yaml", method: .get)
            #expect(response.status == .ok)
            #expect(response.headers[.contentType] == "application/yaml")
            #expect(String(buffer: response.body) == OpenAPIDocument.yaml)
            #expect(String(buffer: response.body).hasPrefix("openapi: 3.1.0\n"))
            let wrongMethod = try await client.execute(uri: "/openapi.yaml", method: .post)
            #expect(wrongMethod.status == .methodNotAllowed)
            #expect(wrongMethod.headers[.allow] == "GET, HEAD")
        }
    }
}
