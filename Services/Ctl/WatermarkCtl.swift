import ArgumentParser
import Foundation
import Logging
import ServiceSupport
import StorageClient
import WatermarkCore

/// `watermarkctl`: see and edit the Storage Service's watermarks without touching its database, through the
/// shared `StorageClient` (the HTTP client the collectors use).
///
/// Exit codes: 0 done; 1 the storage refused or has no such watermark (the message says why); 2 a bad setting
/// or an answer needed (`reset` without `--yes` and no terminal); 3 the storage cannot be reached or refuses the
/// token; 64 a command line that does not parse (ArgumentParser's usage error).
@main
struct WatermarkCtl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "watermarkctl",
        abstract: "See and edit the watermarks of a Storage Service.",
        discussion: """
            STORAGE_SERVICE_URL (default http://127.0.0.1:8000) and STORAGE_API_TOKEN, or --url and --token.
            Exit codes: 0 done, 1 refused or not found, 2 bad setting or no confirmation, 3 storage unreachable \
            or the token refused, 64 bad command line.
            """,
        subcommands: [
            List.self, Get.self, History.self, Set.self, Reset.self, Copy.self, Lease.self, Export.self, Import.self,
        ]
    )
}

/// Where the storage is, and how the answer is printed.
struct Connection: ParsableArguments {
    @Option(help: "The Storage Service (STORAGE_SERVICE_URL, default http://127.0.0.1:8000).") var url: String?
    @Option(help: "API token (STORAGE_API_TOKEN); prefer the variable: a flag shows in the process list.")
    var token: String?
    @Option(help: "Seconds to wait for each answer.") var timeout: Int = 10

    /// Runs `body` with a client of the storage, and turns its refusals into the documented exit codes.
    ///
    /// The client comes from the library's factory, as every service's does: the same checks of the URL (one
    /// holding a user and password is refused, never quoted back), the token (`name:token`) and `STORAGE_CA_PATH`.
    /// Built here by hand, a mistyped URL with a password was printed whole in the errors, and an https storage
    /// signed by a private CA could not be reached.
    func run<T>(_ body: (HTTPStorageClient) async throws -> T) async throws -> T {
        var logger = Logger(label: "watermarkctl")
        logger.logLevel = .critical
        var flags = ["STORAGE_TIMEOUT_SECONDS": String(timeout)]
        flags["STORAGE_SERVICE_URL"] = url
        flags["STORAGE_API_TOKEN"] = token
        var settings = Settings(flags: flags)
        if settings.text("STORAGE_SERVICE_URL") == nil {
            flags["STORAGE_SERVICE_URL"] = "http://127.0.0.1:8000"
            settings = Settings(flags: flags)
        }
        let client: HTTPStorageClient
        do {
            guard
                let made = try makeStorageClient(settings: settings, logger: logger, retryPolicy: .none)
                    as? HTTPStorageClient
            else { throw Failure(2, "no Storage Service URL") }
            client = made
        } catch let error as ConfigurationKeyError {
            throw Failure(2, "\(error)")
        }
        let base = settings.text("STORAGE_SERVICE_URL") ?? ""
        do {
            let result = try await body(client)
            try? await client.shutdown()
            return result
        } catch {
            try? await client.shutdown()
            throw Failure.from(error, storage: base)
        }
    }
}

/// A failure with its exit code, printed as `watermarkctl: <message>`.
struct Failure: Error, CustomStringConvertible {
    let code: Int32
    let description: String

    init(_ code: Int32, _ description: String) {
        self.code = code
        self.description = description
    }

    static func from(_ error: any Error, storage: String) -> any Error {
        if error is Failure || error is ExitCode || error is CleanExit { return error }
        guard let error = error as? StorageClientError else { return Failure(1, "\(error)") }
        switch error {
        case .unavailable:
            return Failure(
                3, "cannot reach the Storage Service at \(storage): \(error) (is it running? STORAGE_SERVICE_URL)")
        case .unauthorized:
            return Failure(3, "the storage refused the token: \(error) (set STORAGE_API_TOKEN to a write token)")
        case .conflict("watermark_regression", let message):
            // The service names its query parameter; here the same choice is a flag.
            let hint = message.replacingOccurrences(of: "add ?force=true", with: "pass --force")
            return Failure(1, "refused (watermark_regression): \(hint)")
        default:
            return Failure(1, "\(error)")
        }
    }
}

extension AsyncParsableCommand {
    /// Runs `body`, printing a failure's message to standard error and exiting with its code.
    func exiting(_ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch let failure as Failure {
            FileHandle.standardError.write(Data("watermarkctl: \(failure.description)\n".utf8))
            throw ExitCode(failure.code)
        }
    }
}

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case table, json
}

func sourceID(_ text: String) throws -> SourceID {
    do {
        return try SourceID(text)
    } catch {
        throw Failure(2, "'\(text.prefix(200))' is not a source id (1 to 128 of A-Z a-z 0-9 . _ : -)")
    }
}

func parseTimestamp(_ text: String) throws -> Timestamp {
    do {
        return try Timestamp(rfc3339: text)
    } catch {
        throw Failure(2, "'\(text.prefix(64))' is not an RFC 3339 timestamp (e.g. 2026-12-01T00:00:00Z): \(error)")
    }
}

/// `2h` / `90m` / `30s` / `3d` / plain seconds, up to 100 years (what the storage accepts; a larger number
/// overflowed the multiplication and crashed the tool).
func duration(_ text: String) throws -> Duration {
    let units: [Character: Int64] = ["s": 1, "m": 60, "h": 3600, "d": 86_400]
    let trimmed = text.trimmingCharacters(in: .whitespaces)
    var seconds: Int64?
    if let unit = trimmed.last, let factor = units[unit], let value = Int64(trimmed.dropLast()), value > 0 {
        let (product, overflow) = value.multipliedReportingOverflow(by: factor)
        seconds = overflow ? .max : product
    } else if let value = Int64(trimmed), value > 0 {
        seconds = value
    }
    guard let seconds else { throw Failure(2, "'\(text.prefix(32))' is not a duration (e.g. 90s, 30m, 2h, 3d)") }
    guard seconds <= 100 * 365 * 86_400 else { throw Failure(2, "'\(text.prefix(32))' is longer than 100 years") }
    return .seconds(seconds)
}
