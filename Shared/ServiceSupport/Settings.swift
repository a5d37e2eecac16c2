import Configuration
import Foundation
import WatermarkCore

/// The one configuration reader of both services and of the storage client's factory: apple/swift-configuration's
/// `ConfigReader` over command-line flags (highest), then the environment; the defaults are given at each read.
///
/// Settings are named as the contract names them, by their environment variable (`DATABASE_PATH`); the reader's
/// key is the same name in dotted lower case (`database.path`), which `EnvironmentVariablesProvider` maps back to
/// the variable. A value that is blank counts as unset. Values that cannot be used are refused with a
/// `ConfigurationKeyError` naming the key, the value and what is allowed: swift-configuration's own typed reads
/// would silently fall back to the default, so the conversions are done here. Names holding `TOKEN`, `PASSWORD`,
/// `SECRET` or `KEY`, and the database URLs, are marked secret, so the reader's access reports never print them.
public struct Settings: Sendable {
    private let reader: ConfigReader

    /// - Parameters:
    ///   - environment: the process environment, or a test's.
    ///   - flags: values given on the command line, by setting name (`["PORT": "8080"]`); they override the
    ///     environment.
    public init(environment: [String: String] = ProcessInfo.processInfo.environment, flags: [String: String] = [:]) {
        let secret = SecretsSpecifier<String, String>.dynamic { key, _ in Settings.isSecretName(key) }
        var flagValues: [AbsoluteConfigKey: ConfigValue] = [:]
        for (name, value) in flags {
            flagValues[AbsoluteConfigKey(Self.components(of: name))] = ConfigValue(
                .string(value), isSecret: Self.isSecretName(name))
        }
        reader = ConfigReader(providers: [
            InMemoryProvider(name: "command-line flags", values: flagValues),
            EnvironmentVariablesProvider(environmentVariables: environment, secretsSpecifier: secret),
        ])
    }

    /// The value of `name`, trimmed of surrounding white space; `nil` when unset or blank.
    public func text(_ name: String) -> String? {
        let key = ConfigKey(Self.components(of: name))
        guard let raw = reader.string(forKey: key, isSecret: Self.isSecretName(name)) else { return nil }
        let trimmed = raw.trimmingCharacters(in: .whitespacesAndNewlines)
        return trimmed.isEmpty ? nil : trimmed
    }

    public func string(_ name: String, default fallback: String) -> String {
        text(name) ?? fallback
    }

    /// A whole number in `range`.
    public func int(_ name: String, default fallback: Int, in range: ClosedRange<Int>) throws(ConfigurationKeyError)
        -> Int
    {
        guard let text = text(name) else { return fallback }
        guard let value = Int(text), range.contains(value) else {
            throw invalid(name, text, "a whole number from \(range.lowerBound) to \(range.upperBound)")
        }
        return value
    }

    /// A number of seconds in `range` (fractions allowed), as a duration rounded up to the millisecond.
    public func seconds(_ name: String, default fallback: Duration, in range: ClosedRange<Double>)
        throws(ConfigurationKeyError) -> Duration
    {
        guard let text = text(name) else { return fallback }
        guard let seconds = Double(text), seconds.isFinite, seconds > 0, range.contains(seconds) else {
            throw invalid(name, text, "a number of seconds above 0 and up to \(Int(range.upperBound)), e.g. 30")
        }
        return .milliseconds(Int64((seconds * 1000).rounded(.up)))
    }

    /// `true`/`false` (also `1`/`0`, `yes`/`no`).
    public func bool(_ name: String, default fallback: Bool) throws(ConfigurationKeyError) -> Bool {
        try choice(
            name, default: fallback,
            [("true", true), ("false", false), ("1", true), ("0", false), ("yes", true), ("no", false)])
    }

    /// One of `options`, matched without regard to case; the error lists the allowed spellings.
    public func choice<T>(_ name: String, default fallback: T, _ options: [(String, T)]) throws(ConfigurationKeyError)
        -> T
    {
        guard let text = text(name) else { return fallback }
        guard let match = options.first(where: { $0.0 == text.lowercased() }) else {
            throw invalid(name, text, "one of \(options.map(\.0).joined(separator: ", "))")
        }
        return match.1
    }

    private func invalid(_ name: String, _ text: String, _ expected: String) -> ConfigurationKeyError {
        let shown = Self.isSecretName(name) ? "<redacted>" : "'\(text.prefix(200))'"
        return ConfigurationKeyError(key: name, message: "\(shown) is invalid: expected \(expected)")
    }

    /// `DATABASE_PATH` -> `["database", "path"]`: the environment provider joins them back with `_`, upper-cased.
    static func components(of name: String) -> [String] {
        name.lowercased().split(separator: "_", omittingEmptySubsequences: false).map(String.init)
    }

    static func isSecretName(_ name: String) -> Bool {
        let upper = name.uppercased()
        // Database URLs carry a password.
        return ["TOKEN", "PASSWORD", "SECRET", "KEY"].contains { upper.contains($0) }
            || ["DATABASE_URL", "SINK_URL"].contains(upper)
    }
}
