import Foundation
import NIOSSL
import PostgresNIO
import WatermarkCore

/// A PostgreSQL URL setting (`DATABASE_URL` of the storage, `SINK_URL` of the collection):
/// `postgres://user:password@host:port/database?sslmode=...` (also `postgresql://`), read into the client's
/// configuration. The password never leaves this value: `redacted` and every error name the server without it.
package struct PostgresURL: Sendable, Equatable {
    /// The setting it was read from, named by its errors.
    package var key: String
    package var user: String
    package var password: String?
    package var host: String
    package var port: Int
    package var database: String
    package var sslMode: SSLMode

    /// libpq's `sslmode`: `disable` never uses TLS, `allow` and `prefer` use it when the server offers it,
    /// `require` needs it (without checking the certificate, as libpq does), `verify-ca` and `verify-full`
    /// check the certificate (`verify-full` also its host name). Default `prefer`, as libpq's.
    package enum SSLMode: String, Sendable, CaseIterable {
        case disable, allow, prefer, require
        case verifyCA = "verify-ca"
        case verifyFull = "verify-full"
    }

    package init(_ text: String, key: String = "DATABASE_URL") throws(ConfigurationKeyError) {
        self.key = key
        func refuse(_ why: String) -> ConfigurationKeyError {
            ConfigurationKeyError(
                key: key, message: "\(why); expected postgres://user:password@host:5432/database")
        }
        guard let components = URLComponents(string: text) else { throw refuse("is not a URL") }
        guard let scheme = components.scheme?.lowercased(), scheme == "postgres" || scheme == "postgresql" else {
            throw refuse("must start with postgres:// or postgresql://")
        }
        guard let host = components.host, !host.isEmpty else { throw refuse("names no host") }
        guard let user = components.percentEncodedUser?.removingPercentEncoding, !user.isEmpty else {
            throw refuse("names no user")
        }
        let database = String(components.path.drop { $0 == "/" })
        guard !database.isEmpty, !database.contains("/") else { throw refuse("names no database (the path)") }
        if let port = components.port, !(1...65_535).contains(port) { throw refuse("has a port outside 1 to 65535") }
        var sslMode = SSLMode.prefer
        for item in components.queryItems ?? [] {
            switch item.name {
            case "sslmode":
                guard let mode = item.value.flatMap(SSLMode.init(rawValue:)) else {
                    throw ConfigurationKeyError(
                        key: key,
                        message: "sslmode '\((item.value ?? "").prefix(32))' is not one of "
                            + SSLMode.allCases.map(\.rawValue).joined(separator: ", "))
                }
                sslMode = mode
            default:
                throw ConfigurationKeyError(
                    key: key, message: "parameter '\(item.name.prefix(32))' is not supported (only sslmode)")
            }
        }
        self.user = user
        self.password = components.percentEncodedPassword?.removingPercentEncoding
        self.host = host
        self.port = components.port ?? 5432
        self.database = database
        self.sslMode = sslMode
    }

    /// `postgres://user@host:port/database`: for logs, errors and `/status`.
    package var redacted: String { "postgres://\(user)@\(host):\(port)/\(database)" }

    package var clientConfiguration: PostgresClient.Configuration {
        var tlsConfiguration = TLSConfiguration.makeClientConfiguration()
        let tls: PostgresClient.Configuration.TLS
        switch sslMode {
        case .disable:
            tls = .disable
        case .allow, .prefer, .require:
            // Encrypted, certificate not checked: what these modes mean to libpq.
            tlsConfiguration.certificateVerification = .none
            tls = sslMode == .require ? .require(tlsConfiguration) : .prefer(tlsConfiguration)
        case .verifyCA:
            tlsConfiguration.certificateVerification = .noHostnameVerification
            tls = .require(tlsConfiguration)
        case .verifyFull:
            tls = .require(tlsConfiguration)
        }
        var configuration = PostgresClient.Configuration(
            host: host, port: port, username: user, password: password, database: database, tls: tls)
        configuration.options.connectTimeout = .seconds(5)
        return configuration
    }
}

/// Any description of the value is the redacted URL: a log line that prints a service or a store holding it (the
/// service lifecycle describes its services at debug level) never shows the password.
extension PostgresURL: CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    package var description: String { redacted }
    package var debugDescription: String { redacted }
    package var customMirror: Mirror { Mirror(self, children: ["url": redacted]) }
}
