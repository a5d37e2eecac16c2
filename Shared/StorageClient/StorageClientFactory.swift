import AsyncHTTPClient
import Foundation
import Logging
import NIOSSL
import ServiceSupport
import WatermarkCore

/// The configuration keys the factory reads (through `Settings`: command-line flags, then the environment):
///
/// | key | default | meaning |
/// |---|---|---|
/// | `STORAGE_SERVICE_URL` | none | `http(s)://host:port` of the Storage Service; unset (or empty) gives the in-memory mock |
/// | `STORAGE_API_TOKEN` | none | bearer token sent to the service |
/// | `STORAGE_TIMEOUT_SECONDS` | 30 | timeout of each call, in seconds (fractions allowed) |
/// | `STORAGE_CA_PATH` | none | PEM file of a private CA to trust (with an `https://` URL), on top of the system's roots |
/// | `ENVIRONMENT` | development | `production` makes a missing `STORAGE_SERVICE_URL` a start-up error |
///
/// The mock keeps nothing across restarts, so it is only for development: it logs
/// `No storage service URL provided - using mock storage client` as a warning whenever it is chosen. With
/// `ENVIRONMENT=production`, a token and an `http://` URL it warns that the token crosses the network in clear text.
///
/// - Parameter httpClient: the process's `HTTPClient`, shut down by its owner; `nil` makes the storage client
///   create (and shut down) its own.
/// - Throws: `StorageClientConfigurationError` for an invalid URL or timeout, or no URL in production.
/// - Returns: an `HTTPStorageClient` (call `shutdown()` when done, see `StorageClient.shutdown()`) or an
///   `InMemoryStorageClient`.
public func makeStorageClient(
    settings: Settings = Settings(), httpClient: HTTPClient? = nil, logger: Logger, retryPolicy: RetryPolicy = .default
) throws(StorageClientConfigurationError) -> any StorageClient {
    let production = settings.text("ENVIRONMENT")?.lowercased() == "production"
    guard let url = settings.text("STORAGE_SERVICE_URL") else {
        if production {
            throw StorageClientConfigurationError(
                key: "STORAGE_SERVICE_URL",
                message: "is required when ENVIRONMENT=production (the mock storage client keeps nothing across "
                    + "restarts); set it to the Storage Service, e.g. http://storage:8000"
            )
        }
        logger.warning("No storage service URL provided - using mock storage client")
        return InMemoryStorageClient()
    }
    try validateStorageURL(url)
    let timeout = try settings.seconds("STORAGE_TIMEOUT_SECONDS", default: .seconds(30), in: 0...86_400)
    let https = url.lowercased().hasPrefix("https://")
    var tls: TLSConfiguration?
    if let caPath = settings.text("STORAGE_CA_PATH") {
        guard https else {
            throw StorageClientConfigurationError(
                key: "STORAGE_CA_PATH",
                message: "is set but STORAGE_SERVICE_URL is not https://; use https://, or unset STORAGE_CA_PATH"
            )
        }
        tls = try HTTPStorageClient.tlsConfiguration(trusting: caPath)
    }
    let token = try settings.text("STORAGE_API_TOKEN").map { text throws(ConfigurationKeyError) in
        try APITokens.clientToken(text)
    }
    if token != nil, !https, production {
        logger.warning(
            """
            STORAGE_API_TOKEN sent over http://: the token crosses the network in clear text; serve the Storage \
            Service with TLS_CERT_PATH and TLS_KEY_PATH and use an https:// STORAGE_SERVICE_URL
            """)
    }
    logger.info(
        "Using storage service",
        metadata: [
            "storage_url": "\(url)", "timeout_ms": "\(timeout.milliseconds)",
            "trust": "\(tls == nil ? "system" : "system+STORAGE_CA_PATH")",
        ]
    )
    return HTTPStorageClient(
        baseURL: url, token: token, timeout: timeout, retryPolicy: retryPolicy, httpClient: httpClient,
        tlsConfiguration: tls, logger: logger
    )
}

/// Checks that `text` is an absolute `http`/`https` URL with a host and no query or fragment.
func validateStorageURL(_ text: String) throws(StorageClientConfigurationError) {
    // A user and password stand before an `@`; a storage's base URL has no other use for one, wherever it is (a
    // password may hold a `/`): everything before the last `@` is never quoted back.
    let scheme = text.range(of: "//").map(\.upperBound) ?? text.startIndex
    let shown =
        text.lastIndex(of: "@").map { at in (scheme < at ? String(text[..<scheme]) : "") + "***" + String(text[at...]) }
        ?? text
    func fail(_ why: String) -> StorageClientConfigurationError {
        StorageClientConfigurationError(
            key: "STORAGE_SERVICE_URL", message: "'\(shown.prefix(200))' \(why); use e.g. http://storage:8000"
        )
    }
    // The URL is logged at start and with every request's log line: a password in it would be too.
    guard shown == text else { throw fail("must not hold a user or password (it is logged); use STORAGE_API_TOKEN") }
    guard let components = URLComponents(string: text) else { throw fail("is not a URL") }
    guard let scheme = components.scheme?.lowercased(), scheme == "http" || scheme == "https" else {
        throw fail("must start with http:// or https://")
    }
    guard let host = components.host, !host.isEmpty else { throw fail("has no host") }
    guard components.query == nil, components.fragment == nil else { throw fail("must not have a query or fragment") }
    if let port = components.port, !(1...65_535).contains(port) { throw fail("has a port outside 1 to 65535") }
}

/// A start-up configuration that cannot work; the message names the key and how to fix it.
public typealias StorageClientConfigurationError = ConfigurationKeyError

extension StorageClient {
    /// Nothing to release by default (the in-memory client); `HTTPStorageClient` shuts its `HTTPClient` down.
    public func shutdown() async throws {}
}
