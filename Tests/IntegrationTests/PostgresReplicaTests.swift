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
        let environment = ["DATABASE_URL": server.url(), "LOG_LEVEL": "info"]
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
                            } else {
                                // Each write is later than the one before: any answer but a 2xx is a fault.
                                Issue.record("writer \(writer), minute \(minute): \(reply.status) \(reply.text)")
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
            // Every writer's last write went to a replica that answers: each saw its last minute acknowledged.
            #expect(acknowledged == Dictionary(uniqueKeysWithValues: (0..<8).map { ($0, 39) }), "seed \(seed)")
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

    /// The mark of a restart-test writer's `minute`-th attempt: a minute later each time, over days if need be.
    static func outageMark(_ minute: Int) -> String {
        String(format: "2026-03-%02dT%02d:%02d:00Z", 1 + minute / 1440, minute / 60 % 24, minute % 60)
    }

    @Test("a PostgreSQL restart under load through both replicas: 503s while down, then recovery, nothing lost")
    func restartUnderLoad() async throws {
        try await Self.withReplicas { server, replicas in
            let tally = OutageTally()
            try await withThrowingTaskGroup(of: Void.self) { group in
                for writer in 0..<8 {
                    let http = replicas[writer % 2].http
                    group.addTask {
                        // Every attempt writes a later minute, so the stored mark is at least the newest 2xx.
                        var minute = 0
                        let deadline = ContinuousClock.now + .seconds(120)
                        while ContinuousClock.now < deadline {
                            if await tally.finished(writer) { return }
                            minute += 1
                            let at = Self.outageMark(minute)
                            let reply = try? await http.send(
                                .PUT, "/api/v1/watermarks/outage-\(writer)", json: Self.success(at),
                                timeout: .seconds(10))
                            await tally.record(writer, minute: minute, status: reply?.status)
                            if reply?.status == 503 { try await Task.sleep(for: .milliseconds(20)) }
                        }
                        throw ProcessFailure("writer \(writer) did not see the database come back within 120 s")
                    }
                }
                group.addTask {
                    try await waitUntil("writes before the outage", timeout: .seconds(60)) {
                        await tally.acknowledgedCount >= 40
                    }
                    await tally.note("stopping PostgreSQL")
                    try await server.stoppedServer()
                    try await waitUntil("503s from both replicas", timeout: .seconds(30)) {
                        await tally.unavailableReplicaCount >= 2
                    }
                    await tally.markRestarting()
                    await tally.note("restarting PostgreSQL")
                    try await server.restartedServer()
                    await tally.note("PostgreSQL restarted")
                }
                try await group.waitForAll()
            }
            let figures = await tally.figures
            let (others, timeline) = (await tally.otherAnswers, await tally.timeline)
            #expect(figures.otherFailures == 0, "answers other than 2xx and 503: \(others); steps: \(timeline)")
            for (writer, minute) in await tally.acknowledged {
                let stored = try await replicas[(writer + 1) % 2].http.send(.GET, "/api/v1/watermarks/outage-\(writer)")
                let text = try #require(try stored.json()["last_successful_timestamp"] as? String)
                let expected = Self.outageMark(minute)
                #expect(text >= expected, "writer \(writer): acknowledged \(expected), stored \(text)")
            }
            reportFigures(
                "replica_postgres_restart",
                [
                    "acknowledged": figures.acknowledged, "unavailable_503": figures.unavailable,
                    "other_failures": figures.otherFailures,
                ])
        }
    }

    @Test("replicas starting at the same moment on an empty database apply each migration once, all serve")
    func simultaneousStartsMigrateOnce() async throws {
        let server = try await PostgresTestServer.started()
        let environment = ["PORT": "0", "HOST": "127.0.0.1", "DATABASE_URL": server.url(), "LOG_LEVEL": "info"]
        var processes: [ServiceProcess] = []
        do {
            // Spawned back to back, before any of them has had time to reach the database.
            for _ in 0..<3 { processes.append(try ServiceProcess("storage-service", environment: environment)) }
            var clients: [TestHTTP] = []
            for process in processes {
                let port = try await process.waitForPort(marker: "Storage service listening")
                clients.append(TestHTTP(baseURL: "http://127.0.0.1:\(port)"))
            }
            // The server listens before the migrations end; requests wait for them, and so does this.
            try await waitUntil("every replica to have its database ready", timeout: .seconds(30)) {
                processes.allSatisfy { $0.log.contains("Database ready") }
            }
            let ready = processes.flatMap { $0.log.split(separator: "\n").filter { $0.contains("Database ready") } }
            #expect(ready.count == 3, "\(ready)")
            // One replica applied v1 and the others found it done (the advisory lock made them wait for it).
            #expect(ready.filter { $0.contains("migrations_applied=v1") }.count == 1, "\(ready)")
            let created = try await clients[0].send(
                .PUT, "/api/v1/watermarks/together", json: Self.success("2026-03-06T00:00:00Z"))
            #expect(created.status == 201)
            for client in clients {
                #expect(try await client.send(.GET, "/api/v1/watermarks/together").status == 200)
            }
        } catch {
            for process in processes { _ = try? await process.stop() }
            await server.stopped()
            throw error
        }
        for process in processes { _ = try? await process.stop() }
        await server.stopped()
    }
}

/// What the writers of the restart test saw: the newest acknowledged minute of each, the 503s, anything else.
actor OutageTally {
    private(set) var acknowledged: [Int: Int] = [:]
    private(set) var acknowledgedCount = 0
    private var unavailable = 0
    private var unavailableReplicas: Set<Int> = []
    private var otherFailures = 0
    /// The first few of those, with when they came (seconds since the tally began).
    private(set) var otherAnswers: [String] = []
    private let began = ContinuousClock.now
    private var restarting = false
    /// Per writer: 2xx answers since the restart began.
    private var sinceRestart: [Int: Int] = [:]

    var unavailableReplicaCount: Int { unavailableReplicas.count }
    var figures: (acknowledged: Int, unavailable: Int, otherFailures: Int) {
        (acknowledgedCount, unavailable, otherFailures)
    }

    func record(_ writer: Int, minute: Int, status: Int?) {
        switch status {
        case 200, 201:
            acknowledged[writer] = minute
            acknowledgedCount += 1
            if restarting { sinceRestart[writer, default: 0] += 1 }
        case 503:
            unavailable += 1
            unavailableReplicas.insert(writer % 2)
        default:
            otherFailures += 1
            if otherAnswers.count < 10 {
                otherAnswers.append("\(status.map(String.init) ?? "no answer") at \(ContinuousClock.now - began)")
            }
        }
    }

    func markRestarting() { restarting = true }

    /// Adds a step of the test to the timeline printed with the figures.
    func note(_ step: String) { timeline.append("\(step) at \(ContinuousClock.now - began)") }
    private(set) var timeline: [String] = []

    /// A writer is done once it has had five writes acknowledged after the database came back.
    func finished(_ writer: Int) -> Bool { sinceRestart[writer, default: 0] >= 5 }
}
