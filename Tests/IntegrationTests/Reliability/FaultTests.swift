#if canImport(Glibc)
    import Foundation
    import Glibc
    import NIOHTTP1
    import TestSupport
    import Testing

    /// Storage faults under the real process: the disk filling up (the file-size limit of the process,
    /// RLIMIT_FSIZE, makes every write fail like a full disk) and the database file turning read-only
    /// (the immutable attribute). Writes are 503 with a clear message and a log line, reads go on, nothing
    /// is corrupted, and the service recovers by itself when the cause goes away.
    @Suite("Reliability: storage faults", .serialized, .timeLimit(.minutes(2)))
    struct FaultTests {
        static func success(_ minute: Int) -> String {
            #"{"timestamp":"2025-01-01T00:\#(String(format: "%02d", minute)):00Z","status":"success","records_collected":\#(minute)}"#
        }

        /// Sets the soft file-size limit of `pid` (bytes; nil: unlimited) with python3's `resource.prlimit`.
        static func setFileSizeLimit(pid: Int32, bytes: Int?) throws {
            let value = bytes.map(String.init) ?? "resource.RLIM_INFINITY"
            try run(
                "/usr/bin/env", "python3", "-c",
                "import resource, sys; pid = int(sys.argv[1]); hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)[1]; "
                    + "resource.prlimit(pid, resource.RLIMIT_FSIZE, (\(value), hard))",
                "\(pid)"
            )
        }

        @discardableResult
        static func run(_ arguments: String...) throws -> (status: Int32, output: String) {
            let result = try runToEnd(arguments)
            guard result.status == 0 else {
                throw ProcessFailure("\(arguments.joined(separator: " ")): \(result.output)")
            }
            return result
        }

        @Test("disk full: writes are 503 with a clear message and a log line, reads go on, recovery is automatic")
        func diskFull() async throws {
            // A process over its file-size limit gets SIGXFSZ; ignored (inherited by the child), the write
            // fails with EFBIG instead, which is what SQLite sees on a full disk.
            signal(SIGXFSZ, SIG_IGN)
            try await withStorageService(environment: ["LOG_LEVEL": "info"]) { harness in
                let http = harness.http
                for minute in 0..<5 {
                    #expect(
                        try await http.send(.PUT, "/api/v1/watermarks/fault-\(minute)", json: Self.success(minute))
                            .status == 201)
                }
                let keyed = try await http.send(
                    .PUT, "/api/v1/watermarks/fault-keyed", json: Self.success(1), headers: [("Idempotency-Key", "k1")])
                #expect(keyed.status == 201)
                let before = try await http.send(.GET, "/api/v1/watermarks/fault-0")

                try Self.setFileSizeLimit(pid: harness.service.pid, bytes: 0)
                var refused = 0
                for minute in 10..<20 {
                    let reply = try await http.send(.PUT, "/api/v1/watermarks/fault-0", json: Self.success(minute))
                    #expect(reply.status == 503, "\(reply.status) \(reply.text)")
                    #expect(
                        reply.text.contains("database_unavailable")
                            && reply.text.contains("the database cannot be used"))
                    if reply.status == 503 { refused += 1 }
                }
                #expect(harness.service.isRunning, "the service died on the write error:\n\(harness.service.log)")
                // Reads still work and show the last acknowledged state.
                let during = try await http.send(.GET, "/api/v1/watermarks/fault-0")
                #expect(during.status == 200 && during.body == before.body)
                // A retried keyed write is answered from its record (a commit with nothing to write, which a full
                // disk takes): the service is still not healthy.
                let replayed = try await http.send(
                    .PUT, "/api/v1/watermarks/fault-keyed", json: Self.success(1), headers: [("Idempotency-Key", "k1")])
                #expect(replayed.status == 201 && replayed.headers["Idempotent-Replayed"].first == "true")
                let health = try await http.send(.GET, "/health")
                #expect(health.status == 503 && health.text.contains("unhealthy"))
                #expect(harness.service.log.contains("Database operation failed"))

                // The disk has room again: the service is healthy and writable without a restart.
                try Self.setFileSizeLimit(pid: harness.service.pid, bytes: nil)
                try await waitUntil("/health to be 200 again", timeout: .seconds(10), every: .milliseconds(100)) {
                    try await http.send(.GET, "/health").status == 200
                }
                let after = try await http.send(.PUT, "/api/v1/watermarks/fault-0", json: Self.success(30))
                #expect(after.status == 200)
                #expect(try after.json()["version"] as? Int == 2, "refused writes changed nothing")
                try await waitUntil("the recovery log line") { harness.service.log.contains("Database writable again") }

                // Nothing corrupted, nothing acknowledged lost, after a restart too.
                #expect(try await harness.service.stop() == 0)
                #expect(try sqliteIntegrityCheck(harness.databasePath) == "ok")
                try await harness.restart()
                for minute in 1..<5 {
                    let reply = try await harness.http.send(.GET, "/api/v1/watermarks/fault-\(minute)")
                    #expect(try reply.json()["records_collected"] as? Int == minute)
                }
                #expect(
                    try await harness.http.send(.GET, "/api/v1/watermarks/fault-0").json()["records_collected"] as? Int
                        == 30)
                reportFigures("fault_disk_full", ["writes_refused_503": refused])
            }
        }

        @Test("read-only database file: writes are 503, reads go on, recovery when it is writable again")
        func readOnlyDatabase() async throws {
            try await withStorageService(environment: ["LOG_LEVEL": "info"]) { harness in
                let http = harness.http
                #expect(try await http.send(.PUT, "/api/v1/watermarks/ro", json: Self.success(1)).status == 201)
                // Running as root, permissions do not stop writes; the immutable attribute does (ext4, xfs...).
                // The database and its WAL only: the -shm index is memory-mapped, and SQLite dies of SIGBUS
                // when a mapped file turns immutable under it (a case no real read-only mount can produce).
                let files = [harness.databasePath, harness.databasePath + "-wal"]
                    .filter { FileManager.default.fileExists(atPath: $0) }
                let locked = try runToEnd(["chattr", "+i"] + files)
                defer { _ = try? runToEnd(["chattr", "-i"] + files) }
                try #require(locked.status == 0, "chattr +i is not supported here: \(locked.output)")

                var refused = 0
                for minute in 2..<6 {
                    let reply = try await http.send(.PUT, "/api/v1/watermarks/ro", json: Self.success(minute))
                    if reply.status == 503 { refused += 1 }
                    #expect(
                        reply.status == 503 && reply.text.contains("database_unavailable"),
                        "\(reply.status) \(reply.text)")
                }
                #expect(try await http.send(.GET, "/api/v1/watermarks/ro").status == 200)
                #expect(try await http.send(.GET, "/health").status == 503)
                #expect(harness.service.log.contains("Database operation failed"))

                _ = try runToEnd(["chattr", "-i"] + files)
                try await waitUntil("/health to be 200 again", timeout: .seconds(10), every: .milliseconds(100)) {
                    try await http.send(.GET, "/health").status == 200
                }
                let after = try await http.send(.PUT, "/api/v1/watermarks/ro", json: Self.success(9))
                #expect(after.status == 200)
                #expect(try after.json()["version"] as? Int == 2)
                #expect(try await harness.service.stop() == 0)
                #expect(try sqliteIntegrityCheck(harness.databasePath) == "ok")
                reportFigures("fault_read_only", ["writes_refused_503": refused])
            }
        }

    }
#endif
