import Foundation
import ServiceSupport
import WatermarkCore

/// Reads and validates the sources file (`COLLECTION_CONFIG`, JSON).
///
/// Every problem is reported with the source and the field at fault (`source "otx" field "api_key_env": ...`),
/// unknown fields included, so a typo fails at start-up instead of silently using a default. Credentials are
/// read from the environment variables the file names, never from the file.
///
/// Format: `{"sources": [ {...}, ... ]}`; each source:
/// - `id` (required): the source id (1-128 of `A-Z a-z 0-9 . _ : -`), also the sink folder name.
/// - `type` (required): `taxii21`, `otx` or `directory`.
/// - `enabled` (true), `interval_seconds` (300), `lookback_seconds` (604800 = 7 days), `page_size` (100),
///   `overlap_seconds` (0; 60 for taxii21, 300 for otx), `stale_after_seconds` (7200), `timeout_seconds` (30),
///   `checkpoint_pages` (10) and
///   `checkpoint_seconds` (30): a long run moves the watermark after that many pages or seconds (0 turns either off).
/// - taxii21: `api_root`, `collection_id` (required); `username_env` + `password_env` (basic auth) or
///   `token_env` (bearer), or none of them; `versions` (`all`: every version of every object, or `last`).
/// - otx: `api_key_env` (required), `base_url` (`https://otx.alienvault.com`).
/// - directory: `path` (required; a relative path is relative to the service's working directory),
///   `timestamp_field` (`modified`), `fallback_timestamp_field` (`created`; `null` disables), `id_field` (`id`).
enum SourcesFile {
    static let commonKeys: Set<String> = [
        "id", "type", "enabled", "interval_seconds", "lookback_seconds", "page_size", "overlap_seconds",
        "stale_after_seconds", "timeout_seconds", "description", "checkpoint_pages", "checkpoint_seconds",
    ]
    static let typeKeys: [String: Set<String>] = [
        "taxii21": ["api_root", "collection_id", "username_env", "password_env", "token_env", "versions"],
        "otx": ["base_url", "api_key_env"],
        "directory": ["path", "timestamp_field", "fallback_timestamp_field", "id_field"],
    ]

    /// Loads the file at `path`.
    static func load(path: String, settings: Settings) throws(ConfigurationError) -> [SourceConfiguration] {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw ConfigurationError(
                "cannot read the sources file \(path) (COLLECTION_CONFIG): \(error.localizedDescription)")
        }
        let base = (path as NSString).deletingLastPathComponent
        return try parse(data, settings: settings, baseDirectory: base.isEmpty ? "." : base)
    }

    static func parse(
        _ data: Data, settings: Settings, baseDirectory: String = "."
    ) throws(ConfigurationError) -> [SourceConfiguration] {
        let root: Any
        do {
            root = try JSONSerialization.jsonObject(with: data)
        } catch {
            throw ConfigurationError("the sources file is not valid JSON: \(error.localizedDescription)")
        }
        guard let object = root as? [String: Any], let list = object["sources"] as? [Any] else {
            throw ConfigurationError("the sources file must be an object with a \"sources\" array")
        }
        if let unknown = object.keys.sorted().first(where: { $0 != "sources" }) {
            throw ConfigurationError("the sources file has an unknown field \"\(unknown)\" (only \"sources\")")
        }
        var result: [SourceConfiguration] = []
        var seen = Set<String>()
        for (index, element) in list.enumerated() {
            guard let entry = element as? [String: Any] else {
                throw ConfigurationError("sources[\(index)] must be an object")
            }
            let source = try parseSource(entry, index: index, settings: settings, baseDirectory: baseDirectory)
            guard seen.insert(source.id.rawValue).inserted else {
                throw ConfigurationError("source \"\(source.id)\" field \"id\": used by more than one source")
            }
            result.append(source)
        }
        return result
    }

    private static func parseSource(
        _ entry: [String: Any], index: Int, settings: Settings, baseDirectory: String
    ) throws(ConfigurationError) -> SourceConfiguration {
        guard let idText = entry["id"] as? String else {
            throw ConfigurationError("sources[\(index)] field \"id\": required, a string")
        }
        let id: SourceID
        do {
            id = try SourceID(idText)
        } catch {
            throw ConfigurationError(
                "sources[\(index)] field \"id\": \"\(idText)\" must be 1 to 128 characters of A-Z a-z 0-9 . _ : -"
            )
        }
        let fields = Fields(entry: entry, source: id.rawValue)
        var enabled = true
        if let flag = entry["enabled"] {
            guard let flag = flag as? NSNumber, flag.isBool else {
                throw fields.error("enabled", "must be true or false")
            }
            enabled = flag.boolValue
        }
        // A disabled source's credentials may be left unset (the shipped example lists sources to turn on): it loads,
        // and a request to run it is refused naming what is missing. An enabled one's are required at start.
        var unset: [String] = []
        func secret(_ field: String, _ variable: String) throws(ConfigurationError) -> String {
            do {
                return try fields.secret(field, variable, settings)
            } catch let error where !enabled && !variable.isEmpty {
                unset.append(error.message)
                return ""
            }
        }
        guard let type = try fields.string("type") else {
            throw fields.error("type", "required: taxii21, otx or directory")
        }
        guard let allowedTypeKeys = typeKeys[type] else {
            throw fields.error("type", "\"\(type)\" is not one of taxii21, otx, directory")
        }
        for key in entry.keys.sorted() where !commonKeys.contains(key) && !allowedTypeKeys.contains(key) {
            throw fields.error(key, "unknown field for a \(type) source")
        }

        let kind: SourceKind
        switch type {
        case "taxii21":
            guard let apiRoot = try fields.string("api_root") else { throw fields.error("api_root", "required") }
            try fields.checkURL("api_root", apiRoot)
            guard let collection = try fields.string("collection_id"), !collection.isEmpty else {
                throw fields.error("collection_id", "required")
            }
            var auth = SourceAuth.none
            let usernameEnv = try fields.string("username_env")
            let passwordEnv = try fields.string("password_env")
            let tokenEnv = try fields.string("token_env")
            if tokenEnv != nil, usernameEnv != nil || passwordEnv != nil {
                throw fields.error("token_env", "give either token_env or username_env + password_env, not both")
            }
            if let tokenEnv {
                auth = .bearer(Secret(try secret("token_env", tokenEnv)))
            } else if usernameEnv != nil || passwordEnv != nil {
                guard let usernameEnv else { throw fields.error("username_env", "required with password_env") }
                guard let passwordEnv else { throw fields.error("password_env", "required with username_env") }
                auth = .basic(
                    username: try secret("username_env", usernameEnv),
                    password: Secret(try secret("password_env", passwordEnv))
                )
            }
            var settings = TAXIISettings(apiRoot: apiRoot, collectionID: collection, auth: auth)
            if let text = try fields.string("versions") {
                guard let versions = TAXIIVersions(rawValue: text) else {
                    throw fields.error("versions", "\"\(text)\" is not one of all, last")
                }
                settings.versions = versions
            }
            kind = .taxii21(settings)
        case "otx":
            guard let keyEnv = try fields.string("api_key_env") else { throw fields.error("api_key_env", "required") }
            let key = Secret(try secret("api_key_env", keyEnv))
            var settings = OTXSettings(apiKey: key)
            if let base = try fields.string("base_url") {
                try fields.checkURL("base_url", base)
                settings.baseURL = base
            }
            kind = .otx(settings)
        default:
            guard let path = try fields.string("path"), !path.isEmpty else { throw fields.error("path", "required") }
            var settings = DirectorySettings(path: path)
            if let field = try fields.string("timestamp_field") { settings.timestampField = field }
            if entry.keys.contains("fallback_timestamp_field") {
                settings.fallbackTimestampField = try fields.string("fallback_timestamp_field")
            }
            if let field = try fields.string("id_field") { settings.idField = field }
            kind = .directory(settings)
        }

        var source = SourceConfiguration(id: id, kind: kind)
        switch kind {
        case .taxii21: source.overlap = SourceConfiguration.taxiiOverlap
        case .otx: source.overlap = SourceConfiguration.otxOverlap
        default: break
        }
        source.enabled = enabled
        source.cannotRun = unset.isEmpty ? nil : unset.joined(separator: "; ")
        if let value = try fields.seconds("interval_seconds", minimum: 1) { source.interval = value }
        if let value = try fields.seconds("lookback_seconds", minimum: 0) { source.lookback = value }
        if let value = try fields.seconds("overlap_seconds", minimum: 0) { source.overlap = value }
        if let value = try fields.seconds("stale_after_seconds", minimum: 1) { source.staleAfter = value }
        // At most 12 h: a run's lease lasts twice its timeout, and the storage grants a day at most.
        if let value = try fields.integer("timeout_seconds", range: 1...43_200) { source.timeout = .seconds(value) }
        if let value = try fields.integer("page_size", range: 1...10_000) { source.pageSize = value }
        if let value = try fields.integer("checkpoint_pages", range: 0...1_000_000) { source.checkpointPages = value }
        if let value = try fields.seconds("checkpoint_seconds", minimum: 0) { source.checkpointInterval = value }
        return source
    }

    /// Typed access to one source's fields, with errors that name the source and the field.
    private struct Fields {
        let entry: [String: Any]
        let source: String

        func error(_ field: String, _ detail: String) -> ConfigurationError {
            ConfigurationError("source \"\(source)\" field \"\(field)\": \(detail)")
        }

        func string(_ field: String) throws(ConfigurationError) -> String? {
            switch entry[field] {
            case nil, is NSNull: return nil
            case let text as String: return text
            default: throw error(field, "must be a string")
            }
        }

        func integer(_ field: String, range: ClosedRange<Int>) throws(ConfigurationError) -> Int? {
            switch entry[field] {
            case nil, is NSNull: return nil
            case let number as NSNumber where !number.isBool:
                let value = number.doubleValue
                guard value == value.rounded(), let int = Int(exactly: value), range.contains(int) else {
                    throw error(field, "must be a whole number from \(range.lowerBound) to \(range.upperBound)")
                }
                return int
            default: throw error(field, "must be a number")
            }
        }

        func seconds(_ field: String, minimum: Int) throws(ConfigurationError) -> Duration? {
            try integer(field, range: minimum...(100 * 365 * 86_400)).map { .seconds($0) }
        }

        func secret(_ field: String, _ variable: String, _ settings: Settings) throws(ConfigurationError) -> String {
            guard !variable.isEmpty else { throw error(field, "must name an environment variable") }
            guard let value = settings.text(variable) else {
                throw error(field, "environment variable \(variable) is not set")
            }
            return value
        }

        func checkURL(_ field: String, _ text: String) throws(ConfigurationError) {
            let components = URLComponents(string: text)
            // Credentials in the URL would be sent nowhere (the HTTP client ignores them) and shown everywhere the
            // URL is (errors, /status, the stored error message): they come from environment variables only.
            guard components?.user == nil, components?.password == nil else {
                throw error(field, "must not hold credentials (user:password@): name an environment variable")
            }
            guard let components, let scheme = components.scheme?.lowercased(),
                scheme == "http" || scheme == "https", components.host?.isEmpty == false
            else {
                throw error(field, text.contains("@") ? "is not an http(s) URL" : "\"\(text)\" is not an http(s) URL")
            }
        }
    }
}

extension NSNumber {
    /// JSON `true`/`false` come back from `JSONSerialization` as `NSNumber` too, with the `char` type code.
    fileprivate var isBool: Bool { String(cString: objCType) == "c" }
}

/// A start-up configuration problem; the message names what to fix.
struct ConfigurationError: Error, Sendable, CustomStringConvertible, Equatable {
    var message: String
    init(_ message: String) { self.message = message }
    var description: String { message }
}
