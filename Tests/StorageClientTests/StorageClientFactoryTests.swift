import Foundation
import Logging
import StorageClient
import TestSupport
import Testing
import WatermarkCore

@testable import ServiceSupport

@Suite("makeStorageClient")
struct StorageClientFactoryTests {
    static let mockLine = "No storage service URL provided - using mock storage client"

    @Test func aURLGivesTheHTTPClientWithItsSettings() async throws {
        let logs = LogRecorder()
        let client = try makeStorageClient(
            settings: Settings(environment: [
                "STORAGE_SERVICE_URL": "http://storage:8000/", "STORAGE_API_TOKEN": "t0ken",
                "STORAGE_TIMEOUT_SECONDS": "2.5", "ENVIRONMENT": "production",
            ]),
            logger: logs.logger()
        )
        try await client.shutdown()
        let http = try #require(client as? HTTPStorageClient)
        #expect(http.baseURL == "http://storage:8000")
        #expect(http.timeout == .milliseconds(2500))
        #expect(!logs.messages().contains(Self.mockLine))
        #expect(!logs.all.contains { $0.metadata.values.contains { $0.contains("t0ken") } })
    }

    @Test func theDefaultTimeoutIsThirtySeconds() async throws {
        let client = try makeStorageClient(
            settings: Settings(environment: ["STORAGE_SERVICE_URL": "https://storage.example"]),
            logger: Logger(label: "test")
        )
        #expect((client as? HTTPStorageClient)?.timeout == .seconds(30))
        try await client.shutdown()
    }

    @Test(arguments: [[:], ["STORAGE_SERVICE_URL": "  "], ["ENVIRONMENT": "development"]])
    func noURLGivesTheMockAndSaysSo(environment: [String: String]) async throws {
        let logs = LogRecorder()
        let client = try makeStorageClient(settings: Settings(environment: environment), logger: logs.logger())
        #expect(client is InMemoryStorageClient)
        let lines = logs.all.filter { $0.message == Self.mockLine }
        #expect(lines.count == 1)
        #expect(lines.first.map { $0.level == .warning || $0.level == .info } == true)
        try await client.shutdown()
    }

    @Test(arguments: ["production", "Production", " PRODUCTION "])
    func productionWithoutAURLIsAStartUpError(value: String) {
        let logs = LogRecorder()
        #expect {
            _ = try makeStorageClient(settings: Settings(environment: ["ENVIRONMENT": value]), logger: logs.logger())
        } throws: { error in
            guard let error = error as? StorageClientConfigurationError else { return false }
            return error.key == "STORAGE_SERVICE_URL" && error.description.contains("ENVIRONMENT=production")
        }
        #expect(!logs.messages().contains(Self.mockLine))
    }

    @Test(arguments: [
        "storage:8000", "ftp://storage", "http://", "http://storage:8000?x=1", "not a url", "http://storage:70000",
    ])
    func anInvalidURLIsRefused(url: String) {
        #expect(throws: StorageClientConfigurationError.self) {
            _ = try makeStorageClient(
                settings: Settings(environment: ["STORAGE_SERVICE_URL": url]), logger: Logger(label: "test"))
        }
    }

    /// The URL is logged at start and with every request's log line: one that holds a password is refused, and the
    /// refusal does not quote it, well formed or not.
    @Test(arguments: [
        "http://ops:s3cret@storage:8000", "https://s3cret@storage", "http://ops:s3cret@storage:99999",
        "http://ops:s3cret@@storage/x", "ops:s3cret@storage", "http://ops:s3/cret@storage", "http://storage/s3cret@x",
        "http:/ops:s3cret@storage//x",
    ])
    func aURLWithAPasswordIsRefusedWithoutIt(url: String) throws {
        let error = try #require(throws: StorageClientConfigurationError.self) {
            _ = try makeStorageClient(
                settings: Settings(environment: ["STORAGE_SERVICE_URL": url]), logger: Logger(label: "test"))
        }
        #expect(!error.description.contains("s3cret"), "\(error)")
        #expect(error.key == "STORAGE_SERVICE_URL")
    }

    @Test(arguments: ["0", "-1", "abc", "nan", "inf", "100000"])
    func anInvalidTimeoutIsRefused(timeout: String) {
        #expect {
            _ = try makeStorageClient(
                settings: Settings(environment: [
                    "STORAGE_SERVICE_URL": "http://storage:8000", "STORAGE_TIMEOUT_SECONDS": timeout,
                ]),
                logger: Logger(label: "test")
            )
        } throws: { error in
            (error as? StorageClientConfigurationError)?.key == "STORAGE_TIMEOUT_SECONDS"
        }
    }

    @Test func aCAFileNeedsAnHTTPSURL() {
        #expect {
            _ = try makeStorageClient(
                settings: Settings(environment: [
                    "STORAGE_SERVICE_URL": "http://storage:8000", "STORAGE_CA_PATH": "/etc/hostname",
                ]),
                logger: Logger(label: "test"))
        } throws: { error in
            let error = error as? StorageClientConfigurationError
            return error?.key == "STORAGE_CA_PATH" && error?.message.contains("https://") == true
        }
    }

    @Test(arguments: [("/surely/missing/ca.pem", "does not exist"), ("/etc/hostname", "holds no PEM certificate")])
    func aCAFileThatCannotBeUsedIsRefused(path: String, problem: String) {
        #expect {
            _ = try makeStorageClient(
                settings: Settings(environment: [
                    "STORAGE_SERVICE_URL": "https://storage:8000", "STORAGE_CA_PATH": path,
                ]),
                logger: Logger(label: "test"))
        } throws: { error in
            let error = error as? StorageClientConfigurationError
            return error?.key == "STORAGE_CA_PATH" && error?.message.contains(problem) == true
        }
    }

    @Test func aPrivateCAIsTrustedWithHTTPS() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("wm-ca-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let certificates = try TestCertificates(in: directory)
        let logs = LogRecorder()
        let client = try makeStorageClient(
            settings: Settings(environment: [
                "STORAGE_SERVICE_URL": "https://storage:8443", "STORAGE_CA_PATH": certificates.caPath,
            ]),
            logger: logs.logger())
        #expect(client is HTTPStorageClient)
        #expect(logs.all.contains { $0.metadata["trust"] == "system+STORAGE_CA_PATH" })
        try await client.shutdown()
    }

    @Test(arguments: [("http://storage:8000", true), ("https://storage:8443", false)])
    func aTokenOverPlainHTTPInProductionIsWarnedAbout(url: String, warned: Bool) async throws {
        let logs = LogRecorder()
        let client = try makeStorageClient(
            settings: Settings(environment: [
                "STORAGE_SERVICE_URL": url, "STORAGE_API_TOKEN": "secret-t0ken", "ENVIRONMENT": "production",
            ]),
            logger: logs.logger())
        let warnings = logs.all.filter { $0.level == .warning && $0.message.contains("clear text") }
        #expect(warnings.count == (warned ? 1 : 0))
        #expect(!logs.all.contains { $0.message.contains("secret-t0ken") })
        try await client.shutdown()
    }
}
