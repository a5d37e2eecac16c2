import Foundation
import NIOHTTP1
import TestSupport
import Testing
import WatermarkCore

/// Several collection replicas, still exactly once: one PostgreSQL holds the storage of two storage replicas and
/// the shared sink of two collection replicas (`SINK_URL`, `REQUIRE_LEASE=true`, their own `INSTANCE_ID` and data
/// folder), which serve a TAXII collection on medallion and a drop folder that both read. A producer adds and
/// revises objects and drops files throughout; collection replicas are SIGKILLed at seeded random moments and
/// restarted (some only after their leases expired, so the other replica takes their sources over), and one
/// storage replica is killed and restarted. At the end the records table holds every (id, version) of both
/// sources exactly once and each watermark is its source's newest mark. `REPLICA_SEED` replays a run.
@Suite("Collection replicas on a shared sink, under attack", .serialized, .timeLimit(.minutes(10)))
struct ReplicaFailoverTests {
    static let seed = SeededRandom.seed(from: "REPLICA_SEED", default: 20_261_204)

    /// A collection replica in serve mode, restartable with the same owner and data folder.
    final class CollectionReplica {
        let name: String
        let environment: [String: String]
        private(set) var process: ServiceProcess
        private(set) var logs: [String] = []
        var log: String { (logs + [process.log]).joined(separator: "\n") }

        init(name: String, environment: [String: String]) throws {
            self.name = name
            self.environment = environment
            process = try Self.start(environment)
        }

        static func start(_ environment: [String: String]) throws -> ServiceProcess {
            let binary = ServiceProcess.binDirectory.appendingPathComponent("collection-service")
            return try ServiceProcess(binary.path, environment: environment)
        }

        /// Kills the replica; whether the kill ended it (false: it had already exited by itself).
        func kill() async throws -> Bool {
            let wasRunning = process.isRunning
            process.signal(SIGKILL)
            _ = try await process.waitForExit(timeout: .seconds(30))
            logs.append(process.log)
            return wasRunning && process.wasSignalled
        }

        func restart() throws { process = try Self.start(environment) }

        func stop() async {
            _ = try? await process.stop()
            logs.append(process.log)
        }
    }

    @Test func everyVersionOnceAcrossReplicasThroughKillsAndFailover() async throws {
        try await PostgresServiceTests.withServer { server in
            try await withMedallion { medallion in try await Self.attack(server: server, medallion: medallion) }
        }
    }

    static func attack(server: PostgresTestServer, medallion: MedallionServer) async throws {
        var random = SeededRandom(seed: seed)
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let drop = folder.path + "/drop"
        try FileManager.default.createDirectory(atPath: drop, withIntermediateDirectories: true)
        // Short leases and intervals, so failover happens within the test: a source's lease is never shorter than
        // two of its request timeouts (3 s here), and the TTL is 6 s.
        let sources = """
            {"sources": [
              {"id": "medallion", "type": "taxii21", "api_root": "\(medallion.apiRoot)",
               "collection_id": "\(MedallionServer.collectionID)", "username_env": "TAXII_USERNAME",
               "password_env": "TAXII_PASSWORD", "page_size": 3, "timeout_seconds": 3, "interval_seconds": 1,
               "checkpoint_pages": 1},
              {"id": "drop", "type": "directory", "path": "\(drop)", "page_size": 5, "timeout_seconds": 3,
               "interval_seconds": 1, "checkpoint_pages": 1}
            ]}
            """
        try sources.write(toFile: folder.path + "/sources.json", atomically: true, encoding: .utf8)

        // Fixed ports: a restarted storage replica answers where its collection replica looks for it.
        var storages: [StorageServiceHarness] = []
        defer {
            // On failure too: their processes and database folders (finished on success below, so this is a no-op).
            for storage in storages {
                storage.service.signal(SIGKILL)
                storage.directory.remove()
            }
        }
        for _ in 0..<2 {
            storages.append(
                try await StorageServiceHarness(
                    environment: ["DATABASE_URL": server.url(), "LOG_LEVEL": "info", "PORT": "\(try freePort())"]))
        }
        var replicas: [CollectionReplica] = []
        defer {
            for replica in replicas { replica.process.signal(SIGKILL) }
        }
        for (index, name) in ["replica-a", "replica-b"].enumerated() {
            replicas.append(
                try CollectionReplica(
                    name: name,
                    environment: [
                        "COLLECTION_CONFIG": folder.path + "/sources.json", "DATA_DIR": folder.path + "/data-\(name)",
                        "PORT": "0", "HOST": "127.0.0.1", "INSTANCE_ID": name, "REQUIRE_LEASE": "true",
                        "SINK_URL": server.url(), "LEASE_TTL_SECONDS": "6", "LEASE_RENEW_SECONDS": "2",
                        "STORAGE_SERVICE_URL": "http://127.0.0.1:\(storages[index].port)",
                        "STORAGE_TIMEOUT_SECONDS": "2", "TAXII_USERNAME": "admin", "TAXII_PASSWORD": "Password0",
                        "MAX_CONCURRENT_RUNS": "2", "LOG_LEVEL": "info",
                    ]))
        }

        // The producer: medallion objects added and revised (one date_added per POST), files dropped.
        var revisions: [Int: Int] = [:]
        var nextObject = 1
        var dropped: [String: Timestamp] = [:]  // id -> its mark
        let started = Timestamp.now()
        var nextRecord = 1
        func produce() async throws {
            var objects: [[String: Any]] = []
            for _ in 0..<2 {
                revisions[nextObject] = 0
                objects.append(indicator(nextObject, modified: "2026-11-26T10:00:00.000Z"))
                nextObject += 1
            }
            if nextObject > 3 {
                let number = Int.random(in: 1..<(nextObject - 1), using: &random)
                revisions[number, default: 0] += 1
                objects.append(
                    indicator(number, modified: "2026-11-26T10:\(String(format: "%02d", revisions[number]!)):00.000Z"))
            }
            try await medallion.add(objects)
            var lines: [String] = []
            for _ in 0..<Int.random(in: 3...12, using: &random) {
                // Recent (a drop folder's first mark is at least its lookback ago), in the past, all distinct.
                let mark = started.adding(.seconds(nextRecord - 3600))
                dropped["record-\(nextRecord)"] = mark
                lines.append(#"{"id":"record-\#(nextRecord)","modified":"\#(mark)"}"#)
                nextRecord += 1
            }
            let name = drop + "/\(String(format: "%04d", nextRecord)).ndjson"
            try (lines.joined(separator: "\n") + "\n").write(toFile: name, atomically: true, encoding: .utf8)
        }

        // The attack: produce, wait a seeded moment, kill a replica; restart it at once or after its leases
        // expired. In one round the storage replica of replica-a is killed and restarted instead.
        var kills = 0
        var slowRestarts = 0
        var storageKilled = false
        for round in 0..<8 {
            try await produce()
            try await Task.sleep(for: .milliseconds(Int.random(in: 200...1500, using: &random)))
            if round == 3 {
                _ = try await storages[0].service.stop(signal: SIGKILL)
                storageKilled = storages[0].service.wasSignalled  // it was running until the kill
                try await Task.sleep(for: .seconds(7))  // replica-a's leases expire; replica-b takes over
                try await storages[0].restart()
                continue
            }
            let victim = replicas[Int.random(in: 0...1, using: &random)]
            #expect(try await victim.kill(), "\(victim.name) had exited before its kill in round \(round)")
            kills += 1
            try await produce()
            if Bool.random(using: &random) {
                try await Task.sleep(for: .seconds(7))  // past the TTL: the other replica may take over
                slowRestarts += 1
            }
            try victim.restart()
            print("replica attack: round \(round) killed \(victim.name) slow_restart=\(slowRestarts)")
        }
        try await produce()

        // Both replicas catch up: every (id, version) the producer made is in the table, once, and both watermarks
        // reach their source's newest mark.
        let manifest = try await medallion.manifest()
        let expectedTAXII = Set(
            manifest.map { "medallion/" + $0.id + "/" + ExactlyOnceAttackTests.normalised($0.version) })
        let expectedDrop = Set(dropped.map { "drop/\($0.key)/\($0.value)" })
        let expected = expectedTAXII.union(expectedDrop)
        let newestTAXII = try #require(manifest.compactMap { try? Timestamp(rfc3339: $0.dateAdded) }.max())
        let newestDrop = try #require(dropped.values.max())
        var rows: [String] = []
        func watermark(_ source: String) async -> String? {
            let reply = try? await storages[1].http.send(.GET, "/api/v1/watermarks/\(source)")
            return (try? reply?.json())?["last_successful_timestamp"] as? String
        }
        do {
            try await waitUntil(
                "both sources collected and their marks moved", timeout: .seconds(120), every: .seconds(1)
            ) {
                rows = try server.query("SELECT source_id || '/' || id || '/' || version FROM records")
                let taxii = await watermark("medallion")
                let dropMark = await watermark("drop")
                return Set(rows) == expected && taxii.map { try? Timestamp(rfc3339: $0) } == newestTAXII
                    && dropMark.map { try? Timestamp(rfc3339: $0) } == newestDrop
            }
        } catch {
            let missing = expected.subtracting(rows).sorted()
            let extra = Set(rows).subtracting(expected).sorted()
            Issue.record(
                """
                seed \(seed): \(missing.count) missing (\(missing.prefix(8))), \(extra.count) unexpected \
                (\(extra.prefix(8))); medallion mark \(await watermark("medallion") ?? "none") of \(newestTAXII), \
                drop mark \(await watermark("drop") ?? "none") of \(newestDrop)
                """)
            for replica in replicas {
                let lines = replica.log.split(separator: "\n").filter {
                    $0.contains("collection run") || $0.contains("error") || $0.contains("warning")
                }
                print("== \(replica.name)\n" + lines.suffix(25).joined(separator: "\n"))
            }
            throw error
        }
        for replica in replicas { await replica.stop() }
        for storage in storages { await storage.finish() }

        let versions = revisions.values.reduce(revisions.count) { $0 + $1 }
        #expect(expectedTAXII.count == versions, "the server holds every version the producer made")
        #expect(rows.count == expected.count && Set(rows) == expected)
        #expect(storageKilled, "the storage replica was never killed")
        // Sources moved between replicas: each replica finished runs of each source at some point.
        for replica in replicas {
            for source in ["medallion", "drop"] {
                #expect(
                    replica.log.contains("source_id=\(source) status=success"),
                    "\(replica.name) never collected \(source)")
            }
        }
        #expect(!replicas.contains { $0.log.contains(PostgresTestServer.password) })
        reportFigures(
            "replicaFailover",
            [
                "seed": Int(seed), "collection_kills": kills, "slow_restarts": slowRestarts,
                "storage_replica_kills": 1, "taxii_versions": expectedTAXII.count, "drop_records": expectedDrop.count,
                "rows": rows.count, "duplicates": rows.count - Set(rows).count,
            ])
    }
}
