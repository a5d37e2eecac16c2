import Foundation
import NIOHTTP1
import Testing

/// Races on one source against the real process: optimistic concurrency loses no update, a lease has one
/// holder, a stale fencing token is refused, and an idempotent request is applied once.
@Suite("Reliability: concurrency", .serialized, .timeLimit(.minutes(2)))
struct ConcurrencyTests {
    static let racers = 32

    @Test("32 writers racing with If-Match lose no update: final version = successful writes")
    func ifMatchRace() async throws {
        try await withStorageService(environment: ["LOG_LEVEL": "info"]) { harness in
            let http = harness.http
            let path = "/api/v1/watermarks/race"
            let created = try await http.send(
                .PUT, path, json: Self.success(second: 0), headers: [("If-None-Match", "*")])
            #expect(created.status == 201)
            let perWriter = 3
            let results = try await withThrowingTaskGroup(of: (successes: Int, conflicts: Int).self) { group in
                for _ in 0..<Self.racers {
                    group.addTask {
                        var successes = 0
                        var conflicts = 0
                        var attempts = 0
                        while successes < perWriter, attempts < 400 {
                            attempts += 1
                            let read = try await http.send(.GET, path)
                            guard read.status == 200, let version = try read.json()["version"] as? Int else {
                                throw ProcessFailure("read failed: \(read.status) \(read.text)")
                            }
                            // The timestamp follows the version, so the race is on the version alone.
                            let write = try await http.send(
                                .PUT, path, json: Self.success(second: version),
                                headers: [("If-Match", "\"\(version)\"")]
                            )
                            switch write.status {
                            case 200: successes += 1
                            case 412: conflicts += 1
                            default: throw ProcessFailure("unexpected answer \(write.status) \(write.text)")
                            }
                        }
                        return (successes, conflicts)
                    }
                }
                var total = (successes: 0, conflicts: 0)
                for try await result in group {
                    total.successes += result.successes
                    total.conflicts += result.conflicts
                }
                return total
            }
            #expect(results.successes == Self.racers * perWriter)
            let final = try await http.send(.GET, path)
            let version = try final.json()["version"] as? Int
            #expect(version == 1 + results.successes, "created once + every successful write, nothing lost")
            let history = try await http.send(.GET, path + "/history?limit=1000")
            let runs = try history.json()["runs"] as? [[String: Any]] ?? []
            #expect(runs.count == 1 + results.successes)
            #expect(runs.compactMap { $0["version"] as? Int } == Array((1...(1 + results.successes)).reversed()))
            reportFigures(
                "if_match_race",
                ["writers": Self.racers, "successful_writes": results.successes, "conflicts_412": results.conflicts]
            )
        }
    }

    @Test("32 racing lease requests give exactly one holder; the others see it in lease_held")
    func leaseRace() async throws {
        try await withStorageService(environment: ["LOG_LEVEL": "info"]) { harness in
            let http = harness.http
            let answers = try await withThrowingTaskGroup(of: LeaseAnswer.self) { group in
                for index in 0..<Self.racers {
                    group.addTask {
                        let owner = "collector-\(index)"
                        let reply = try await http.send(
                            .POST, "/api/v1/watermarks/leased/lease", json: #"{"owner":"\#(owner)","ttl_seconds":60}"#
                        )
                        let body = try reply.json()
                        let error = body["error"] as? [String: Any]
                        return LeaseAnswer(
                            owner: owner, status: reply.status, grantedTo: body["owner"] as? String,
                            token: body["fencing_token"] as? Int, code: error?["code"] as? String,
                            holder: error?["holder"] as? String
                        )
                    }
                }
                var all: [LeaseAnswer] = []
                for try await answer in group { all.append(answer) }
                return all
            }
            let granted = answers.filter { $0.status == 200 }
            #expect(granted.count == 1)
            let winner = try #require(granted.first)
            #expect(winner.grantedTo == winner.owner)
            #expect(winner.token == 1)
            for loser in answers where loser.status != 200 {
                #expect(loser.status == 409)
                #expect(loser.code == "lease_held")
                #expect(loser.holder == winner.owner)
            }
            reportFigures("lease_race", ["contenders": answers.count, "holders": granted.count])
        }
    }

    struct LeaseAnswer: Sendable {
        let owner: String
        let status: Int
        let grantedTo: String?
        let token: Int?
        let code: String?
        let holder: String?
    }

    @Test("a writer with a stale fencing token is refused after another took over")
    func staleFencingToken() async throws {
        try await withStorageService(environment: ["LOG_LEVEL": "info"]) { harness in
            let http = harness.http
            let path = "/api/v1/watermarks/fenced"
            // Long enough for the three checks of a live lease below on a loaded machine (with 1 s, a write waiting
            // for its fsync behind every other suite could see the lease lapse first).
            let first = try await http.send(.POST, path + "/lease", json: #"{"owner":"paused","ttl_seconds":5}"#)
            #expect(first.status == 200)
            let oldToken = try #require(try first.json()["fencing_token"] as? Int)
            #expect(
                try await http.send(
                    .PUT, path, json: Self.success(second: 1), headers: [("Lease-Token", "\(oldToken)")]
                ).status == 201)
            // While the lease is live, nobody else gets it and a write without the token is refused.
            let early = try await http.send(.POST, path + "/lease", json: #"{"owner":"successor","ttl_seconds":60}"#)
            #expect(early.status == 409)
            let tokenless = try await http.send(.PUT, path, json: Self.success(second: 2))
            #expect(tokenless.status == 409 && tokenless.text.contains("lease_required"))

            // The first holder pauses past its lease; the successor takes over.
            var newToken = 0
            try await waitUntil("the successor to get the lease", timeout: .seconds(20), every: .milliseconds(100)) {
                let reply = try await http.send(
                    .POST, path + "/lease", json: #"{"owner":"successor","ttl_seconds":60}"#)
                guard reply.status == 200 else { return false }
                newToken = try reply.json()["fencing_token"] as? Int ?? 0
                return true
            }
            #expect(newToken == oldToken + 1)
            let before = try await http.send(.GET, path)

            // The paused collector wakes up and writes with its old token: refused, nothing changes.
            let stale = try await http.send(
                .PUT, path, json: Self.success(second: 3), headers: [("Lease-Token", "\(oldToken)")])
            #expect(stale.status == 409)
            #expect(stale.text.contains("stale_lease"))
            let staleDelete = try await http.send(.DELETE, path, headers: [("Lease-Token", "\(oldToken)")])
            #expect(staleDelete.status == 409)
            let staleRelease = try await http.send(.DELETE, path + "/lease", headers: [("Lease-Token", "\(oldToken)")])
            #expect(staleRelease.status == 409)
            #expect(try await http.send(.GET, path).body == before.body)

            let current = try await http.send(
                .PUT, path, json: Self.success(second: 4), headers: [("Lease-Token", "\(newToken)")])
            #expect(current.status == 200)
            #expect(try current.json()["version"] as? Int == 2)
        }
    }

    @Test("32 concurrent replays of one idempotent request are applied once")
    func idempotentReplays() async throws {
        try await withStorageService(environment: ["LOG_LEVEL": "info"]) { harness in
            let http = harness.http
            let path = "/api/v1/watermarks/idempotent"
            #expect(try await http.send(.PUT, path, json: Self.success(second: 1)).status == 201)
            let body = #"{"timestamp":"2025-01-01T00:00:05.000000001Z","status":"success","records_collected":42}"#
            let replies = try await withThrowingTaskGroup(of: (status: Int, version: Int?, replayed: Bool).self) {
                group in
                for _ in 0..<Self.racers {
                    group.addTask {
                        let reply = try await http.send(
                            .PUT, path, json: body, headers: [("Idempotency-Key", "run-2025-01-01-5")])
                        let version = try? reply.json()["version"] as? Int
                        return (reply.status, version, reply.headers.first(name: "Idempotent-Replayed") == "true")
                    }
                }
                var all: [(status: Int, version: Int?, replayed: Bool)] = []
                for try await reply in group { all.append(reply) }
                return all
            }
            #expect(replies.allSatisfy { $0.status == 200 && $0.version == 2 }, "\(replies)")
            #expect(replies.filter { !$0.replayed }.count == 1, "exactly one request applied")
            let history = try await http.send(.GET, path + "/history")
            #expect((try history.json()["runs"] as? [[String: Any]])?.count == 2)
            // The same key with another body is refused and changes nothing.
            let reused = try await http.send(
                .PUT, path, json: Self.success(second: 9), headers: [("Idempotency-Key", "run-2025-01-01-5")]
            )
            #expect(reused.status == 409 && reused.text.contains("idempotency_key_reused"))
            #expect(try await http.send(.GET, path).json()["version"] as? Int == 2)
        }
    }

    static func success(second: Int) -> String {
        let time = String(format: "2025-01-01T%02d:%02d:%02dZ", second / 3600, (second / 60) % 60, second % 60)
        return #"{"timestamp":"\#(time)","status":"success","records_collected":1}"#
    }
}
