/// The OpenAPI 3.1 description of the storage service API, served at `GET /openapi.yaml`.
///
/// It is the file `Services/Storage/Resources/openapi.yaml`, which SwiftPM embeds in the binary
/// (`.embedInCode`: no resource bundle to ship, no build plugin). `OpenAPITests` fails when a route
/// exists that this document does not describe, or the reverse, and `scripts/schemathesis.sh` fuzzes
/// the running service against it: edit them together.
///
/// The served document says what the running configuration does: a template line that ends in
/// `  # when: CONDITION` is kept (without the marker) only when the condition holds, so with no token
/// configured there is no security requirement and no 401, and 403 appears only with a read-only token.
enum OpenAPIDocument {
    /// The media type the document is served with.
    static let contentType = "application/yaml"

    /// What the served document depends on.
    struct Variant: Equatable, Sendable {
        /// `STORAGE_API_TOKEN` is set: bearer auth is required (401 without it).
        var authentication: Bool
        /// `STORAGE_READ_TOKEN` is set too: writes with it are 403.
        var readOnlyToken: Bool

        init(authentication: Bool, readOnlyToken: Bool) {
            self.authentication = authentication
            self.readOnlyToken = authentication && readOnlyToken
        }

        init(_ configuration: StorageConfiguration) {
            self.init(authentication: configuration.apiTokens != nil, readOnlyToken: configuration.readToken != nil)
        }

        /// Whether a template line marked `# when: condition` belongs to this variant.
        func includes(_ condition: Substring) -> Bool {
            switch condition {
            case "auth": authentication
            case "no-auth": !authentication
            case "read-token": readOnlyToken
            case "api-token-only": authentication && !readOnlyToken
            default: preconditionFailure("unknown condition '\(condition)' in the OpenAPI template")
            }
        }
    }

    /// The document for `variant`: the template with its conditional lines resolved, without the comment at its
    /// top (which is for the people who edit the file).
    static func yaml(for variant: Variant) -> String {
        var lines: [Substring] = []
        var templateLines = template.split(separator: "\n", omittingEmptySubsequences: false)[...]
        while templateLines.last?.isEmpty == true { templateLines.removeLast() }
        for line in templateLines.drop(while: { $0.hasPrefix("#") }) {
            guard let marker = line.firstRange(of: "  # when: ") else {
                lines.append(line)
                continue
            }
            if variant.includes(line[marker.upperBound...]) { lines.append(line[..<marker.lowerBound]) }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Every variant in one text (`Resources/openapi.yaml`, embedded at build time); `yaml(for:)` resolves it.
    static let template = String(decoding: PackageResources.openapi_yaml, as: UTF8.self)
}
