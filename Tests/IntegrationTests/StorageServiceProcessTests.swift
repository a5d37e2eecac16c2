import Foundation
import NIOHTTP1
import Testing
import WatermarkCore

/// The real `storage-service` executable: durability across SIGKILL, graceful SIGTERM, the database
/// lock, and refusing a bad configuration.
@Suite("storage-service process", .serialized, .timeLimit(.minutes(3)))
struct StorageServiceProcessTests {
    private func start(_ dir: TemporaryDirectory, extra: [String: String] = [:]) throws -> ServiceProcess {
        var environment = ["PORT": "0", "HOST": "127.0.0.1", "DATABASE_PATH": dir.path + "/nested/db/watermarks.db"]
        environment.merge(extra) { $1 }
        return try ServiceProcess("storage-service", environment: environment)
    }

    @Test("every acknowledged write survives SIGKILL and is read back after a restart")
    func acknowledgedWritesSurviveKill() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        var service = try start(dir)
        var http = TestHTTP(baseURL: "http://127.0.0.1:\(try await service.waitForPort())")

        var acknowledged: [String: (timestamp: String, version: Int)] = [:]
        for round in 1...3 {
            for index in 0..<10 {
                let id = "source-\(index)"
                let timestamp = "2024-01-0\(round)T12:00:00.\(String(format: "%09d", index * 1_000_001 + round))Z"
                let reply = try await http.send(
                    .PUT, "/api/v1/watermarks/\(id)",
                    json: #"{"timestamp":"\#(timestamp)","status":"success","records_collected":\#(index)}"#
                )
                #expect(reply.status == (round == 1 ? 201 : 200), "\(reply.text)")
                // The service answers in normal form (UTC, no trailing zeros in the fraction).
                acknowledged[id] = (
                    try Timestamp(rfc3339: timestamp).description, try reply.json()["version"] as? Int ?? -1
                )
            }
        }
        // Killed right after the last answer: nothing may be lost.
        let status = try await service.stop(signal: SIGKILL)
        #expect(service.wasSignalled && status == SIGKILL)

        service = try start(dir)
        http = TestHTTP(baseURL: "http://127.0.0.1:\(try await service.waitForPort())")
        for (id, expected) in acknowledged {
            let reply = try await http.send(.GET, "/api/v1/watermarks/\(id)")
            #expect(reply.status == 200)
            let body = try reply.json()
            #expect(body["last_successful_timestamp"] as? String == expected.timestamp)
            #expect(body["version"] as? Int == expected.version)
            #expect(expected.version == 3)
        }
        #expect(try await service.stop() == 0)
    }

    @Test("SIGTERM and SIGINT stop the service with exit status 0")
    func gracefulShutdown() async throws {
        for signal in [SIGTERM, SIGINT] {
            let dir = try TemporaryDirectory()
            defer { dir.remove() }
            let service = try start(dir)
            let http = TestHTTP(baseURL: "http://127.0.0.1:\(try await service.waitForPort())")
            #expect(try await http.send(.GET, "/health").status == 200)
            #expect(try await service.stop(signal: signal) == 0)
            #expect(!service.wasSignalled)
            #expect(service.log.contains("Storage service stopped"))
            // The database is a service of the group: closed after the server stopped, before the process ends.
            let log = service.log
            let closed = try #require(log.range(of: "Database closed"))
            #expect(closed.lowerBound < (log.range(of: "Storage service stopped")?.lowerBound ?? log.startIndex))
        }
    }

    @Test("a second process on the same database is refused with a clear message")
    func secondProcessRefused() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let first = try start(dir)
        _ = try await first.waitForPort()
        let second = try start(dir)
        let status = try await second.waitForExit()
        #expect(status != 0)
        #expect(second.log.contains("in use by another storage-service process"))
        // The first one is unharmed.
        let http = TestHTTP(baseURL: "http://127.0.0.1:\(try await first.waitForPort())")
        #expect(try await http.send(.GET, "/health").status == 200)
        #expect(try await first.stop() == 0)
    }

    @Test(
        "invalid configuration is refused at start with the key named",
        arguments: [
            ("PORT", "eighty", "PORT 'eighty' is invalid"),
            ("ENVIRONMENT", "staging", "ENVIRONMENT 'staging' is invalid"),
            ("LOG_LEVEL", "loud", "LOG_LEVEL 'loud' is invalid"),
            ("READ_CACHE_ENTRIES", "-5", "READ_CACHE_ENTRIES '-5' is invalid"),
        ])
    func invalidConfiguration(key: String, value: String, message: String) async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let service = try start(dir, extra: [key: value])
        #expect(try await service.waitForExit() == 2)
        #expect(service.log.contains(message))
    }

    /// A flag overrides the environment: the environment's valid value loses to the flag's invalid one.
    @Test("--read-cache-entries overrides READ_CACHE_ENTRIES and is checked like it")
    func readCacheFlag() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let service = try ServiceProcess(
            "storage-service", arguments: ["--read-cache-entries", "lots"],
            environment: [
                "PORT": "0", "HOST": "127.0.0.1", "DATABASE_PATH": dir.path + "/db/w.db", "READ_CACHE_ENTRIES": "5",
            ])
        #expect(try await service.waitForExit() == 2)
        #expect(service.log.contains("READ_CACHE_ENTRIES 'lots' is invalid"))
    }
}
