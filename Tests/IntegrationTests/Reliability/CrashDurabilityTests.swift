import Foundation
import NIOHTTP1
import Synchronization
import TestSupport
import Testing

/// "Nothing acknowledged is ever lost": concurrent writers against the real process, SIGKILL at random
/// moments, restart, and every 2xx write is found with its value.
@Suite("Reliability: crash durability", .serialized, .timeLimit(.minutes(3)))
struct CrashDurabilityTests {
    /// What one source looks like from the writers' side.
    struct SourceState: Sendable {
        /// The last acknowledged write: its version and timestamp.
        var acknowledged: (version: Int, timestamp: String)?
        /// A write sent whose answer never came (the process died): it may or may not be stored.
        var pending: String?
        /// The highest version ever read back: versions never go backwards.
        var highestSeen = 0
        /// The next timestamp index; timestamps only grow.
        var next = 1
    }

    /// The writers' view of every source, shared by the writer tasks.
    final class Ledger: Sendable {
        private let states: Mutex<[SourceState]>
        let acknowledgedTotal = Atomic<Int>(0)
        /// Writes whose answer the kill cut off, and how many of them were found stored afterwards.
        let inDoubt = Atomic<Int>(0)
        let inDoubtLanded = Atomic<Int>(0)

        init(count: Int) { states = Mutex([SourceState](repeating: SourceState(), count: count)) }

        func withLock<T: Sendable>(_ body: (inout [SourceState]) -> T) -> T { states.withLock { body(&$0) } }
    }

    static let sources = 24
    static let writers = 12

    static func sourceID(_ index: Int) -> String { "crash-source-\(index)" }

    /// Timestamps that grow with `index`, with nanoseconds, one series per source.
    static func timestamp(source: Int, index: Int) -> String {
        let seconds = index % 60
        let minutes = (index / 60) % 60
        let hours = index / 3600
        return String(format: "2025-01-01T%02d:%02d:%02d.%09dZ", hours, minutes, seconds, source * 1000 + 7)
    }

    @Test("SIGKILL at random moments, at least 20 times: every acknowledged write survives")
    func killAndRestart() async throws {
        let seed = SeededRandom.seed(from: "RELIABILITY_SEED", default: 20_261_127)
        let kills = ProcessInfo.processInfo.environment["RELIABILITY_KILLS"].flatMap(Int.init) ?? 25
        print("reliability: crash durability: seed=\(seed) kills=\(kills) (RELIABILITY_SEED / RELIABILITY_KILLS)")
        var random = SeededRandom(seed: seed)
        try await withStorageService(environment: ["LOG_LEVEL": "info"]) { harness in
            try await run(harness, kills: kills, seed: seed, random: &random)
        }
    }

    private func run(_ harness: StorageServiceHarness, kills: Int, seed: UInt64, random: inout SeededRandom)
        async throws
    {
        let state = Ledger(count: Self.sources)
        var killsDone = 0
        var verifiedReads = 0

        for cycle in 0..<kills {
            if cycle > 0 { try await harness.restart() }
            verifiedReads += try await verify(harness.http, state, cycle: cycle)

            let http = harness.http
            let writeTime = Duration.milliseconds(Int.random(in: 40...400, using: &random))
            try await withThrowingTaskGroup(of: Void.self) { group in
                for writer in 0..<Self.writers {
                    group.addTask {
                        try await Self.write(writer: writer, http: http, state: state)
                    }
                }
                try await Task.sleep(for: writeTime)
                // The kill lands while requests are in flight.
                _ = try await harness.service.stop(signal: SIGKILL)
                // Requests sent after the kill would wait for the port to come back: give them up. A write
                // whose answer is lost this way stays pending, like one cut off by the kill.
                group.cancelAll()
                try await group.waitForAll()
            }
            #expect(harness.service.wasSignalled)
            killsDone += 1
        }

        try await harness.restart()
        verifiedReads += try await verify(harness.http, state, cycle: kills)
        let historyChecked = try await verifyHistory(harness.http, state)
        #expect(try await harness.service.stop() == 0)
        #expect(try sqliteIntegrityCheck(harness.databasePath) == "ok")

        let acknowledged = state.acknowledgedTotal.load(ordering: .relaxed)
        // The kills landed while writes were in flight (twelve writers send without pause, so nearly every kill
        // cuts several off): a kill between requests would prove nothing about durability.
        #expect(state.inDoubt.load(ordering: .relaxed) >= kills / 2, "too few writes cut off by the kills")
        #expect(acknowledged > kills * Self.writers, "too few writes acknowledged to prove anything")
        reportFigures(
            "crash_durability",
            [
                "seed": Int(truncatingIfNeeded: seed), "kills_survived": killsDone, "writes_acknowledged": acknowledged,
                "reads_verified": verifiedReads, "history_runs_checked": historyChecked,
                "writes_cut_by_kill": state.inDoubt.load(ordering: .relaxed),
                "cut_writes_found_committed": state.inDoubtLanded.load(ordering: .relaxed),
            ]
        )
    }

    /// One writer: owns the sources `writer`, `writer + writers`, ... and writes them in turn, each with a
    /// timestamp newer than the last, until the process is gone.
    static func write(writer: Int, http: TestHTTP, state: Ledger) async throws {
        let owned = Array(stride(from: writer, to: sources, by: writers))
        var turn = 0
        while !Task.isCancelled {
            let source = owned[turn % owned.count]
            turn += 1
            let timestamp = state.withLock { states in
                let value = Self.timestamp(source: source, index: states[source].next)
                states[source].next += 1
                states[source].pending = value
                return value
            }
            let reply: TestHTTP.Reply
            do {
                reply = try await http.send(
                    .PUT, "/api/v1/watermarks/\(sourceID(source))",
                    json: #"{"timestamp":"\#(timestamp)","status":"success","records_collected":1}"#,
                    timeout: .seconds(3)
                )
            } catch {
                return  // the process died: this write stays pending (maybe stored, maybe not)
            }
            guard reply.status == 200 || reply.status == 201 else {
                Issue.record("write refused: \(reply.status) \(reply.text)")
                return
            }
            let version = try reply.json()["version"] as? Int ?? -1
            state.withLock { states in
                states[source].acknowledged = (version, timestamp)
                states[source].pending = nil
            }
            state.acknowledgedTotal.add(1, ordering: .relaxed)
        }
    }

    /// Reads every source back: the stored state is the acknowledged write, or the one pending write that
    /// may have been committed just before the kill; versions never go backwards.
    func verify(_ http: TestHTTP, _ state: Ledger, cycle: Int) async throws -> Int {
        var reads = 0
        for source in 0..<Self.sources {
            let expected = state.withLock { $0[source] }
            let reply = try await http.send(.GET, "/api/v1/watermarks/\(Self.sourceID(source))")
            reads += 1
            if let pending = expected.pending {
                state.inDoubt.add(1, ordering: .relaxed)
                if reply.status == 200, (try? reply.json()["last_successful_timestamp"] as? String) == pending {
                    state.inDoubtLanded.add(1, ordering: .relaxed)
                }
            }
            guard let acknowledged = expected.acknowledged else {
                // Never acknowledged: absent, or present with the pending write only.
                if reply.status == 200 {
                    let body = try reply.json()
                    #expect(
                        body["last_successful_timestamp"] as? String == expected.pending,
                        "cycle \(cycle) source \(source)")
                    try adopt(body, source: source, state: state)
                } else {
                    #expect(reply.status == 404, "cycle \(cycle) source \(source): \(reply.status) \(reply.text)")
                }
                continue
            }
            #expect(reply.status == 200, "cycle \(cycle): acknowledged source \(source) is gone: \(reply.text)")
            guard reply.status == 200 else { continue }
            let body = try reply.json()
            let version = body["version"] as? Int ?? -1
            let timestamp = body["last_successful_timestamp"] as? String
            #expect(reply.headers.first(name: "ETag") == "\"\(version)\"")
            #expect(version >= expected.highestSeen, "cycle \(cycle) source \(source): version went backwards")
            if version == acknowledged.version {
                #expect(timestamp == acknowledged.timestamp, "cycle \(cycle) source \(source): acknowledged value lost")
            } else {
                // Only the one unacknowledged write may have landed after the acknowledged one.
                #expect(
                    version == acknowledged.version + 1,
                    "cycle \(cycle) source \(source): v\(version) vs ack v\(acknowledged.version)")
                #expect(timestamp != nil && timestamp == expected.pending, "cycle \(cycle) source \(source)")
            }
            try adopt(body, source: source, state: state)
        }
        return reads
    }

    /// Takes what was read as the new acknowledged state (a pending write that landed is now known).
    private func adopt(_ body: [String: Any], source: Int, state: Ledger) throws {
        let version = body["version"] as? Int ?? 0
        let timestamp = body["last_successful_timestamp"] as? String ?? ""
        state.withLock { states in
            states[source].acknowledged = (version, timestamp)
            states[source].pending = nil
            states[source].highestSeen = max(states[source].highestSeen, version)
        }
    }

    /// The history of each source has one run per version, newest first, with no gap and no repeat.
    func verifyHistory(_ http: TestHTTP, _ state: Ledger) async throws -> Int {
        var runs = 0
        for source in 0..<Self.sources {
            guard let acknowledged = state.withLock({ $0[source].acknowledged }) else { continue }
            let reply = try await http.send(.GET, "/api/v1/watermarks/\(Self.sourceID(source))/history?limit=1000")
            #expect(reply.status == 200)
            let versions = (try reply.json()["runs"] as? [[String: Any]] ?? []).compactMap { $0["version"] as? Int }
            #expect(versions == Array((1...acknowledged.version).reversed()), "source \(source) history")
            runs += versions.count
        }
        return runs
    }
}
