import Foundation
import HTTPServerSupport
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import ServiceSupport
import TestSupport
import Testing
import WatermarkCore
import WatermarkStores
import Yams

@testable import StorageService

/// The OpenAPI document against the router: every route is described, nothing described is missing,
/// every reference resolves, and `/openapi.yaml` serves the document without a token.
@Suite("OpenAPI document")
struct OpenAPITests {
    static let methods: Set<String> = ["get", "put", "post", "delete", "patch", "head", "options", "trace"]

    /// The document parsed by Yams.
    static func parse(_ yaml: String) throws -> [String: Any] {
        try #require(try Yams.load(yaml: yaml) as? [String: Any], "the document is not a YAML mapping")
    }

    /// The operations of the document's `paths`, by `METHOD path`.
    static func operations(_ yaml: String) throws -> [String: [String: Any]] {
        let paths = try #require(try parse(yaml)["paths"] as? [String: Any], "no paths")
        var operations: [String: [String: Any]] = [:]
        for (path, item) in paths {
            for (method, operation) in (item as? [String: Any]) ?? [:] where methods.contains(method) {
                operations["\(method.uppercased()) \(path)"] = operation as? [String: Any] ?? [:]
            }
        }
        return operations
    }

    /// The document's operations as `METHOD path` pairs.
    static func documentedOperations(_ yaml: String) throws -> Set<String> {
        Set(try operations(yaml).keys)
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
        let documented = try Self.documentedOperations(OpenAPIDocument.yaml(for: variant))
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

    @Test("the reading of operations sees paths and methods, not components")
    func parserSeesDifferences() throws {
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
        #expect(try Self.documentedOperations(yaml) == ["GET /health", "PUT /api/v1/watermarks/{source_id}"])
    }

    /// Every value of a `$ref` key, and every link's `operationId`, anywhere in `node`.
    static func references(in node: Any, refs: inout [String], linkedOperations: inout [String]) {
        if let mapping = node as? [String: Any] {
            if let ref = mapping["$ref"] as? String { refs.append(ref) }
            if let links = mapping["links"] as? [String: Any] {
                for case let link as [String: Any] in links.values {
                    if let id = link["operationId"] as? String { linkedOperations.append(id) }
                }
            }
            for value in mapping.values { references(in: value, refs: &refs, linkedOperations: &linkedOperations) }
        } else if let sequence = node as? [Any] {
            for value in sequence { references(in: value, refs: &refs, linkedOperations: &linkedOperations) }
        }
    }

    @Test("every $ref names a component the document defines, every link an operation", arguments: variants)
    func referencesResolve(variant: OpenAPIDocument.Variant) throws {
        let yaml = OpenAPIDocument.yaml(for: variant)
        let document = try Self.parse(yaml)
        var refs: [String] = []
        var linked: [String] = []
        Self.references(in: document, refs: &refs, linkedOperations: &linked)
        #expect(refs.count > 20)
        #expect(linked.count >= 7)
        let components = try #require(document["components"] as? [String: Any])
        for ref in Set(refs) {
            let parts = ref.split(separator: "/").map(String.init)
            guard parts.count == 4, parts[0] == "#", parts[1] == "components" else {
                Issue.record("\(ref) is not a local component reference")
                continue
            }
            #expect((components[parts[2]] as? [String: Any])?[parts[3]] != nil, "\(ref)")
        }
        let operationIDs = Set(try Self.operations(yaml).values.compactMap { $0["operationId"] as? String })
        for id in linked { #expect(operationIDs.contains(id), "link to unknown operation \(id)") }
    }

    /// The header parameters an operation declares (its own and its path's, `$ref`s resolved), and the headers
    /// each of its responses declares, by status.
    static func headers(_ yaml: String, _ operation: String) throws -> (
        request: Set<String>, responses: [String: Set<String>]
    ) {
        let document = try parse(yaml)
        let parameters = ((document["components"] as? [String: Any])?["parameters"] as? [String: Any]) ?? [:]
        let parts = operation.split(separator: " ", maxSplits: 1).map(String.init)
        let item = try #require((document["paths"] as? [String: Any])?[parts[1]] as? [String: Any])
        let op = try #require(item[parts[0].lowercased()] as? [String: Any])
        var request = Set<String>()
        for case let parameter as [String: Any] in (item["parameters"] as? [Any] ?? [])
            + (op["parameters"] as? [Any] ?? [])
        {
            let resolved = (parameter["$ref"] as? String).flatMap { parameters[String($0.split(separator: "/").last!)] }
            let definition = (resolved as? [String: Any]) ?? parameter
            if definition["in"] as? String == "header", let name = definition["name"] as? String {
                request.insert(name)
            }
        }
        var responses: [String: Set<String>] = [:]
        for (status, response) in (op["responses"] as? [String: Any]) ?? [:] {
            responses[status] = Set((((response as? [String: Any])?["headers"] as? [String: Any]) ?? [:]).keys)
        }
        return (request, responses)
    }

    @Test("each header of the contract is declared on the operations that carry it")
    func headersDescribed() throws {
        let yaml = OpenAPIDocument.yaml(for: .init(authentication: true, readOnlyToken: true))
        let put = try Self.headers(yaml, "PUT /api/v1/watermarks/{source_id}")
        #expect(put.request == ["If-Match", "If-None-Match", "Lease-Token", "Idempotency-Key", "X-Reason"])
        for status in ["200", "201"] { #expect(put.responses[status] == ["ETag", "Idempotent-Replayed"], "\(status)") }
        let delete = try Self.headers(yaml, "DELETE /api/v1/watermarks/{source_id}")
        #expect(delete.request == ["If-Match", "Lease-Token", "X-Reason"])
        let get = try Self.headers(yaml, "GET /api/v1/watermarks/{source_id}")
        #expect(get.request.isEmpty && get.responses["200"] == ["ETag"])
        #expect(try Self.headers(yaml, "DELETE /api/v1/watermarks/{source_id}/lease").request == ["Lease-Token"])
        #expect(try Self.headers(yaml, "POST /api/v1/watermarks/{source_id}/lease").request.isEmpty)
        for status in ["400", "401", "403", "404", "409", "412", "413", "415", "503"] {
            #expect(yaml.contains("\"\(status)\":"), "\(status)")
        }
    }

    /// The response statuses each operation declares, by `METHOD path`.
    static func declaredStatuses(_ yaml: String) throws -> [String: Set<String>] {
        try operations(yaml).mapValues { Set((($0["responses"] as? [String: Any]) ?? [:]).keys) }
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
    func documentWithoutToken() throws {
        let yaml = OpenAPIDocument.yaml(for: .init(authentication: false, readOnlyToken: false))
        #expect(yaml.contains("\nsecurity: []\n"))
        #expect(!yaml.contains("\n  - bearer: []"))
        #expect(yaml.contains("accepts requests without\n    authentication"))
        #expect(!yaml.contains("\"401\""))
        #expect(!yaml.contains("\"403\""))
        #expect(!yaml.contains("# when:"))
        let statuses = try Self.declaredStatuses(yaml)
        #expect(statuses["DELETE /api/v1/watermarks/{source_id}"] == ["204", "400", "404", "409", "412", "503"])
    }

    @Test("with a token bearer auth is required; 403 is declared only with a read-only token")
    func documentWithTokens() throws {
        let api = OpenAPIDocument.yaml(for: .init(authentication: true, readOnlyToken: false))
        #expect(api.contains("\nsecurity:\n  - bearer: []\n"))
        #expect(!api.contains("\nsecurity: []\n"))
        #expect(!api.contains("accepts requests without"))
        #expect(!api.contains("\"403\""))
        #expect(!api.contains("# when:"))
        let apiStatuses = try Self.declaredStatuses(api)
        #expect(apiStatuses["GET /status"] == ["200", "401", "503"])
        #expect(apiStatuses["GET /health"] == ["200", "503"])
        let read = OpenAPIDocument.yaml(for: .init(authentication: true, readOnlyToken: true))
        #expect(read.contains("STORAGE_READ_TOKEN (GET and HEAD only; else 403)"))
        let readStatuses = try Self.declaredStatuses(read)
        #expect(
            readStatuses["PUT /api/v1/watermarks/{source_id}"]
                == ["200", "201", "400", "401", "403", "409", "412", "413", "415", "503"])
        #expect(readStatuses["GET /api/v1/watermarks/{source_id}"] == ["200", "400", "401", "404", "503"])
        // A read-only token without an API token cannot be configured; the variant folds it away.
        #expect(OpenAPIDocument.Variant(authentication: false, readOnlyToken: true).readOnlyToken == false)
    }

    /// The app on a memory store with `apiToken` (none: open), and the configuration it was built with.
    static func app(apiToken: String?) async throws -> (some ApplicationProtocol, StorageConfiguration) {
        var configuration = StorageConfiguration()
        configuration.host = "127.0.0.1"
        configuration.port = 0
        configuration.apiTokens = apiToken.map { APITokens([.init(name: "api", token: $0)]) }
        let app = try await buildApplication(
            configuration: configuration, store: MemoryWatermarkStore(policy: WatermarkPolicy()),
            logger: Logger(label: "test")
        )
        return (app, configuration)
    }

    @Test("GET /openapi.yaml serves the document of the running configuration, without a token")
    func served() async throws {
        let (app, configuration) = try await Self.app(apiToken: "write-secret")
        let expected = OpenAPIDocument.yaml(for: .init(configuration))
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
        let (app, _) = try await Self.app(apiToken: nil)
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
