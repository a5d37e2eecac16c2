import Foundation
import NIOHTTP1
import TestSupport
import Testing

/// The real `storage-service` on a real PostgreSQL (`DATABASE_URL`): the API works, `/status` names the backend
/// without the password, an unreachable database stops the start with a clear message, and an outage is 503
/// with the cause, then recovery without a restart, with nothing acknowledged lost.
@Suite("storage-service on PostgreSQL", .serialized)
struct PostgresServiceTests {
    static func withServer<T>(_ body: (PostgresTestServer) async throws -> T) async throws -> T {
        let server = try await PostgresTestServer.started()
        do {
            let result = try await body(server)
            await server.stopped()
            return result
        } catch {
            await server.stopped()
            throw error
        }
    }

    func success(_ at: String) -> String { #"{"status":"success","timestamp":"\#(at)","records_collected":1}"# }

    @Test("the API on PostgreSQL; /status names the backend and never the password")
    func serves() async throws {
        try await Self.withServer { server in
            // Every level: the password must not appear in a debug or trace line either (service descriptions, the
            // driver's own logs).
            try await withStorageService(environment: ["DATABASE_URL": server.url(), "LOG_LEVEL": "trace"]) { harness in
                let http = harness.http
                // 503 while it connects and migrates (a readiness probe is told at once), then 200.
                try await waitUntil("the service to be ready", timeout: .seconds(20)) {
                    try await http.send(.GET, "/health").status == 200
                }
                let created = try await http.send(
                    .PUT, "/api/v1/watermarks/pg-a", json: success("2026-01-01T00:00:00.123456789Z"))
                #expect(created.status == 201)
                let read = try await http.send(.GET, "/api/v1/watermarks/pg-a")
                #expect(try read.json()["last_successful_timestamp"] as? String == "2026-01-01T00:00:00.123456789Z")
                let stale = try await http.send(
                    .PUT, "/api/v1/watermarks/pg-a", json: success("2025-01-01T00:00:00Z"),
                    headers: [("If-Match", "\"1\"")])
                #expect(stale.status == 409)
                let status = try await http.send(.GET, "/status")
                let database = try #require(try status.json()["database"] as? [String: Any])
                #expect(database["backend"] as? String == "postgres")
                #expect((database["path"] as? String)?.hasPrefix("postgres://postgres@127.0.0.1:") == true)
                #expect(!status.text.contains(PostgresTestServer.password))
                #expect(!harness.allLogs.contains(PostgresTestServer.password))
            }
        }
    }

    /// A database (or role) tuned with `synchronous_commit = off` answers a commit before its WAL is flushed: an
    /// acknowledged write would be lost with a crash of the server. The service's sessions ask for `on`, which
    /// outranks the database's setting, and `/status` shows the setting its sessions run with.
    @Test("a database set to synchronous_commit = off is written with it on")
    func synchronousCommitIsOn() async throws {
        try await Self.withServer { server in
            _ = try server.query("ALTER DATABASE postgres SET synchronous_commit = off")
            #expect(try server.query("SHOW synchronous_commit") == ["off"], "a new session of the database has it off")
            try await withStorageService(environment: ["DATABASE_URL": server.url()]) { harness in
                let status = try await harness.http.send(.GET, "/status")
                let database = try #require(try status.json()["database"] as? [String: Any])
                #expect(database["synchronous_commit"] as? String == "on", "\(status.text)")
            }
        }
    }

    @Test(
        "a DATABASE_URL that is not a PostgreSQL URL stops the start: exit 2, naming the key, no password",
        arguments: [
            "mysql://wm:hunter2@127.0.0.1:5432/w", "postgres://wm:hunter2@127.0.0.1:99999/w",
            "postgres://wm:hunter2@127.0.0.1:5432/w?sslmode=sometimes", "postgres://wm:hunter2@/w",
        ])
    func badURLAtStart(url: String) async throws {
        let service = try ServiceProcess(
            "storage-service", environment: ["PORT": "0", "HOST": "127.0.0.1", "DATABASE_URL": url])
        let status = try await service.waitForExit(timeout: .seconds(60))
        #expect(status == 2)
        #expect(service.log.contains("DATABASE_URL"), "\(service.log)")
        #expect(!service.log.contains("hunter2"), "\(service.log)")
    }

    @Test("an unreachable database stops the start: exit 1, a message naming it, no password")
    func unreachableAtStart() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let port = try freePort()  // nothing listens there
        let service = try ServiceProcess(
            "storage-service",
            environment: [
                "PORT": "0", "HOST": "127.0.0.1",
                "DATABASE_URL": "postgres://wm:hunter2@127.0.0.1:\(port)/w?sslmode=disable",
            ])
        let status = try await service.waitForExit(timeout: .seconds(60))
        #expect(status == 1)
        #expect(service.log.contains("Cannot use the database"))
        #expect(service.log.contains("postgres://wm@127.0.0.1:\(port)/w"))
        #expect(!service.log.contains("hunter2"))
    }

    @Test("a PostgreSQL restart: 503 naming the cause while it is down, then recovery, nothing acknowledged lost")
    func outageAndRecovery() async throws {
        try await Self.withServer { server in
            try await withStorageService(environment: ["DATABASE_URL": server.url()]) { harness in
                let http = harness.http
                var acknowledged = 0
                for minute in 0..<5 {
                    let at = String(format: "2026-02-01T00:%02d:00Z", minute)
                    if try await http.send(.PUT, "/api/v1/watermarks/pg-b", json: success(at)).status == 200 {
                        acknowledged += 1
                    }
                }
                try await server.stoppedServer()
                let down = try await http.send(.PUT, "/api/v1/watermarks/pg-b", json: success("2026-02-01T01:00:00Z"))
                #expect(down.status == 503)
                #expect(down.text.contains("database_unavailable") && down.text.contains("PostgreSQL"))
                #expect(!down.text.contains(PostgresTestServer.password))
                #expect(try await http.send(.GET, "/health").status == 503)
                try await server.restartedServer()
                try await waitUntil("the service to recover", timeout: .seconds(30)) {
                    (try? await http.send(.GET, "/health").status) == 200
                }
                let after = try await http.send(.GET, "/api/v1/watermarks/pg-b")
                #expect(after.status == 200)
                // Every acknowledged write is there: version 1 plus each 200 that followed, nothing from the outage.
                #expect(try after.json()["version"] as? Int == acknowledged + 1)
                #expect(try after.json()["last_successful_timestamp"] as? String == "2026-02-01T00:04:00Z")
                let again = try await http.send(.PUT, "/api/v1/watermarks/pg-b", json: success("2026-02-01T02:00:00Z"))
                #expect(again.status == 200)
            }
        }
    }
}
