import Foundation
import NIOHTTP1
import TestSupport
import Testing
import WatermarkCore

/// The attack shared by `ExactlyOnceAttackTests`: rounds of `collection-service --once` started against the live
/// storage, each killed with SIGKILL at a seeded random moment within the length of the last run that ended
/// by itself, while `produce` publishes before and during the run; in the outage rounds the storage is stopped
/// before the run (which then goes to its end, queueing its updates) and started again after it. Rounds go on
/// until at least 12 runs were killed (40 rounds at most); then a last run collects the rest and must succeed.
struct KillLoop {
    var random: SeededRandom
    let seed: UInt64
    let storage: StorageServiceHarness
    let setup: CollectionSetup
    /// Added to the collector's environment (no INSTANCE_ID: the default owner is what a restart presents).
    var environment = ["INSTANCE_ID": ""]
    private(set) var round = 0
    private(set) var kills = 0
    private(set) var killedAfterCheckpoint = 0
    private(set) var outages = 0
    /// Outages that began while a run held its lease.
    private(set) var midRunOutages = 0
    private(set) var logs: [String] = []

    /// `seed` is `ATTACK_SEED` (printed with the figures); `salt` gives each test its own sequence of it.
    init(seed: UInt64, salt: UInt64 = 0, storage: StorageServiceHarness, setup: CollectionSetup) {
        self.seed = seed
        self.random = SeededRandom(seed: seed ^ salt)
        self.storage = storage
        self.setup = setup
    }

    var log: String { logs.joined(separator: "\n") }
    var figures: [String: Int] {
        [
            "seed": Int(seed), "kills": kills, "killed_after_checkpoint": killedAfterCheckpoint,
            "storage_outages": outages, "mid_run_outages": midRunOutages, "rounds": round,
        ]
    }

    /// `outageRounds`: the first outage stops the storage before its run starts (the run goes without a lease),
    /// the second once its run has written a page (the run holds a live lease and queues its updates with the
    /// token; the next process must take over its own lease and deliver them).
    mutating func run(
        source: String, outageRounds: [Int], minimumKills: Int = 12, minimumRounds: Int = 12,
        produce: (Int) async throws -> Void
    ) async throws {
        let url = "http://127.0.0.1:\(storage.port)"
        var runLength = 500  // ms
        while round < 40, kills < minimumKills || round < minimumRounds {
            try await produce(round)
            let outage = outageRounds.contains(round)
            let midRun = outage && outageRounds.firstIndex(of: round)!.isMultiple(of: 2) == false
            if outage && !midRun {
                _ = try await storage.service.stop()
                outages += 1
            }
            let before = try setup.sinkLines(source).count
            let process = try setup.startOnce(storageURL: url, extra: environment)
            if midRun {
                try await waitUntil("a page on disk", timeout: .seconds(60), every: .milliseconds(2)) {
                    try setup.sinkLines(source).count > before || !process.isRunning
                }
                _ = try await storage.service.stop()
                outages += 1
                if process.isRunning { midRunOutages += 1 }
            }
            let delay = Int.random(in: 20...max(100, runLength), using: &random)
            try await Task.sleep(for: .milliseconds(delay / 2))
            try await produce(round)  // while the run is under way
            try await Task.sleep(for: .milliseconds(delay - delay / 2))
            if process.isRunning && !outage {
                process.signal(SIGKILL)
                kills += 1
                _ = try await process.waitForExit(timeout: .seconds(30))
                if process.log.contains("checkpoint: watermark moved mid-run") { killedAfterCheckpoint += 1 }
            } else {
                _ = try await process.waitForExit(timeout: .seconds(90))
                // The run's own length plus the process start, as it reported it (the wall time would
                // include the wait above and only grow).
                if !outage, let line = process.log.split(separator: "\n").last(where: { $0.hasPrefix(source + " ") }),
                    let range = line.range(of: "duration_ms="),
                    let reported = Int(line[range.upperBound...].prefix { $0.isNumber })
                {
                    runLength = reported + 150
                }
            }
            logs.append(process.log)
            let summary = process.log.split(separator: "\n").last { $0.hasPrefix(source + " ") } ?? "killed"
            print("attack: round \(round) delay_ms=\(delay) outage=\(outage) \(summary.prefix(160))")
            if outage { try await storage.restart() }
            round += 1
        }
        let final = try setup.startOnce(storageURL: url, extra: environment)
        let status = try await final.waitForExit(timeout: .seconds(120))
        logs.append(final.log)
        #expect(status == 0, "\(final.log)")
        #expect(kills >= minimumKills, "only \(kills) runs were killed (seed \(seed))")
        #expect(outages == outageRounds.count)
    }

    /// The source's stored watermark.
    func watermark(_ source: String) async throws -> Timestamp {
        let mark = try await storage.http.send(.GET, "/api/v1/watermarks/\(source)").json()
        return try Timestamp(rfc3339: try #require(mark["last_successful_timestamp"] as? String))
    }

    /// No restarted collector was locked out of its own lease, the updates queued during the outages were all
    /// delivered, and none was refused or dead-lettered.
    func checkLeasesAndQueue(source: String) throws {
        #expect(!log.contains("\(source) skipped"), "a restarted collector was locked out of its own lease")
        #expect(log.contains("watermark update queued"), "no update was queued during the outages")
        #expect(!log.contains("refused by storage") && !log.contains("dropped"))
        #expect(!FileManager.default.fileExists(atPath: setup.dataPath + "/.state/dead-letter.json"))
        let pending =
            try JSONSerialization.jsonObject(
                with: Data(contentsOf: URL(fileURLWithPath: setup.dataPath + "/.state/pending.json")))
            as? [String: Any]
        #expect((pending?["updates"] as? [Any])?.isEmpty == true, "\(String(describing: pending))")
    }
}

/// `scripts/otx-stub/serve.py`: OTX's subscribed-pulses API on a free port, with a POST for the producer.
final class OTXStub: Sendable {
    static let apiKey = "otx-test-key"
    let port: Int
    let process: ServiceProcess
    var baseURL: String { "http://127.0.0.1:\(port)" }

    init() async throws {
        port = try freePort()
        process = try ServiceProcess(
            "/usr/bin/env",
            arguments: [
                "python3", repositoryRoot.appendingPathComponent("scripts/otx-stub/serve.py").path, "\(port)",
                Self.apiKey,
            ],
            environment: [:])
        _ = try await process.waitForLine(containing: "otx stub listening", timeout: .seconds(30))
    }

    func stop() { process.signal(SIGKILL) }

    /// Publishes pulses (`modified` in OTX's naive UTC form).
    func publish(_ pulses: [(id: String, modified: Timestamp)]) async throws {
        let body = pulses.map { pulse in
            [
                "id": pulse.id, "name": "pulse \(pulse.id)",
                "modified": String(pulse.modified.formatted(fractionDigits: 6).dropLast()),
            ]
        }
        let reply = try await TestHTTP(baseURL: baseURL).send(
            .POST, "/test/pulses",
            json: String(decoding: try JSONSerialization.data(withJSONObject: body), as: UTF8.self))
        guard reply.status == 201 else {
            throw ProcessFailure("otx stub refused the pulses: \(reply.status) \(reply.text)")
        }
    }
}
