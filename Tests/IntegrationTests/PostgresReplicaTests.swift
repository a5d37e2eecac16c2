import Foundation
import NIOHTTP1
import TestSupport
import Testing

/// Two `storage-service` processes on one PostgreSQL: every rule holds across replicas because it is held by
/// the database. Seeded: `REPLICA_SEED` replays a run.
/// Counts shared by the writer tasks of a test.
actor Tally {
    private(set) var count = 0
    /// Per writer: the highest minute acknowledged with a 2xx.
    private(set) var acknowledged: [Int: Int] = [:]

    init(_ start: Int = 0) { count = start }
    func add() { count += 1 }
    func acknowledge(_ writer: Int, _ minute: Int) { acknowledged[writer] = minute }
}

@Suite("storage replicas on one PostgreSQL", .serialized)
struct PostgresReplicaTests {
    /// Two replicas on a fresh server; both are stopped and the server removed afterwards, also on failure.
    static func withReplicas(_ body: (PostgresTestServer, [StorageServiceHarness]) async throws -> Void) async throws {
        let server = try await PostgresTestServer.started()
        let environment = ["DATABASE_URL": server.url()]
        var replicas: [StorageServiceHarness] = []
        do {
            for _ in 0..<2 { replicas.append(try await StorageServiceHarness(environment: environment)) }
            try await body(server, replicas)
        } catch {
            for replica in replicas { await replica.finish() }
            await server.stopped()
            throw error
        }
        for replica in replicas { await replica.finish() }
        await server.stopped()
    }

    static func success(_ at: String) -> String { #"{"status":"success","timestamp":"\#(at)","records_collected":1}"# }

    @Test("32 writers with If-Match over both replicas lose no update: final version = successful writes")
    func optimisticWritersLoseNothing() async throws {
        try await Self.withReplicas { _, replicas in
            let created = try await replicas[0].http.send(
                .PUT, "/api/v1/watermarks/race", json: Self.success("2026-03-01T00:00:00Z"))
            #expect(created.status == 201)
            let successes = Tally(1)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for writer in 0..<32 {
                    let http = replicas[writer % 2].http
                    group.addTask {
                        var done = 0
                        var attempts = 0
                        while done < 3, attempts < 200 {
                            attempts += 1
                            let current = try await http.send(.GET, "/api/v1/watermarks/race")
                            guard let version = try current.json()["version"] as? Int else { continue }
                            let at = "2026-03-01T00:00:00Z"
                            let put = try await http.send(
                                .PUT, "/api/v1/watermarks/race", json: Self.success(at),
                                headers: [("If-Match", "\"\(version)\"")])
                            if put.status == 200 {
                                done += 1
                                await successes.add()
                            } else if put.status != 412 {
                                throw ProcessFailure("unexpected \(put.status): \(put.text)")
                            }
                        }
                    }
                }
                try await group.waitForAll()
            }
            let final = try await replicas[1].http.send(.GET, "/api/v1/watermarks/race")
            let succeeded = await successes.count
            #expect(try final.json()["version"] as? Int == succeeded)
            #expect(succeeded == 1 + 32 * 3)
        }
    }

    @Test("racing leases through both replicas give one holder; a stale fencing token is refused by either")
    func leasesAndFencing() async throws {
        try await Self.withReplicas { _, replicas in
            let answers = try await withThrowingTaskGroup(of: Int.self) { group in
                for owner in 0..<32 {
                    let http = replicas[owner % 2].http
                    group.addTask {
                        try await http.send(
                            .POST, "/api/v1/watermarks/leased/lease", json: #"{"owner":"w\#(owner)","ttl_seconds":60}"#
                        ).status
                    }
                }
                return try await group.reduce(into: [Int]()) { $0.append($1) }
            }
            #expect(answers.filter { $0 == 200 }.count == 1)
            #expect(answers.filter { $0 == 409 }.count == 31)

            // A holder releases through one replica; another owner takes over through the other, with a higher token.
            let a = try await replicas[0].http.send(
                .POST, "/api/v1/watermarks/other/lease", json: #"{"owner":"a","ttl_seconds":60}"#)
            let oldToken = try #require(try a.json()["fencing_token"] as? Int)
            let released = try await replicas[0].http.send(
                .DELETE, "/api/v1/watermarks/other/lease", headers: [("Lease-Token", "\(oldToken)")])
            #expect(released.status == 204)
            let b = try await replicas[1].http.send(
                .POST, "/api/v1/watermarks/other/lease", json: #"{"owner":"b","ttl_seconds":60}"#)
            let newToken = try #require(try b.json()["fencing_token"] as? Int)
            #expect(newToken > oldToken)
            for replica in replicas {
                let stale = try await replica.http.send(
                    .PUT, "/api/v1/watermarks/other", json: Self.success("2026-03-02T00:00:00Z"),
                    headers: [("Lease-Token", "\(oldToken)")])
                #expect(stale.status == 409 && stale.text.contains("stale_lease"))
            }
            let current = try await replicas[0].http.send(
                .PUT, "/api/v1/watermarks/other", json: Self.success("2026-03-02T00:00:00Z"),
                headers: [("Lease-Token", "\(newToken)")])
            #expect(current.status == 201)
        }
    }

    @Test("an idempotent replay through the other replica applies once")
    func idempotentReplayAcrossReplicas() async throws {
        try await Self.withReplicas { _, replicas in
            let headers = [("Idempotency-Key", "run-42")]
            let first = try await replicas[0].http.send(
                .PUT, "/api/v1/watermarks/idem", json: Self.success("2026-03-03T00:00:00Z"), headers: headers)
            let replay = try await replicas[1].http.send(
                .PUT, "/api/v1/watermarks/idem", json: Self.success("2026-03-03T00:00:00Z"), headers: headers)
            #expect(first.status == 201 && replay.status == 201)
            #expect(replay.headers.first(name: "Idempotent-Replayed") == "true")
            #expect(try replay.json()["version"] as? Int == 1)
            let read = try await replicas[0].http.send(.GET, "/api/v1/watermarks/idem")
            #expect(try read.json()["version"] as? Int == 1)
        }
    }

    @Test("SIGKILL of one replica under write load loses no acknowledged write")
    func killOneReplicaUnderLoad() async throws {
        let seed = SeededRandom.seed(from: "REPLICA_SEED", default: 20_261_203)
        var random = SeededRandom(seed: seed)
        let killAfter = Int.random(in: 20...60, using: &random)
        try await Self.withReplicas { _, replicas in
            let tally = Tally()
            let victim = replicas[0].service
            try await withThrowingTaskGroup(of: Void.self) { group in
                for writer in 0..<8 {
                    let first = replicas[writer % 2].http
                    let other = replicas[(writer + 1) % 2].http
                    group.addTask {
                        // As behind a load balancer: a writer whose replica stops answering goes to the other.
                        var http = first
                        for minute in 0..<40 {
                            let at = String(format: "2026-03-04T%02d:%02d:00Z", minute / 60, minute % 60)
                            await tally.add()
                            guard
                                let reply = try? await http.send(
                                    .PUT, "/api/v1/watermarks/load-\(writer)", json: Self.success(at),
                                    timeout: .seconds(5))
                            else {
                                http = other
                                continue
                            }
                            if reply.status == 200 || reply.status == 201 {
                                await tally.acknowledge(writer, minute)
                            }
                        }
                    }
                }
                group.addTask {
                    while await tally.count < killAfter { try await Task.sleep(for: .milliseconds(5)) }
                    _ = try await victim.stop(signal: SIGKILL)
                }
                try await group.waitForAll()
            }
            // Every acknowledged write is in the database, read through the replica that lived.
            let survivor = replicas[1].http
            let acknowledged = await tally.acknowledged
            for (writer, minute) in acknowledged {
                let stored = try await survivor.send(.GET, "/api/v1/watermarks/load-\(writer)")
                let text = try #require(try stored.json()["last_successful_timestamp"] as? String)
                let expected = String(format: "2026-03-04T%02d:%02d:00Z", minute / 60, minute % 60)
                #expect(text >= expected, "writer \(writer): acknowledged \(expected), stored \(text) (seed \(seed))")
            }
            reportFigures(
                "replica_sigkill",
                ["seed": Int(seed), "kill_after_writes": killAfter, "writers_acknowledged": acknowledged.count])
        }
    }
}
