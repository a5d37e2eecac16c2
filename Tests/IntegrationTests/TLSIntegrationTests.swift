import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import StorageClient
import TestSupport
import Testing
import WatermarkCore

/// HTTPS end to end with a throw-away CA made by `openssl`: the storage service serves TLS, the collection
/// service collects through it as its client, a client that does not trust the CA is refused, and both
/// services refuse to start on TLS files that cannot work.
@Suite("TLS", .serialized)
struct TLSIntegrationTests {
    static let token = "tls-test-token"

    /// A storage service over HTTPS with a token, and the folder with the certificates; removed afterwards.
    func withTLSStorage(
        _ body: (_ port: Int, _ certificates: TestCertificates, _ storage: ServiceProcess) async throws -> Void
    ) async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let certificates = try TestCertificates(in: directory.url)
        let storage = try ServiceProcess(
            "storage-service",
            environment: [
                "PORT": "0", "HOST": "127.0.0.1", "DATABASE_PATH": directory.path + "/watermarks.db",
                "STORAGE_API_TOKEN": Self.token, "ENVIRONMENT": "production",
                "TLS_CERT_PATH": certificates.certificatePath, "TLS_KEY_PATH": certificates.privateKeyPath,
            ]
        )
        let port = try await storage.waitForPort(marker: "Storage service listening")
        try await body(port, certificates, storage)
        #expect(try await storage.stop() == 0, "\(storage.log)")
    }

    @Test("storage over HTTPS: the collection service writes through it; a client without the CA is refused")
    func storageOverHTTPS() async throws {
        try await withTLSStorage { port, certificates, storage in
            let listening = try await storage.waitForLine(containing: "Storage service listening")
            #expect(listening.contains("scheme=https"), "\(listening)")
            // With TLS in production there is nothing to warn about.
            #expect(!storage.log.contains("clear text"), "\(storage.log)")

            // The collection service, trusting the CA, collects a drop folder and moves the watermark.
            let setup = try CollectionSetup(sourcesJSON: "{}")
            defer { setup.remove() }
            let drop = try CollectionSetup.dropFolder("drop", in: setup)
            try #"{"id":"r1","modified":"2026-11-30T10:00:00Z"}"#.appending("\n")
                .write(toFile: drop + "/a.ndjson", atomically: true, encoding: .utf8)
            let url = "https://localhost:\(port)"
            let once = try setup.startOnce(
                storageURL: url,
                extra: ["STORAGE_API_TOKEN": Self.token, "STORAGE_CA_PATH": certificates.caPath])
            #expect(try await once.waitForExit(timeout: .seconds(90)) == 0, "\(once.log)")
            #expect(once.log.contains("drop success records=1"), "\(once.log)")
            #expect(!once.log.contains("health check failed"), "\(once.log)")
            #expect(!once.log.contains(Self.token), "the token must never be logged")

            // The library client trusting the CA reads the watermark the collector wrote.
            let trusted = HTTPStorageClient(
                baseURL: url, token: Self.token, retryPolicy: .none,
                tlsConfiguration: try HTTPStorageClient.tlsConfiguration(trusting: certificates.caPath),
                logger: Logger(label: "tls-test"))
            let watermark = try await trusted.getWatermark(sourceID: SourceID("drop"))
            #expect(watermark?.lastSuccessfulTimestamp == Timestamp.at("2026-11-30T10:00:00Z"))
            try await trusted.shutdown()

            // A client that trusts only the system's roots is refused by certificate verification.
            let untrusted = HTTPStorageClient(
                baseURL: url, token: Self.token, retryPolicy: .none, logger: Logger(label: "tls-test"))
            #expect(await untrusted.healthCheck() == false)
            await #expect(throws: (any Error).self) { try await untrusted.getWatermark(sourceID: SourceID("drop")) }
            try await untrusted.shutdown()
            let plain = HTTPClient(eventLoopGroupProvider: .singleton)
            do {
                _ = try await plain.execute(HTTPClientRequest(url: url + "/health"), timeout: .seconds(5))
                Issue.record("a client without the CA got an answer over HTTPS")
            } catch {
                #expect("\(error)".contains("certificate") || "\(error)".contains("handshake"), "\(error)")
            }
            // Plain HTTP to the HTTPS port gets no HTTP answer.
            await #expect(throws: (any Error).self) {
                _ = try await plain.execute(
                    HTTPClientRequest(url: "http://127.0.0.1:\(port)/health"), timeout: .seconds(5))
            }
            try await plain.shutdown()

            // The collector without the CA cannot reach the storage: its health check says so.
            let refused = try setup.startOnce(storageURL: url, extra: ["STORAGE_API_TOKEN": Self.token])
            _ = try await refused.waitForExit(timeout: .seconds(90))
            #expect(refused.log.contains("Storage Service health check failed"), "\(refused.log)")

            // watermarkctl trusts STORAGE_CA_PATH as every client of the library does (it built its client by hand,
            // and an https storage signed by a private CA could not be reached).
            let ctl = try ServiceProcess(
                "watermarkctl", arguments: ["get", "drop", "--output", "json"],
                environment: [
                    "STORAGE_SERVICE_URL": url, "STORAGE_API_TOKEN": Self.token, "STORAGE_CA_PATH": certificates.caPath,
                ])
            #expect(try await ctl.waitForExit() == 0, "\(ctl.log)")
            #expect(ctl.log.contains(#""last_successful_timestamp":"2026-11-30T10:00:00Z""#), "\(ctl.log)")

            // The healthcheck sub-command needs the CA too.
            let probe = try ServiceProcess(
                "storage-service",
                arguments: ["healthcheck", "--url", url + "/health", "--ca-path", certificates.caPath],
                environment: [:])
            #expect(try await probe.waitForExit() == 0, "\(probe.log)")
            let probeWithoutCA = try ServiceProcess(
                "storage-service", arguments: ["healthcheck", "--url", url + "/health"], environment: [:])
            #expect(try await probeWithoutCA.waitForExit() == 1, "\(probeWithoutCA.log)")
        }
    }

    @Test("the collection service serves its API over HTTPS")
    func collectionOverHTTPS() async throws {
        let setup = try CollectionSetup(sourcesJSON: #"{"sources": []}"#)
        defer { setup.remove() }
        let certificates = try TestCertificates(in: setup.directory.url)
        let service = try ServiceProcess(
            "collection-service",
            environment: setup.environment(storageURL: nil).merging([
                "TLS_CERT_PATH": certificates.certificatePath, "TLS_KEY_PATH": certificates.privateKeyPath,
            ]) { $1 })
        let port = try await service.waitForPort(marker: "Collection service listening")
        #expect(service.log.contains("scheme=https"), "\(service.log)")
        let url = "https://localhost:\(port)/health"
        let probe = try ServiceProcess(
            "collection-service", arguments: ["healthcheck", "--url", url, "--ca-path", certificates.caPath],
            environment: [:])
        #expect(try await probe.waitForExit() == 0, "\(probe.log)")
        let probeWithoutCA = try ServiceProcess(
            "collection-service", arguments: ["healthcheck", "--url", url], environment: [:])
        #expect(try await probeWithoutCA.waitForExit() == 1, "\(probeWithoutCA.log)")
        #expect(try await service.stop() == 0, "\(service.log)")
    }

    /// One start of `executable` that must be refused: exit 2 with a message naming the key and the problem.
    func expectRefused(
        _ executable: String, environment: [String: String], key: String, saying problem: String
    ) async throws {
        let process = try ServiceProcess(executable, environment: environment)
        #expect(try await process.waitForExit() == 2, "\(executable): \(process.log)")
        #expect(process.log.contains(key) && process.log.contains(problem), "\(executable): \(process.log)")
        #expect(!process.log.contains("listening"), "\(process.log)")
    }

    @Test("both services refuse TLS files that are missing, unreadable, not PEM or do not match")
    func refusesBadTLSFiles() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let certificates = try TestCertificates(in: directory.url)
        let notPEM = directory.path + "/not.pem"
        try "hello\n".write(toFile: notPEM, atomically: true, encoding: .utf8)
        let setup = try CollectionSetup(sourcesJSON: #"{"sources": []}"#)
        defer { setup.remove() }
        let cert = certificates.certificatePath
        let key = certificates.privateKeyPath
        let cases: [(cert: String?, key: String?, refusedKey: String, problem: String)] = [
            (directory.path + "/missing.pem", key, "TLS_CERT_PATH", "does not exist"),
            (cert, directory.path + "/missing.key", "TLS_KEY_PATH", "does not exist"),
            (directory.path, key, "TLS_CERT_PATH", "is a folder, not a file"),
            // A file even root cannot read: reading /proc/self/mem from offset 0 fails with EIO.
            ("/proc/self/mem", key, "TLS_CERT_PATH", "cannot be read (Input/output error)"),
            (notPEM, key, "TLS_CERT_PATH", "holds no PEM certificate"),
            (cert, notPEM, "TLS_KEY_PATH", "holds no unencrypted PEM private key"),
            (cert, certificates.otherKeyPath, "TLS_KEY_PATH", "does not match the certificate"),
            (cert, nil, "TLS_KEY_PATH", "set both, or neither"),
            (nil, key, "TLS_CERT_PATH", "set both, or neither"),
        ]
        for (certPath, keyPath, refusedKey, problem) in cases {
            var tls: [String: String] = [:]
            tls["TLS_CERT_PATH"] = certPath
            tls["TLS_KEY_PATH"] = keyPath
            let storage = [
                "PORT": "0", "HOST": "127.0.0.1", "DATABASE_PATH": directory.path + "/refused.db",
            ].merging(tls) { $1 }
            try await expectRefused("storage-service", environment: storage, key: refusedKey, saying: problem)
            try await expectRefused(
                "collection-service", environment: setup.environment(storageURL: nil).merging(tls) { $1 },
                key: refusedKey, saying: problem)
        }
        // Nothing was created for a refused start.
        #expect(!FileManager.default.fileExists(atPath: directory.path + "/refused.db"))
    }

    @Test("ENVIRONMENT=production with a token but no TLS warns at start, on both sides of the connection")
    func warnsAboutClearText() async throws {
        try await withStorageService(environment: ["STORAGE_API_TOKEN": Self.token, "ENVIRONMENT": "production"]) {
            harness in
            let warning = try await harness.service.waitForLine(containing: "clear text")
            #expect(warning.contains("warning") && warning.contains("TLS_CERT_PATH"), "\(warning)")
            let setup = try CollectionSetup(sourcesJSON: #"{"sources": []}"#)
            defer { setup.remove() }
            let once = try setup.startOnce(
                storageURL: "http://127.0.0.1:\(harness.port)",
                extra: ["STORAGE_API_TOKEN": Self.token, "ENVIRONMENT": "production"])
            _ = try await once.waitForExit(timeout: .seconds(60))
            #expect(once.log.contains("crosses the network in clear text"), "\(once.log)")
            #expect(!once.log.contains(Self.token), "the token must never be logged")

            // Served, with its own token for run requests and no TLS of its own.
            let binary = ServiceProcess.binDirectory.appendingPathComponent("collection-service")
            let served = try ServiceProcess(
                binary.path,
                environment: setup.environment(storageURL: "http://127.0.0.1:\(harness.port)").merging([
                    "STORAGE_API_TOKEN": Self.token, "ENVIRONMENT": "production", "COLLECTION_API_TOKEN": "run-token",
                ]) { $1 })
            let own = try await served.waitForLine(containing: "COLLECTION_API_TOKEN set without TLS")
            #expect(own.contains("warning") && own.contains("TLS_CERT_PATH"), "\(own)")
            // Stopped once it serves: a SIGTERM before its signal handlers are in place ends it with the signal.
            _ = try await served.waitForLine(containing: "Collection service listening")
            #expect(!served.log.contains("run-token"), "the token must never be logged")
            #expect(try await served.stop() == 0, "\(served.log)")
        }
    }
}
